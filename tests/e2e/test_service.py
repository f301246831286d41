"""The always-ready service end to end: real daemon, real workers, real sockets."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import pytest

pytestmark = pytest.mark.e2e


def test_install_then_ready(daemon_home):
    proc = daemon_home.cli("llm", "install", "--no-deps", "--json", timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr + daemon_home.log_tail()
    summary = json.loads(proc.stdout)
    assert summary["model"]["name"] == "msting-tiny"
    status = daemon_home.status()
    assert status["ready"] is True
    model = status["models"][0]
    assert model["state"] == "ready" and model["verified"] is True
    assert model["workers"][0]["pid"]
    assert daemon_home.cli("llm", "wait", "--timeout", "10").returncode == 0
    # Running install again is safe and still proves generation.
    again = daemon_home.cli("llm", "install", "--no-deps", "--json", timeout=180)
    assert again.returncode == 0, again.stdout + again.stderr


def test_curl_readiness_sequence_over_socket_and_tcp(daemon_home):
    daemon_home.start()
    sock = str(daemon_home.socket)

    def curl(*args: str, via_tcp: bool = False) -> tuple[int, dict]:
        base = [daemon_home.url] if via_tcp else ["--unix-socket", sock, "http://localhost"]
        cmd = ["curl", "-q", "-sS", "-w", "\n%{http_code}"]
        if via_tcp:
            path, rest = args[0], args[1:]
            cmd += [base[0] + path, *rest]
        else:
            path, rest = args[0], args[1:]
            cmd += ["--unix-socket", sock, "http://localhost" + path, *rest]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout
        body, code = out.rsplit("\n", 1)
        return int(code), json.loads(body)

    for via_tcp in (False, True):
        code, body = curl("/health", via_tcp=via_tcp)
        assert code == 200 and body["status"] == "ok"
        code, body = curl("/models/load", "-d", '{"model": "default"}', via_tcp=via_tcp)
        assert code == 200 and body["model"] == "msting-tiny" and body["state"] == "ready"
        code, body = curl("/generate", "-d", '{"prompt": "Hello", "max_tokens": 10}', via_tcp=via_tcp)
        assert code == 200 and body["text"] and 0 < body["usage"]["completion_tokens"] <= 10
        code, body = curl("/llm", "-d", '{"prompt": "Hello", "max_tokens": 5, "temperature": 0}', via_tcp=via_tcp)
        assert code == 200 and isinstance(body["completion"], str) and body["completion"]
        code, body = curl("/health/ready", via_tcp=via_tcp)
        assert code == 200 and body["status"] == "ready"


def test_socket_is_private(daemon_home):
    daemon_home.start()
    mode = stat.S_IMODE(os.stat(daemon_home.socket).st_mode)
    assert mode == 0o600


def test_streaming_generate_matches_non_streaming(daemon_home):
    daemon_home.start()
    body = {"prompt": "Once upon a time", "max_tokens": 40, "temperature": 0, "seed": 1}
    with daemon_home.client() as c:
        whole = c.post("/generate", json=body).json()
        pieces, events = [], []
        with c.stream("POST", "/generate", json={**body, "stream": True}) as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("text/event-stream")
            event = None
            for line in resp.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    data = json.loads(line[6:])
                    events.append(event)
                    if event == "token":
                        pieces.append(data["text"])
                    elif event == "done":
                        assert data["usage"]["completion_tokens"] == whole["usage"]["completion_tokens"]
    assert events[-1] == "done"
    assert "".join(pieces) == whole["text"]


def test_bad_input_gets_clear_errors(daemon_home):
    daemon_home.start()
    with daemon_home.client() as c:
        r = c.post("/generate", content=b"{not json")
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
        r = c.post("/generate", json=["a list"])
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
        r = c.post("/generate", json={"max_tokens": 5})
        assert r.status_code == 400 and "'prompt' is required" in r.json()["error"]["message"]
        r = c.post("/generate", json={"prompt": "x", "max_tokens": "ten"})
        assert r.status_code == 400 and "max_tokens" in r.json()["error"]["message"]
        r = c.post("/generate", json={"prompt": "x", "bogus": 1})
        assert r.status_code == 400 and "bogus" in r.json()["error"]["message"]
        r = c.post("/generate", json={"prompt": "x", "model": "no-such-model"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        assert "msting-tiny" in r.json()["error"]["message"]
        r = c.post("/models/load", json={"model": "no-such-model"})
        assert r.status_code == 404
        r = c.get("/nowhere")
        assert r.status_code == 404 and r.json()["error"]["code"] == "route_not_found"
        # the service is unharmed
        assert c.post("/generate", json={"prompt": "x", "max_tokens": 3}).status_code == 200


def test_worker_kill_during_a_burst_loses_no_request(daemon_home):
    daemon_home.start()
    worker_pid = daemon_home.worker_pids()[0]
    n = 24
    body = {"prompt": "Once upon a time", "max_tokens": 120, "temperature": 0}

    def one(i: int) -> httpx.Response:
        with daemon_home.client(timeout=120) as c:
            return c.post("/generate", json=body)

    # Freeze the worker first, so the burst piles up behind it whatever the machine's
    # load: as many requests in its hands as it has slots, the rest queued. Then kill -9 it.
    os.kill(worker_pid, signal.SIGSTOP)
    with ThreadPoolExecutor(max_workers=n) as pool:
        futures = [pool.submit(one, i) for i in range(n)]
        daemon_home.wait_for(lambda: (m := daemon_home.client().get("/v1/status").json()["models"][0])["queue_depth"] + m["in_flight"] >= n,
                             timeout=60, interval=0.01, what="the burst queued behind the frozen worker")
        os.kill(worker_pid, signal.SIGKILL)
        responses = [f.result() for f in futures]

    assert [r.status_code for r in responses] == [200] * n, [r.text for r in responses if r.status_code != 200]
    texts = {r.json()["text"] for r in responses}
    assert len(texts) == 1 and texts.pop()  # every answer complete, and all equal at temperature 0
    status = daemon_home.status()
    model = status["models"][0]
    assert model["restarts"] >= 1
    assert model["workers"][0]["pid"] != worker_pid
    assert "SIGKILL" in (model["workers"][0]["last_exit"] or "") or "SIGKILL" in (model["last_error"] or "")
    assert status["ready"] is True
    assert any(e["kind"] == "worker_crash" for e in status["events"])


def test_stream_cut_by_a_crash_ends_with_an_error_event(daemon_home):
    daemon_home.start()
    worker_pid = daemon_home.worker_pids()[0]
    events = []
    with daemon_home.client() as c:
        with c.stream("POST", "/generate", json={"prompt": "Once", "max_tokens": 100000, "stream": True, "temperature": 1.0}) as resp:
            event = None
            for line in resp.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    events.append((event, json.loads(line[6:])))
                    if len(events) == 3:
                        os.kill(worker_pid, signal.SIGKILL)
    kinds = [k for k, _ in events]
    assert kinds[-1] == "error", kinds[-5:]
    assert "done" not in kinds
    assert events[-1][1]["error"]["code"] == "worker_crashed"
    daemon_home.wait_for(lambda: daemon_home.client().get("/health/ready").status_code == 200, what="recovery")


def test_hung_worker_is_killed_and_restarted(daemon_home):
    daemon_home.start()
    worker_pid = daemon_home.worker_pids()[0]
    os.kill(worker_pid, signal.SIGSTOP)  # alive but making no progress and answering nothing
    try:
        with daemon_home.client(timeout=60) as c:
            r = c.post("/generate", json={"prompt": "Hello", "max_tokens": 5})
        assert r.status_code == 200 and r.json()["text"]
    finally:
        try:
            os.kill(worker_pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    model = daemon_home.status()["models"][0]
    assert model["restarts"] >= 1
    assert "hung" in (model["workers"][0]["last_error"] or "")
    assert not psutil.pid_exists(worker_pid) or psutil.Process(worker_pid).status() == psutil.STATUS_ZOMBIE


def test_corrupt_gguf_goes_fatal_fast_and_health_still_answers(daemon_home, corrupt_gguf):
    daemon_home.write_config({"llm": {"model": str(corrupt_gguf)}})
    proc = daemon_home.cli("llm", "start", "--timeout", "600")
    # exit 1 (failed), not 3 (timed out): start gives up as soon as the model is FATAL
    assert proc.returncode == 1, proc.stdout + proc.stderr
    with daemon_home.client() as c:
        assert c.get("/health").status_code == 200
        ready = c.get("/health/ready")
        assert ready.status_code == 503 and ready.json()["status"] == "failed"
        assert "corrupt.gguf" in ready.json()["reason"]
        r = c.post("/generate", json={"prompt": "x", "max_tokens": 2})
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_failed"
    model = daemon_home.status()["models"][0]
    assert model["state"] == "failed" and model["workers"][0]["state"] == "FATAL"
    assert model["restarts"] == 0  # a boot error never enters a restart loop
    assert "corrupt.gguf" in model["last_error"]
    human = daemon_home.cli("llm", "status")
    assert human.returncode == 1 and "FATAL" in human.stdout


def test_second_start_makes_no_second_daemon(daemon_home):
    daemon_home.start()
    pid = daemon_home.daemon_pid()
    daemon_home.start()
    assert daemon_home.daemon_pid() == pid
    direct = subprocess.run([sys.executable, "-m", "msting.daemon"], env=daemon_home.env, capture_output=True, text=True, timeout=30)
    assert direct.returncode == 75 and "already running" in direct.stderr
    daemons = [p for p in daemon_home.our_processes() if "msting.daemon" in " ".join(p.cmdline())]
    assert [p.pid for p in daemons] == [pid]


def test_stale_pidfile_and_socket_are_cleaned(daemon_home):
    run = daemon_home.socket.parent
    run.mkdir(parents=True, exist_ok=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    daemon_home.pidfile.write_text(f"{dead.pid}\n")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(daemon_home.socket))
    stale.close()  # the file stays, nobody listens: what a SIGKILLed daemon leaves
    daemon_home.start()
    assert daemon_home.daemon_pid() not in (None, dead.pid)
    with daemon_home.client() as c:
        assert c.get("/health").json()["pid"] == daemon_home.daemon_pid()


def test_stop_leaves_nothing_behind(daemon_home):
    daemon_home.start()
    pids = [daemon_home.daemon_pid(), *daemon_home.worker_pids()]
    proc = daemon_home.cli("llm", "stop", check=True)
    assert proc.returncode == 0
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not daemon_home.socket.exists()
    assert not daemon_home.pidfile.exists()
    assert daemon_home.our_processes() == []
    assert daemon_home.cli("llm", "stop").returncode == 0  # idempotent


def test_graceful_stop_finishes_in_flight_requests(daemon_home):
    daemon_home.start()
    results = {}

    def long_request():
        with daemon_home.client(timeout=120) as c:
            results["r"] = c.post("/generate", json={"prompt": "Once", "max_tokens": 1500, "temperature": 0})

    t = threading.Thread(target=long_request)
    t.start()
    daemon_home.wait_for(lambda: daemon_home.client().get("/v1/status").json()["models"][0]["in_flight"] == 1, what="request in flight")
    daemon_home.cli("llm", "stop", check=True)
    t.join(timeout=60)
    assert results["r"].status_code == 200
    assert results["r"].json()["usage"]["completion_tokens"] > 0


def test_port_in_use_is_a_clear_error(daemon_home):
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", daemon_home.port))
    blocker.listen()
    try:
        proc = daemon_home.cli("llm", "start", "--timeout", "30")
        assert proc.returncode == 1
        assert f"port {daemon_home.port}" in proc.stdout + proc.stderr
        assert not daemon_home.pidfile.exists()
    finally:
        blocker.close()


def test_config_error_exits_2_and_starts_nothing(daemon_home):
    daemon_home.write_config({"llm_service": {"prot": 1}})
    proc = daemon_home.cli("llm", "start", "--timeout", "30")
    assert proc.returncode == 2
    assert "llm_service.prot" in proc.stdout + proc.stderr
    assert daemon_home.our_processes() == []


def test_queue_full_gives_503_with_retry_after(daemon_home):
    # one slot: a long request in it, one waiting in the queue, and the queue is full
    daemon_home.write_config({"llm_service": {"queue_size": 1}, "llm": {"n_ctx": 32768, "parallel": 1}})
    daemon_home.start()
    body = {"prompt": "Once", "max_tokens": 3000, "temperature": 0}

    def one():
        with daemon_home.client(timeout=120) as c:
            return c.post("/generate", json=body)

    with ThreadPoolExecutor(max_workers=2) as pool:
        busy = pool.submit(one)
        daemon_home.wait_for(lambda: daemon_home.client().get("/v1/status").json()["models"][0]["in_flight"] == 1, what="busy worker")
        queued = pool.submit(one)
        daemon_home.wait_for(lambda: daemon_home.client().get("/v1/status").json()["models"][0]["queue_depth"] == 1, what="queued request")
        with daemon_home.client() as c:
            r = c.post("/generate", json=body)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "queue_full"
        assert busy.result().status_code == 200 and queued.result().status_code == 200


def test_second_signal_forces_exit(daemon_home):
    # a context of 32k tokens keeps the stream going for many seconds, past both signals
    daemon_home.write_config({"llm_service": {"drain_grace_sec": 120}, "llm": {"n_ctx": 32768}})
    daemon_home.start()
    pid = daemon_home.daemon_pid()
    results = {}

    def long_stream():
        try:
            with daemon_home.client(timeout=120) as c:
                with c.stream("POST", "/generate", json={"prompt": "Once", "max_tokens": 100000, "stream": True}) as resp:
                    results["lines"] = list(resp.iter_lines())
        except httpx.HTTPError as exc:
            results["error"] = exc

    t = threading.Thread(target=long_stream)
    t.start()
    daemon_home.wait_for(lambda: daemon_home.client().get("/v1/status").json()["models"][0]["in_flight"] == 1, what="request in flight")
    os.kill(pid, signal.SIGTERM)
    # the first signal drains: readiness turns 503 and new work is refused
    with daemon_home.client() as c:
        daemon_home.wait_for(lambda: c.get("/health/ready").status_code == 503, what="readiness 503 while draining")
        refused = c.post("/generate", json={"prompt": "x", "max_tokens": 2})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "shutting_down"
    os.kill(pid, signal.SIGTERM)
    daemon_home.wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
                         timeout=20, what="forced exit")
    t.join(timeout=30)
    assert "done" not in "".join(results.get("lines", []))  # cut off, never reported as complete
    assert daemon_home.our_processes() == []
    assert not daemon_home.socket.exists() and not daemon_home.pidfile.exists()
