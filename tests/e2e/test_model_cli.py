"""The model-management commands end to end: `msting llm pull | import | rm | search |
jobs | models` and `install --model SOURCE`, run as a user runs them, against a real
daemon that fetches from the registry stand-in (tests/registries: Hugging Face's API and
resolve routes, the Ollama registry's v2 protocol, plain files), which serves
../shared/models/stories260K.gguf. The progress bar and Ctrl-C run in a real
pseudo-terminal."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import signal
import struct
import subprocess
import termios
import threading
from pathlib import Path
from typing import Iterator

import pytest
from daemon_home import msting_command
from registries.server import Registries

from msting.models.capabilities import capabilities_of

REPO = "tiny-org/stories-GGUF"
FILE = "stories260K-F32.gguf"
SOURCE = f"hf://{REPO}/{FILE}"


@pytest.fixture
def hub(stories_model_path: Path) -> Iterator[Registries]:
    """The stand-in serving stories260K as a hub repo, an Ollama tag and a plain file."""
    hub = Registries()
    hub.add_hf(REPO, {FILE: stories_model_path}, downloads=1234)
    hub.add_ollama("stories", "260k", stories_model_path)
    hub.add_file("stories.gguf", stories_model_path)
    hub.start()
    try:
        yield hub
    finally:
        hub.close()


@pytest.fixture
def home(daemon_home, hub: Registries):
    daemon_home.env["HF_ENDPOINT"] = hub.url
    daemon_home.write_config({"models": {"ollama_registry": hub.url, "stall_timeout_sec": 3}})
    return daemon_home


def said(proc: subprocess.CompletedProcess) -> str:
    """What a command printed (stdout, then stderr), rich's line breaks made single spaces."""
    return " ".join((proc.stdout + proc.stderr).split())


def _jobs(home, **query) -> list[dict]:
    with home.client() as c:
        return c.get("/jobs", params=query).json()["data"]


