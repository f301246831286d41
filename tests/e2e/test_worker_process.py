"""The worker process for real: `python -m msting.worker` over a socketpair."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from msting.worker.protocol import EXIT_BOOT_ERROR, decode, encode

pytestmark = pytest.mark.e2e

READ_TIMEOUT = 60.0


class Worker:
    """One worker process and the daemon end of its socketpair."""

    def __init__(self, model_path: Path, tmp_path: Path, **spec_overrides):
        spec = {
            "name": "test",
            "path": str(model_path),
            "n_ctx": 2048,
            "n_threads": None,
            "n_gpu_layers": 0,
            "seed": 1234,
        }
        spec.update(spec_overrides)
        self.sock, child = socket.socketpair()
        self.stderr_path = tmp_path / f"worker-{time.monotonic_ns()}.stderr"
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "msting.worker", "--fd", str(child.fileno()), "--spec", json.dumps(spec)],
            pass_fds=[child.fileno()],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=os.environ.copy(),
        )
        child.close()
        self._buf = b""

    def send(self, type: str, id: str | None = None, **fields) -> None:
        self.sock.sendall(encode(type, id, **fields))

    def read(self, timeout: float = READ_TIMEOUT) -> dict | None:
        """Next frame, or None at EOF."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no frame within {timeout}s; stderr:\n{self.stderr()}")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return decode(line)

    def read_until(self, *types: str, timeout: float = READ_TIMEOUT) -> tuple[dict, list[dict]]:
        """Frames up to and including the first of *types*: (that frame, the ones before)."""
        before = []
        while True:
            frame = self.read(timeout)
            assert frame is not None, f"EOF while waiting for {types}; got {before}\n{self.stderr()}"
            if frame["type"] in types:
                return frame, before
            before.append(frame)

    def boot(self) -> tuple[dict, dict]:
        hello = self.read()
        ready = self.read()
        assert hello and hello["type"] == "hello", hello
        assert ready and ready["type"] == "ready", (ready, self.stderr())
        return hello, ready

    def generate(self, id: str, **fields) -> tuple[dict, list[dict]]:
        self.send("generate", id, **fields)
        return self.read_until("done", "error")

    def stderr(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    def wait(self, timeout: float = 30) -> int:
        return self.proc.wait(timeout)

    def close(self) -> None:
        try:
            self.sock.close()
        finally:
            if self.proc.poll() is None:
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self._stderr.close()


@pytest.fixture
def spawn(tmp_path):
    workers: list[Worker] = []

    def _spawn(model_path: Path, **spec) -> Worker:
        w = Worker(model_path, tmp_path, **spec)
        workers.append(w)
        return w

    yield _spawn
    for w in workers:
        w.close()


@pytest.fixture
def tiny(spawn, builtin_model_path) -> Worker:
    w = spawn(builtin_model_path)
    w.boot()
    return w


def test_hello_then_ready(spawn, builtin_model_path):
    w = spawn(builtin_model_path)
    hello, ready = w.boot()
    assert hello["pid"] == w.proc.pid
    assert hello["id"] is None and hello["v"] == 1
    assert isinstance(ready["load_ms"], (int, float)) and 0 <= ready["load_ms"] < 30_000
    model = ready["model"]
    assert set(model) == {
        "path", "arch", "n_ctx", "n_ctx_train", "n_vocab", "n_embd",
        "n_params", "size_bytes", "chat_template", "backend",
    }
    assert model["arch"] == "llama"
    assert model["n_ctx"] == 2048 and model["n_ctx_train"] == 2048
    assert model["n_vocab"] == 640 and model["n_embd"] == 64
    assert model["n_params"] > 250_000
    assert model["size_bytes"] == builtin_model_path.stat().st_size
    assert "<|im_start|>" in model["chat_template"]
    assert model["backend"] == "cpu"


def test_generate_non_stream(tiny):
    done, before = tiny.generate("r1", prompt="Hello world", max_tokens=10, temperature=0.0, stream=False)
    assert before == []  # no token frames without streaming
    assert done["type"] == "done" and done["id"] == "r1"
    assert isinstance(done["text"], str) and done["text"].strip()
    usage = done["usage"]
    assert 0 < usage["completion_tokens"] <= 10
    assert usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert done["finish_reason"] in ("length", "stop")
    assert set(done["timings"]) == {"prompt_ms", "predicted_ms", "predicted_per_second"}


def test_stream_equals_non_stream_at_temperature_zero(tiny):
    args = dict(prompt="The people of the world", max_tokens=60, temperature=0.0, seed=7)
    plain, _ = tiny.generate("a", stream=False, **args)
    done, before = tiny.generate("b", stream=True, **args)
    assert before and all(f["type"] == "token" and f["id"] == "b" for f in before)
    assert done["text"] == ""
    streamed = "".join(f["text"] for f in before)
    assert streamed == plain["text"]
    assert sum(f["n"] for f in before) == done["usage"]["completion_tokens"] == plain["usage"]["completion_tokens"]
    assert done["finish_reason"] == plain["finish_reason"]


def test_seeded_sampling_is_reproducible(tiny):
    args = dict(prompt="Once upon a time", max_tokens=30, temperature=0.9, top_p=0.9, seed=99)
    a, _ = tiny.generate("a", **args)
    b, _ = tiny.generate("b", **args)
    assert a["text"] == b["text"]


def test_stop_sequence(tiny):
    full, _ = tiny.generate("a", prompt="Hello", max_tokens=40, temperature=0.0)
    words = full["text"].split()
    stop_word = words[3]
    cut, _ = tiny.generate("b", prompt="Hello", max_tokens=40, temperature=0.0, stop=[" " + stop_word])
    assert cut["finish_reason"] == "stop"
    assert full["text"].startswith(cut["text"])
    assert (" " + stop_word) not in cut["text"]
    assert cut["usage"]["completion_tokens"] < full["usage"]["completion_tokens"]


def test_ping_during_long_generation_then_cancel(spawn, builtin_model_path):
    # a big context so that the generation cannot finish before we cancel it
    tiny = spawn(builtin_model_path, n_ctx=8192)
    tiny.boot()
    tiny.send("generate", "long", prompt="Once upon a time", max_tokens=1_000_000, temperature=0.8, seed=3, stream=True)
    first = tiny.read()
    assert first["type"] == "token" and first["id"] == "long"
    t0 = time.monotonic()
    tiny.send("ping", "p1")
    pong, before = tiny.read_until("pong")
    assert time.monotonic() - t0 < 2.0
    assert all(f["type"] == "token" for f in before)
    tokens = [first, *before]
    assert pong["id"] == "p1"
    assert pong["busy"] is True
    assert isinstance(pong["busy_since"], float) and 0 <= pong["busy_since"] < 30
    assert isinstance(pong["last_token_at"], float) and 0 <= pong["last_token_at"] < 5

    # a second generate while busy is refused, the first one goes on
    tiny.send("generate", "second", prompt="x", max_tokens=5)
    err, before = tiny.read_until("error")
    assert err["id"] == "second" and err["kind"] == "busy"
    tokens += before

    tiny.send("cancel", "long")
    done, before = tiny.read_until("done", "error")
    assert done["type"] == "done" and done["id"] == "long", done
    assert done["finish_reason"] == "cancelled"
    tokens += before
    assert all(f["type"] == "token" and f["id"] == "long" for f in tokens)
    assert done["usage"]["completion_tokens"] == sum(f["n"] for f in tokens)
    assert done["usage"]["completion_tokens"] < 8000

    # idle again: pong says so, and a new request is served
    tiny.send("ping", None)
    pong = tiny.read()
    assert pong["type"] == "pong" and pong["busy"] is False
    assert pong["busy_since"] is None and pong["last_token_at"] is None
    done, _ = tiny.generate("after", prompt="Hello", max_tokens=3)
    assert done["type"] == "done" and done["usage"]["completion_tokens"] == 3


def test_cancel_unknown_id_is_ignored(tiny):
    tiny.send("cancel", "nothing-running")
    tiny.send("ping", "p")
    assert tiny.read()["type"] == "pong"


def test_bad_requests(tiny):
    cases = [
        {},  # no prompt
        {"prompt": 5},
        {"prompt": "x", "max_tokens": "ten"},
        {"prompt": "x", "max_tokens": 0},
        {"prompt": "x", "temperature": -1},
        {"prompt": "x", "top_p": 2},
        {"prompt": "x", "stop": [1]},
        {"prompt": "x", "seed": 1.5},
        {"prompt": "x", "stream": "yes"},
    ]
    for i, fields in enumerate(cases):
        tiny.send("generate", f"bad{i}", **fields)
        err = tiny.read()
        assert err["type"] == "error" and err["id"] == f"bad{i}", (fields, err)
        assert err["kind"] == "bad_request", (fields, err)
        assert err["message"]
    # a prompt longer than the context window
    done, _ = tiny.generate("huge", prompt="the " * 3000, max_tokens=5)
    assert done["type"] == "error" and done["kind"] == "bad_request"
    assert "context window" in done["message"]
    # protocol garbage gets a protocol error, and the worker keeps serving
    tiny.sock.sendall(b"this is not json\n")
    err = tiny.read()
    assert err["type"] == "error" and err["kind"] == "protocol"
    tiny.sock.sendall(json.dumps({"v": 99, "type": "ping", "id": "x"}).encode() + b"\n")
    err = tiny.read()
    assert err["kind"] == "protocol" and err["id"] == "x"
    done, _ = tiny.generate("ok", prompt="Hello", max_tokens=2)
    assert done["type"] == "done"


def test_corrupt_gguf_is_a_boot_error(spawn, builtin_model_path, tmp_path):
    bad = tmp_path / "corrupt.gguf"
    bad.write_bytes(builtin_model_path.read_bytes()[:50_000])
    w = spawn(bad)
    hello = w.read()
    assert hello["type"] == "hello"
    err = w.read()
    assert err["type"] == "error" and err["kind"] == "boot" and err["id"] is None
    assert "truncated" in err["message"] and str(bad) in err["message"]
    assert w.read() is None  # the worker closes its end
    assert w.wait() == EXIT_BOOT_ERROR == 3


def test_missing_model_is_a_boot_error(spawn, tmp_path):
    w = spawn(tmp_path / "nowhere.gguf")
    assert w.read()["type"] == "hello"
    err = w.read()
    assert err["kind"] == "boot" and "does not exist" in err["message"]
    assert w.wait() == 3


def test_valid_header_llama_rejects_is_a_boot_error(spawn, tmp_path):
    """A well-formed GGUF that llama.cpp cannot load (no tensors, unknown arch)."""
    import gguf
    import numpy as np

    p = tmp_path / "weird.gguf"
    writer = gguf.GGUFWriter(str(p), "notanarch")
    writer.add_tensor("x", np.zeros(8, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    w = spawn(p)
    assert w.read()["type"] == "hello"
    err = w.read()
    assert err["kind"] == "boot" and "llama.cpp could not load" in err["message"]
    assert "unknown model architecture: 'notanarch'" in err["message"]  # llama.cpp's own reason
    assert w.wait() == 3


def test_worker_modules_import_cheaply():
    code = (
        "import sys, msting.worker.engine, msting.worker.main, msting.worker.protocol, "
        "msting.models.gguf_file, msting.models.builtin; "
        "print(sorted(m for m in ('llama_cpp', 'numpy', 'gguf') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_shutdown_exits_zero(tiny):
    tiny.send("shutdown")
    assert tiny.read() is None
    assert tiny.wait() == 0
    assert tiny.proc.stdout.read() == b""  # nothing printed to stdout


def test_shutdown_during_generation_exits_zero(tiny):
    tiny.send("generate", "g", prompt="Hello", max_tokens=1_000_000, stream=True)
    assert tiny.read()["type"] == "token"
    tiny.send("shutdown")
    t0 = time.monotonic()
    assert tiny.wait() == 0
    assert time.monotonic() - t0 < 10


def test_eof_exits_zero(tiny):
    tiny.sock.shutdown(socket.SHUT_WR)
    assert tiny.wait() == 0


def test_stories_once_upon_a_time(spawn, stories_model_path):
    w = spawn(stories_model_path)
    _, ready = w.boot()
    assert ready["model"]["chat_template"] is None
    assert ready["model"]["n_vocab"] == 512
    done, _ = w.generate("s", prompt="Once upon a time", max_tokens=40, temperature=0.0)
    text = done["text"]
    assert any(word in text for word in (" a ", " the ", " was ", " little ")), text
    assert text.startswith(", there was")
    # streaming agrees
    sdone, frames = w.generate("t", prompt="Once upon a time", max_tokens=40, temperature=0.0, stream=True)
    assert "".join(f["text"] for f in frames) == text
