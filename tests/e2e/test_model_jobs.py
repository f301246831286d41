"""Model jobs end to end: a real daemon installs from the registry stand-in
(tests/registries: Hugging Face's hub API and resolve routes, the Ollama registry's v2
manifests and blobs, plain files), which serves ../shared/models/stories260K.gguf and
counts the bytes it sends. Killed daemons, cancels, wrong digests, a full disk (a small
tmpfs), shared transfers, an installed model generating, updates and deletes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from registries import plugin
from registries.server import Registries

registries = plugin.registries  # the stand-in's fixture

REPO = "tiny-org/stories-GGUF"
FILE = "stories260K-F32.gguf"
SOURCE = f"hf://{REPO}/{FILE}"
TERMINAL = ("succeeded", "failed", "cancelled")


PADDED = "stories260K-padded.gguf"  # stories260K and zeros up to 8 MiB: still a GGUF file msting accepts


@pytest.fixture
def hub(registries: Registries, stories_model_path: Path, tmp_path: Path) -> Registries:
    padded = tmp_path / PADDED
    padded.write_bytes(stories_model_path.read_bytes())
    with open(padded, "r+b") as f:
        f.truncate(8 << 20)
    registries.add_hf(REPO, {FILE: stories_model_path, "README.md": stories_model_path}, downloads=42)
    registries.add_hf("tiny-org/padded", {PADDED: padded})
    registries.add_ollama("stories", "260k", stories_model_path)
    registries.add_file("stories.gguf", stories_model_path)
    return registries


@pytest.fixture
def home(daemon_home, hub: Registries):
    daemon_home.env["HF_ENDPOINT"] = hub.url
    daemon_home.write_config({"models": {"ollama_registry": hub.url, "stall_timeout_sec": 3}})
    return daemon_home


def _install(c: httpx.Client, source: str = SOURCE, **params) -> dict:
    r = c.post("/jobs", json={"type": "install", "params": {"source": source, **params}})
    assert r.status_code == 202, r.text
    return r.json()


def _wait(home, job_id: str, until=lambda j: j["state"] in TERMINAL, timeout: float = 60) -> dict:
    def check():
        with home.client() as c:
            job = c.get(f"/jobs/{job_id}").json()
        return job if until(job) else None

    return home.wait_for(check, timeout=timeout, interval=0.05, what=f"job {job_id}")


def _blob(hub: Registries):
    return hub.hf[REPO][FILE]


def _models_dir(home) -> Path:
    return home.home / "data" / "models"


def _gguf_files(home) -> list[str]:
    return sorted(p.name for p in _models_dir(home).glob("*.gguf") if p.name != "msting-tiny.gguf")


def test_install_from_the_hub_registers_the_model_and_reports_progress_as_events(home, hub: Registries) -> None:
    hub.rate_bps = 600_000  # about 2 s: several progress events
    home.start()
    with home.client() as c:
        job = _install(c)
        assert job["type"] == "install" and job["state"] in ("queued", "running") and job["params"] == {"source": SOURCE}
        events = []
        with c.stream("GET", f"/jobs/{job['id']}/events") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    events.append((time.monotonic(), json.loads(line[6:])))
        done = events[-1][1]
        assert done["state"] == "succeeded", done
        blob = _blob(hub)
        assert done["result"] == {"model": "stories260K-F32", "path": str(_models_dir(home) / "stories260K-F32.gguf"),
                                  "sha256": blob.sha256, "size_bytes": blob.size}
        progress = [e["progress"]["bytes_done"] for _, e in events]
        assert progress == sorted(progress) and progress[-1] == blob.size  # only forward
        moving = [(t, e) for t, e in events if e["step"] == "downloading" and 0 < e["progress"]["bytes_done"] < blob.size]
        assert len(moving) >= 4 and any(e["progress"]["rate_bps"] for _, e in moving)
        assert [s["name"] for s in done["steps"]] == ["resolving", "downloading", "verifying", "installing"]
        assert all(s["state"] == "done" for s in done["steps"])
        installed = c.get("/llm/installed").json()["data"]
        assert [(m["name"], m["source"], m["sha256"], m["revision"], m["present"]) for m in installed] == [
            ("stories260K-F32", SOURCE, blob.sha256, blob.sha256, True)]
        assert installed[0]["details"]["arch"] == "llama" and installed[0]["details"]["size_bytes"] == blob.size
        assert c.get("/v1/jobs", params={"type": "install"}).json()["data"][0]["id"] == job["id"]
        assert c.get("/jobs", params={"state": "running"}).json()["data"] == []
    assert _gguf_files(home) == ["stories260K-F32.gguf"]
    assert list((_models_dir(home) / ".downloads").iterdir()) == []


def test_ollama_and_url_sources_install_verified_by_digest_and_sha256(home, hub: Registries, stories_model_path: Path) -> None:
    home.start()
    blob = hub.ollama["library/stories:260k"]
    with home.client() as c:
        ollama = _wait(home, _install(c, "ollama://stories:260k")["id"])
        assert ollama["state"] == "succeeded", ollama
        assert ollama["result"]["model"] == "stories-260k" and ollama["result"]["sha256"] == blob.sha256
        url = _wait(home, _install(c, f"{hub.url}/files/stories.gguf", sha256=blob.sha256, name="plain")["id"])
        assert url["state"] == "succeeded" and url["result"]["model"] == "plain"
        wrong = _wait(home, _install(c, f"{hub.url}/files/stories.gguf", sha256="0" * 64, name="bad")["id"])
        assert wrong["state"] == "failed" and wrong["error"]["code"] == "checksum_mismatch"
    assert (_models_dir(home) / "plain.gguf").read_bytes() == stories_model_path.read_bytes()
    assert _gguf_files(home) == ["plain.gguf", "stories-260k.gguf"]


def test_bad_requests_are_400_naming_the_field_and_unknown_models_404(home) -> None:
    home.start()
    with home.client() as c:
        for body, field in (({"type": "nope"}, "type"), ({"type": "install", "params": {}}, "params.source"),
                            ({"type": "install", "params": {"source": "ftp://x/y.gguf"}}, "params.source"),
                            ({"type": "install", "params": {"source": SOURCE, "sha256": "abc"}}, "params.sha256"),
                            ({"type": "install", "params": {"source": SOURCE, "extra": 1}}, "params.extra"),
                            ({"type": "import", "params": {"path": "relative.gguf"}}, "params.path")):
            r = c.post("/jobs", json=body)
            assert r.status_code == 400 and r.json()["error"]["param"] == field, (body, r.text)
        for kind in ("delete", "update"):
            r = c.post("/jobs", json={"type": kind, "params": {"name": "ghost"}})
            assert r.status_code == 404 and "no installed model 'ghost'" in r.json()["error"]["message"]
        assert c.post("/jobs", json={"type": "load", "params": {"name": "ghost"}}).status_code == 404
        assert c.get("/jobs/job-000000000000").status_code == 404
        assert c.delete("/jobs/job-000000000000").status_code == 404
        assert c.get("/jobs/job-000000000000/events").status_code == 404


def test_kill_9_mid_download_then_start_again_resumes_the_same_job(home, hub: Registries) -> None:
    """On the 8 MiB file, so that what the kernel's socket buffers held when the daemon
    died (sent, never read) stays small beside 10 % of the file on a loaded machine. The
    resume asks for exactly what the part does not hold: no byte that reached the file is
    fetched again, whatever the timing."""
    hub.rate_bps = 2_000_000  # ~4 s for the file
    blob = hub.hf["tiny-org/padded"][PADDED]
    home.start()
    with home.client() as c:
        job = _install(c, f"hf://tiny-org/padded/{PADDED}")
    _wait(home, job["id"], until=lambda j: j["progress"]["bytes_done"] >= blob.size * 0.4)
    os.kill(home.daemon_pid(), signal.SIGKILL)
    served_before = hub.served_of(blob)
    assert served_before < blob.size
    [part] = (_models_dir(home) / ".downloads").glob("*.part")
    kept = part.stat().st_size  # every byte a write() handed to the kernel before the kill
    assert 0 < json.loads(part.with_suffix(".json").read_text())["verified"] <= kept  # the state never claims more
    hub.rate_bps = None
    home.start()
    done = _wait(home, job["id"])
    assert done["state"] == "succeeded" and done["id"] == job["id"], done
    again = [r for r in hub.requests if r["path"].startswith("/cdn/")][1:]
    assert again and again[-1]["range"] == f"bytes={kept}-"  # from the part's last byte, not from zero or a checkpoint
    refetched = hub.served_of(blob) - blob.size
    assert refetched < blob.size * 0.10, f"{refetched} bytes fetched twice; sent {served_before} before the kill; {hub.requests}"
    assert done["result"]["sha256"] == blob.sha256


def test_cancel_then_install_again_resumes_from_the_part(home, hub: Registries) -> None:
    hub.rate_bps = 2_000_000
    blob = hub.hf["tiny-org/padded"][PADDED]
    source = f"hf://tiny-org/padded/{PADDED}"
    home.start()
    with home.client() as c:
        job = _install(c, source)
        _wait(home, job["id"], until=lambda j: j["progress"]["bytes_done"] >= blob.size * 0.3)
        cancelled = c.delete(f"/jobs/{job['id']}").json()
        assert cancelled["state"] == "cancelled" and cancelled["error"]["code"] == "cancelled"
        assert c.delete(f"/jobs/{job['id']}").json()["state"] == "cancelled"  # unchanged
        parts = list((_models_dir(home) / ".downloads").glob("*.part"))
        assert len(parts) == 1 and parts[0].stat().st_size > 0
        assert _gguf_files(home) == []
        hub.rate_bps = None
        second = _install(c, source)
        assert second["id"] != job["id"]
    done = _wait(home, second["id"])
    assert done["state"] == "succeeded", done
    assert "resumed at byte" in next(s["detail"] for s in done["steps"] if s["name"] == "downloading")
    assert hub.served_of(blob) - blob.size < blob.size * 0.10


def test_a_wrong_checksum_keeps_nothing(home, hub: Registries) -> None:
    hub.wrong_digest = True  # the hub publishes a sha256 that is not the file's
    home.start()
    with home.client() as c:
        done = _wait(home, _install(c)["id"])
        assert done["state"] == "failed" and done["error"]["code"] == "checksum_mismatch"
        assert "nothing was kept" in done["error"]["message"]
        assert c.get("/llm/installed").json()["data"] == []
    assert _gguf_files(home) == [] and list((_models_dir(home) / ".downloads").iterdir()) == []


def _tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()}): the full-disk test needs one (or run it as root)")


def _fill(path: Path, leave: int = 0) -> None:
    """Write `path` until the disk holding it has `leave` bytes free (0: until ENOSPC)."""
    with open(path, "ab") as f:
        while True:
            free = shutil.disk_usage(path.parent).free - leave
            if leave and free <= 0:
                return
            try:
                f.write(b"\0" * max(4096, min(1 << 20, free if leave else 1 << 20)))
                f.flush()
            except OSError:
                return


def test_a_full_disk_is_a_clear_failure_before_and_during_the_download(home, hub: Registries) -> None:
    """The models folder on an 8 MiB tmpfs: first too full for the file from the start (a
    filler leaves 512 KiB), then filled up while the download runs (ENOSPC)."""
    models = _models_dir(home)
    _tmpfs(models, "8m")
    try:
        blob = _blob(hub)
        home.start()  # the built-in model is written there first
        filler = models / "filler"
        _fill(filler, leave=512 << 10)
        with home.client() as c:
            early = _wait(home, _install(c)["id"])
            assert early["state"] == "failed" and early["error"]["code"] == "no_space", early
            assert "not enough free space" in early["error"]["message"]
            assert hub.served_of(blob) == 0
            filler.unlink()
            hub.rate_bps = 300_000
            job = _install(c)
            _wait(home, job["id"], until=lambda j: j["progress"]["bytes_done"] > 0 or j["state"] in TERMINAL)
            _fill(filler)  # takes what is left
            done = _wait(home, job["id"])
            assert done["state"] == "failed" and done["error"]["code"] == "no_space", done
            assert "filled up after" in done["error"]["message"] and "partial file was removed" in done["error"]["message"]
        assert [p.name for p in (models / ".downloads").glob("*.part")] == []
    finally:
        home.cli("llm", "stop")
        subprocess.run(["umount", "-l", str(models)], capture_output=True)


def test_two_concurrent_installs_of_the_same_file_share_one_transfer(home, hub: Registries) -> None:
    hub.rate_bps = 400_000
    blob = _blob(hub)
    home.start()
    with home.client() as c:
        first = _install(c)
        same = _install(c)
        assert same["id"] == first["id"]  # the same source: the same job
        other = _install(c, f"hf://{REPO}:F32", name="twin")  # another source naming the same file
        assert other["id"] != first["id"]
        a, b = _wait(home, first["id"]), _wait(home, other["id"])
    assert a["state"] == b["state"] == "succeeded", (a, b)
    assert hub.served_of(blob) == blob.size  # one transfer
    assert _gguf_files(home) == ["stories260K-F32.gguf", "twin.gguf"]


def _profile(home, name: str, model: str) -> None:
    path = home.home / "config" / "profiles" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"description: an installed model\ndefault_model: {model}\nmodels:\n"
                    f"  {model}:\n    source: installed:{model}\n    n_ctx: 256\n")


def _switch(home, profile: str) -> dict:
    with home.client() as c:
        r = c.post("/v1/profiles/switch", json={"profile": profile})
        assert r.status_code == 202, r.text
        return _wait(home, r.json()["id"], timeout=120)


def test_an_installed_model_serves_a_generate_and_cannot_be_deleted_while_in_use(home, hub: Registries) -> None:
    home.start()
    with home.client() as c:
        assert _wait(home, _install(c, name="story")["id"])["state"] == "succeeded"
    _profile(home, "story", "story")
    assert _switch(home, "story")["state"] == "succeeded"
    with home.client() as c:
        r = c.post("/generate", json={"prompt": "Once upon a time", "max_tokens": 8, "temperature": 0})
        assert r.status_code == 200 and r.json()["text"], r.text
        refused = c.post("/jobs", json={"type": "delete", "params": {"name": "story"}})
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "model_in_use", refused.text
        assert "story" in refused.json()["error"]["message"]
        assert c.get("/llm/installed").json()["data"][0]["in_use"] is True
    assert _switch(home, "default")["state"] == "succeeded"
    with home.client() as c:
        r = c.post("/jobs", json={"type": "delete", "params": {"name": "story"}})
        assert r.status_code == 202
        done = _wait(home, r.json()["id"])
        assert done["state"] == "succeeded" and done["result"]["freed_bytes"] == _blob(hub).size
        assert c.get("/llm/installed").json()["data"] == []
    assert _gguf_files(home) == []


def test_update_installs_a_new_revision_and_then_finds_nothing_new(home, hub: Registries, builtin_model_path: Path) -> None:
    home.start()
    with home.client() as c:
        first = _wait(home, _install(c, name="story")["id"])
        assert first["state"] == "succeeded"
        same = _wait(home, c.post("/jobs", json={"type": "update", "params": {"name": "story"}}).json()["id"])
        assert same["state"] == "succeeded" and same["result"]["updated"] is False
        hub.add_hf(REPO, {FILE: builtin_model_path})  # the repo's file changed: a new LFS sha256
        new = hub.hf[REPO][FILE]
        updated = _wait(home, c.post("/jobs", json={"type": "update", "params": {"name": "story"}}).json()["id"])
        assert updated["state"] == "succeeded", updated
        assert updated["result"]["updated"] is True and updated["result"]["sha256"] == new.sha256
        assert updated["result"]["previous_revision"] == first["result"]["sha256"]
        row = c.get("/llm/installed").json()["data"][0]
        assert (row["sha256"], row["revision"], row["size_bytes"]) == (new.sha256, new.sha256, new.size)
    assert (_models_dir(home) / "story.gguf").read_bytes() == builtin_model_path.read_bytes()


def test_import_copies_or_links_and_the_hub_search_is_answered_and_cached(home, hub: Registries, stories_model_path: Path) -> None:
    home.start()
    with home.client() as c:
        copied = _wait(home, c.post("/jobs", json={"type": "import", "params": {"path": str(stories_model_path)}}).json()["id"])
        assert copied["state"] == "succeeded" and copied["result"]["model"] == "stories260K"
        linked = _wait(home, c.post("/jobs", json={"type": "import", "params": {"path": str(stories_model_path), "name": "ln",
                                                                                 "link": True}}).json()["id"])
        assert linked["state"] == "succeeded"
        found = c.get("/llm/registry/search", params={"q": "stories", "limit": 5}).json()["data"]
        assert found == [{"id": REPO, "source": f"hf://{REPO}", "downloads": 42, "likes": 1, "files": [FILE, "README.md"]}]
        assert c.get("/llm/registry/search").status_code == 400
    assert (_models_dir(home) / "ln.gguf").is_symlink()
    assert os.readlink(_models_dir(home) / "ln.gguf") == str(stories_model_path)
    hub.close()  # the hub goes away
    with home.client() as c:
        r = c.get("/llm/registry/search", params={"q": "stories"})
        assert r.status_code == 503 and "cannot search the Hugging Face hub" in r.json()["error"]["message"]