class PtyRun:
    """`msting ARGS` on a pseudo-terminal (rich draws its live progress there), its
    output collected as it comes."""

    def __init__(self, home, *args: str, columns: int = 120) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
        env = {**home.env, "TERM": "xterm-256color", "COLUMNS": str(columns)}
        self.proc = subprocess.Popen([*msting_command(), *args], stdin=slave, stdout=slave, stderr=slave, env=env,
                                     close_fds=True)
        os.close(slave)
        self.master = master
        self.chunks: list[bytes] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: the other side closed
                return
            if not data:
                return
            self.chunks.append(data)

    @property
    def text(self) -> str:
        return b"".join(self.chunks).decode("utf-8", errors="replace")

    @property
    def words(self) -> str:
        """The text without terminal escapes, its whitespace (rich's line breaks) made single spaces."""
        return " ".join(re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", self.text).split())

    def wait(self, timeout: float = 60) -> int:
        code = self.proc.wait(timeout=timeout)
        self.reader.join(timeout=5)
        os.close(self.master)
        return code


def test_pull_installs_with_details_and_lists_everywhere(home, hub: Registries, stories_model_path: Path):
    home.start()
    body, _ = home.cli_json("llm", "pull", SOURCE, "--name", "stories", "--json")
    assert body["ok"] is True and body["state"] == "succeeded" and body["type"] == "install"
    result = body["result"]
    assert result["model"] == "stories" and Path(result["path"]).is_file()
    assert result["sha256"] == hub.hf[REPO][FILE].sha256
    assert body["details"] == capabilities_of(result["path"])
    assert body["details"]["n_params"] == capabilities_of(stories_model_path)["n_params"]

    models, _ = home.cli_json("llm", "models", "--json")
    (row,) = models["installed"]
    assert row["name"] == "stories" and row["source"] == SOURCE and row["in_use"] is False
    assert row["details"]["n_params"] == 292_800 and row["details"]["quantization"] == "F32"
    text = home.cli("llm", "models", check=True).stdout
    assert "installed models" in text
    line = next(l for l in text.splitlines() if l.startswith("stories"))
    assert "F32" in line and "293K" in line and SOURCE in "".join(text.split())  # the source folds at 80 columns

    jobs, _ = home.cli_json("llm", "jobs", "--json")
    assert jobs["data"][0]["id"] == body["id"] and jobs["data"][0]["state"] == "succeeded"
    assert [j["id"] for j in home.cli_json("llm", "jobs", "--type", "install", "--state", "succeeded", "--json")[0]["data"]] \
        == [body["id"]]
    table = home.cli("llm", "jobs", check=True).stdout
    assert body["id"] in table and "install" in table and "succeeded" in table

    # the same file from the Ollama registry and a plain URL, under other names
    for source, name in (("ollama://stories:260k", "ostories"), (f"{hub.url}/files/stories.gguf", "ustories")):
        proc = home.cli("llm", "pull", source, "--name", name)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"installed '{name}'" in said(proc)
        assert "llm, llama, F32, 293K params, context 2048" in said(proc)  # what the file is


def test_pull_draws_progress_and_ctrl_c_cancels_then_a_pull_resumes(home, hub: Registries):
    blob = hub.hf[REPO][FILE]
    hub.rate_bps = 150_000  # about 8 s for the whole file
    home.start()
    run = PtyRun(home, "llm", "pull", SOURCE)

    def downloading():
        jobs = _jobs(home, state="running")
        return jobs and jobs[0]["progress"]["bytes_done"] >= blob.size * 0.2 and "ETA" in run.text

    home.wait_for(downloading, timeout=30, interval=0.1, what="the pull to be a fifth done with its bar drawn")
    run.proc.send_signal(signal.SIGINT)
    code = run.wait()
    text = run.words
    assert code == 1, run.text
    # the bar: the step, bytes of the total, the daemon's rate and time left
    assert f"pull {SOURCE}: downloading" in text
    assert re.search(r" \d+\.\d KiB / 1\.1 MiB \d+\.\d KiB/s ETA 0:\d\d", text), text
    assert "cancelled (job" in text and f"`msting llm pull {SOURCE}` again resumes it" in text
    (job,) = _jobs(home, type="install")
    assert job["state"] == "cancelled"
    fetched = hub.served_of(blob)
    assert 0 < fetched < blob.size

    hub.rate_bps = None
    body, _ = home.cli_json("llm", "pull", SOURCE, "--json")
    assert body["state"] == "succeeded" and body["id"] != job["id"]
    assert "resumed at byte" in next(s["detail"] for s in body["steps"] if s["name"] == "downloading")
    assert hub.served_of(blob) - blob.size < blob.size * 0.10  # not fetched again from the start


def test_a_failed_pull_says_why_and_keeps_nothing(home, hub: Registries):
    home.start()
    proc = home.cli("llm", "pull", SOURCE, "--sha256", "0" * 64)
    assert proc.returncode == 1
    assert f"error: pull {SOURCE} failed:" in said(proc) and "sha256" in said(proc)
    out = home.cli("llm", "pull", SOURCE, "--sha256", "0" * 64, "--json")
    body = json.loads(out.stdout)
    assert out.returncode == 1 and body["ok"] is False and body["job"]["state"] == "failed"
    assert body["job"]["error"]["code"] and body["error"]["exit_code"] == 1
    assert json.loads(home.cli("llm", "models", "--json").stdout)["installed"] == []

    proc = home.cli("llm", "pull", SOURCE, "--sha256", "xyz")  # the daemon refuses the parameter: a usage error
    assert proc.returncode == 2 and "params.sha256" in said(proc)

    proc = home.cli("llm", "pull", f"hf://{REPO}/missing.gguf")
    assert proc.returncode != 0 and "missing.gguf" in said(proc)

    hub.close()  # the hub goes away
    proc = home.cli("llm", "pull", "hf://tiny-org/other-GGUF")
    assert proc.returncode == 1 and "error:" in said(proc)
    proc = home.cli("llm", "search", "stories")
    assert proc.returncode == 1 and "hub" in said(proc)


def test_import_rm_and_the_refusal_while_in_use(home, builtin_model_path: Path, tmp_path: Path):
    home.start()
    copy = tmp_path / "tiny-copy.gguf"
    copy.write_bytes(builtin_model_path.read_bytes())
    proc = home.cli("llm", "import", str(copy), "--name", "mine")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "imported 'mine'" in said(proc) and "chat" in said(proc)
    body, _ = home.cli_json("llm", "import", str(copy), "--name", "linked", "--link", "--json")
    assert body["result"]["model"] == "linked" and body["details"]["instructed"] is True
    installed = {r["name"]: r for r in home.cli_json("llm", "models", "--json")[0]["installed"]}
    assert set(installed) == {"mine", "linked"} and installed["linked"]["linked"] is True

    # a profile serving `mine`: rm refuses while it is active
    profile = home.home / "config" / "profiles" / "mine.yaml"
    profile.parent.mkdir(parents=True, exist_ok=True)
    profile.write_text("default_model: mine\nmodels:\n  mine:\n    source: installed:mine\n    n_ctx: 256\n")
    home.cli("llm", "switch-profile", "mine", "--timeout", "120", check=True)
    proc = home.cli("llm", "rm", "mine")
    assert proc.returncode == 1
    assert "switch to a profile that does not use it first" in said(proc)
    assert (home.home / "data" / "models" / "mine.gguf").exists()
    assert home.cli("llm", "status").returncode == 0  # still serving

    proc = home.cli("llm", "rm", "linked")
    assert proc.returncode == 0 and "removed 'linked'" in said(proc)
    assert copy.exists()  # a linked model's own file stays where it is
    proc = home.cli("llm", "rm", "nope")
    assert proc.returncode == 1 and "nope" in said(proc) and "`msting llm models` lists the models" in said(proc)


def test_search_and_jobs_cancel(home, hub: Registries):
    hub.add_hf("tiny-org/stories-instruct-GGUF", {"a-Q4_K_M.gguf": hub.hf[REPO][FILE].path}, downloads=7)
    home.start()
    body, _ = home.cli_json("llm", "search", "stories", "--json")
    ids = [m["id"] for m in body["data"]]
    assert body["query"] == "stories" and ids[0] == REPO and "tiny-org/stories-instruct-GGUF" in ids
    text = home.cli("llm", "search", "stories", check=True).stdout
    assert f"hf://{REPO}" in text and "1.2K" in text and "`msting llm pull SOURCE`" in text

    hub.rate_bps = 50_000
    with home.client() as c:
        job = c.post("/jobs", json={"type": "install", "params": {"source": SOURCE}}).json()
    proc = home.cli("llm", "jobs", "cancel", job["id"])
    assert proc.returncode == 0 and f"cancelled job {job['id']} (install {SOURCE})" in said(proc)
    proc = home.cli("llm", "jobs", "cancel", job["id"])  # already over: said, not an error
    assert proc.returncode == 0 and "had already ended (cancelled" in said(proc)
    proc = home.cli("llm", "jobs", "cancel", "job-nope")
    assert proc.returncode == 1 and "job-nope" in said(proc)
    table = home.cli("llm", "jobs", check=True).stdout
    assert "cancelled" in table


def test_install_with_a_source_pulls_then_serves_it(home, hub: Registries):
    proc = home.cli("llm", "install", "--model", SOURCE, "--no-deps", "--json", timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    body = json.loads(proc.stdout)
    model = next(s for s in body["steps"] if s["name"] == "model")
    assert model["ok"] and model["detail"].startswith(f"pulled {SOURCE}:")
    path = Path(body["model"]["path"])
    assert path.parent == home.home / "data" / "models" and path.is_file()
    assert body["model"]["name"] == path.stem
    assert {c["name"]: c["ok"] for c in body["checks"]}["generate"] is True  # the pulled model generated
    status = home.status()
    assert [m["name"] for m in status["models"]] == [path.stem]


def test_a_pull_follows_its_job_through_a_daemon_restart(home, hub: Registries):
    blob = hub.hf[REPO][FILE]
    hub.rate_bps = 150_000
    home.start()
    pull = subprocess.Popen([*msting_command(), "llm", "pull", SOURCE, "--json"], env=home.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    home.wait_for(lambda: (jobs := _jobs(home, state="running")) and jobs[0]["progress"]["bytes_done"] >= blob.size * 0.2,
                  timeout=30, interval=0.1, what="the pull to be a fifth done")
    pid = home.daemon_pid()
    os.kill(pid, signal.SIGKILL)
    home.wait_for(lambda: not home.our_processes() or all(p.pid != pid for p in home.our_processes()), timeout=10,
                  what="the daemon to be gone")
    hub.rate_bps = None
    home.start()  # the job resumes in the new daemon; the CLI reads it again and follows it to its end
    out, err = pull.communicate(timeout=120)
    assert pull.returncode == 0, out + err
    body = json.loads(out)
    assert body["state"] == "succeeded" and Path(body["result"]["path"]).is_file()
    assert hub.served_of(blob) - blob.size < blob.size * 0.10
