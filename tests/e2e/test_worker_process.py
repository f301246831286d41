"""The worker process for real: `python -m msting.worker` over a socketpair."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from msting.worker.protocol import EXIT_BOOT_ERROR, decode, encode
from child_env import child_env

pytestmark = pytest.mark.e2e

READ_TIMEOUT = 60.0


class Worker:
    """One worker process and the daemon end of its socketpair."""

    def __init__(self, model_path: Path | None, tmp_path: Path, **spec_overrides):
        """model_path None: a warm spare (``--spare``), given its spec later by `load`."""
        spec = {
            "name": "test",
            "path": str(model_path),
            "n_ctx": 2048,
            "n_threads": None,
            "n_gpu_layers": 0,
            "seed": 1234,
        }
        spec.update(spec_overrides)
        self.spec = spec
        mode = ["--spare"] if model_path is None else ["--spec", json.dumps(spec)]
        self.sock, child = socket.socketpair()
        self.stderr_path = tmp_path / f"worker-{time.monotonic_ns()}.stderr"
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "msting.worker", "--fd", str(child.fileno()), *mode],
            pass_fds=[child.fileno()],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=child_env(),  # a developer's MSTING_* (failpoints) must not reach it
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

    def _spawn(model_path: Path | None, **spec) -> Worker:
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
        "n_params", "size_bytes", "chat_template", "chat_format", "backend",
        "embedding", "pooling", "parallel", "n_threads", "threads",
    }
    assert model["arch"] == "llama"
    assert model["n_ctx"] == 2048 and model["n_ctx_train"] == 2048
    assert model["n_vocab"] == 640 and model["n_embd"] == 64
    assert model["n_params"] > 250_000
    assert model["size_bytes"] == builtin_model_path.stat().st_size
    assert "<|im_start|>" in model["chat_template"]
    assert model["chat_format"] == "gguf-template"  # the model's own template
    assert model["backend"] == "cpu"
    assert model["embedding"] is False and model["pooling"] is None
    assert model["parallel"] == 1
    # n_threads null in the spec: measured at load, for 1 up to the usable cores
    threads = model["threads"]
    assert threads["source"] == "measured" and threads["chosen"] == model["n_threads"] >= 1
    assert "1" in threads["measured"] and str(model["n_threads"]) in threads["measured"]
    assert all(v > 0 for v in threads["measured"].values()) and "tok/s" in threads["reason"]


def test_explicit_n_threads_wins(spawn, builtin_model_path):
    w = spawn(builtin_model_path, n_threads=1)
    _, ready = w.boot()
    assert ready["model"]["n_threads"] == 1
    assert ready["model"]["threads"] == {
        "source": "spec", "chosen": 1, "measured": {}, "reason": "n_threads 1 set for this model",
    }


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
        "msting.worker.params, msting.worker.chat, msting.worker.pooling, msting.worker.transport, "
        "msting.worker.server, msting.worker.spare, msting.worker.log, msting.worker.failpoints, "
        "msting.worker.batch, msting.worker.sampling, msting.worker.reply, msting.worker.threads, "
        "msting.models.gguf_file, msting.models.builtin; "
        "print(sorted(m for m in ('llama_cpp', 'numpy', 'gguf', 'jinja2') if m in sys.modules))"
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


# ---- chat messages, chat formats, sampling penalties ---------------------------------

CHAT = [
    {"role": "system", "content": "You are brief."},
    {"role": "user", "content": "Hello, who are you?"},
]
# CHAT as the builtin model's own template (ChatML) renders it
CHAT_AS_CHATML = (
    "<|im_start|>system\nYou are brief.<|im_end|>\n"
    "<|im_start|>user\nHello, who are you?<|im_end|>\n"
    "<|im_start|>assistant\n"
)


def write_variant(src: Path, dst: Path, pooling: int | None = None, chat_template: str | None = None,
                  edit_tensors=None) -> Path:
    """A copy of the GGUF *src* with a pooling type declared, another chat template,
    and/or tensors edited (``edit_tensors(name, array) -> array``)."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(str(src))
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(str(dst), arch)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        if name == "tokenizer.chat_template" and chat_template is not None:
            continue
        if field.types[0] == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(name, field.contents(), field.types[0], sub_type=field.types[-1])
        else:
            writer.add_key_value(name, field.contents(), field.types[0])
    if pooling is not None:
        writer.add_pooling_type(gguf.PoolingType(pooling))
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    for t in reader.tensors:
        data = np.array(t.data)
        if edit_tensors is not None:
            data = edit_tensors(t.name, data)
        writer.add_tensor(t.name, data, raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


def counts(usage: dict) -> dict:
    """A `done` frame's token counts, without the prompt tokens its slot's cache saved
    (a request right after a similar one reuses part of its KV)."""
    return {k: v for k, v in usage.items() if k != "cached_tokens"}


def test_chat_messages_use_the_gguf_template(tiny):
    done, before = tiny.generate("c", messages=CHAT, max_tokens=12, temperature=0.0)
    assert before == [] and done["type"] == "done", done
    assert isinstance(done["text"], str) and done["text"].strip()
    assert done["text"] == done["text"].lstrip()  # the reply does not start with whitespace
    assert done["finish_reason"] in ("stop", "length")
    usage = done["usage"]
    assert 0 < usage["completion_tokens"] <= 12
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    # the same as completing the prompt the template renders (BOS added once)
    plain, _ = tiny.generate("p", prompt=CHAT_AS_CHATML, max_tokens=12, temperature=0.0)
    assert plain["text"].lstrip() == done["text"]
    assert counts(plain["usage"]) == counts(usage) and plain["finish_reason"] == done["finish_reason"]
    # streamed chat agrees with non-streamed chat
    sdone, frames = tiny.generate("s", messages=CHAT, max_tokens=12, temperature=0.0, stream=True)
    assert "".join(f["text"] for f in frames) == done["text"]
    assert sum(f["n"] for f in frames) == sdone["usage"]["completion_tokens"] == usage["completion_tokens"]


def test_chat_format_override(spawn, builtin_model_path):
    w = spawn(builtin_model_path, chat_format="chatml")
    _, ready = w.boot()
    assert ready["model"]["chat_format"] == "chatml"
    done, _ = w.generate("c", messages=CHAT, max_tokens=10, temperature=0.0)
    assert done["type"] == "done" and done["text"].strip()
    # llama-cpp-python's "chatml" format: the same turns as the model's template
    plain, _ = w.generate("p", prompt=CHAT_AS_CHATML, max_tokens=10, temperature=0.0)
    assert plain["text"].lstrip() == done["text"] and counts(plain["usage"]) == counts(done["usage"])


def test_unknown_chat_format_is_a_boot_error(spawn, builtin_model_path):
    w = spawn(builtin_model_path, chat_format="no-such-format")
    assert w.read()["type"] == "hello"
    err = w.read()
    assert err["type"] == "error" and err["kind"] == "boot", err
    assert "unknown chat_format 'no-such-format'" in err["message"]
    for name in ("chatml", "llama-2", "mistral-instruct", "transcript"):
        assert name in err["message"]
    assert w.read() is None
    assert w.wait() == EXIT_BOOT_ERROR


@pytest.mark.parametrize("spec", [{"embedding": "yes"}, {"chat_format": 5}])
def test_bad_spec_is_a_boot_error(spawn, builtin_model_path, spec):
    w = spawn(builtin_model_path, **spec)
    assert w.read()["type"] == "hello"
    err = w.read()
    assert err["kind"] == "boot" and list(spec)[0] in err["message"]
    assert w.wait() == EXIT_BOOT_ERROR


def test_template_end_of_turn_token_stops_generation(spawn, builtin_model_path, tmp_path):
    """A model that emits <|im_end|> (the template's end of turn) ends with "stop"."""
    base = spawn(builtin_model_path)
    base.boot()
    full, _ = base.generate("a", messages=CHAT, max_tokens=30, temperature=0.0)
    assert full["finish_reason"] == "length"  # msting-tiny never emits <|im_end|> itself
    word = next(w for w in full["text"].split()[3:] if w.isalpha())

    from msting.models.builtin import _build_vocab

    tokens = _build_vocab()[0]
    im_end, word_id = tokens.index("<|im_end|>"), tokens.index("\u2581" + word)

    def im_end_instead_of_word(name, data):
        if name == "output.weight":  # <|im_end|> now wins wherever `word` would have
            data[im_end] = data[word_id] * 1.01
        return data

    variant = write_variant(builtin_model_path, tmp_path / "im-end.gguf", edit_tensors=im_end_instead_of_word)
    w = spawn(variant)
    w.boot()
    cut, _ = w.generate("b", messages=CHAT, max_tokens=30, temperature=0.0)
    assert cut["finish_reason"] == "stop", (cut, full)
    assert cut["text"] and "<|im_end|>" not in cut["text"]
    assert full["text"][len(cut["text"]):].startswith(" " + word)
    assert cut["usage"]["completion_tokens"] < full["usage"]["completion_tokens"]
    # streaming reports the same
    sdone, frames = w.generate("c", messages=CHAT, max_tokens=30, temperature=0.0, stream=True)
    assert sdone["finish_reason"] == "stop" and "".join(f["text"] for f in frames) == cut["text"]


def test_generate_request_validation(tiny):
    cases = [
        {"prompt": "x", "messages": [{"role": "user", "content": "x"}]},
        {"messages": []},
        {"messages": "hello"},
        {"messages": [{"role": "user"}]},
        {"messages": [{"role": "", "content": "x"}]},
        {"messages": [{"role": "user", "content": None}]},
        {"messages": ["hello"]},
        {"prompt": "x", "presence_penalty": 3},
        {"prompt": "x", "frequency_penalty": "a lot"},
        {"prompt": "x", "frequency_penalty": True},
    ]
    for i, fields in enumerate(cases):
        tiny.send("generate", f"bad{i}", **fields)
        err = tiny.read()
        assert err["type"] == "error" and err["id"] == f"bad{i}", (fields, err)
        assert err["kind"] == "bad_request" and err["message"], (fields, err)
    tiny.send("generate", "both", prompt="x", messages=[{"role": "user", "content": "x"}])
    assert "not both" in tiny.read()["message"]
    # null means absent: the daemon may send prompt=None next to messages
    done, _ = tiny.generate("ok", prompt=None, messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
    assert done["type"] == "done" and done["usage"]["completion_tokens"] == 2


def _frame_id(line: bytes) -> str:
    return re.search(rb'"id":"(\w+)"', line).group(1).decode()


HOSTILE_GENERATE_LINES = [
    # written by hand: protocol.encode refuses every one of them
    b'{"v":1,"type":"generate","id":"h0","prompt":"x","temperature":NaN}',
    b'{"v":1,"type":"generate","id":"h1","prompt":"x","temperature":Infinity}',
    b'{"v":1,"type":"generate","id":"h2","prompt":"x","temperature":1e400}',
    b'{"v":1,"type":"generate","id":"h3","prompt":"x","seed":' + b"9" * 6000 + b"}",
    b'{"v":1,"type":"generate","id":"h4","prompt":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b'{"v":1,"type":"generate","id":"h5","prompt":"\\ud800"}',
    b'{"v":1,"type":"generate","id":"h6","messages":[{"role":"user","content":"a\\udfffb"}]}',
    b'{"v":1,"type":"generate","id":"h7","prompt":"x","stop":["\\ud800"]}',
    b'{"v":1,"type":"generate","id":"h8","prompt":"x","seed":4294967296}',
    b'{"v":1,"type":"generate","id":"h9","prompt":"x","seed":-2}',
    b'{"v":1,"type":"generate","id":"h10","prompt":"x","seed":18446744073709551616}',
    b'{"v":1,"type":"generate","id":"h11","prompt":"x","max_tokens":1099511627776}',
    b'{"v":1,"type":"generate","id":"h12","prompt":"x","temperature":2.5}',
    b'{"v":1,"type":"generate","id":"h13","prompt":"x","stop":[' + b",".join([b'"s"'] * 17) + b"]}",
    b'{"v":1,"type":"generate","id":"h14","prompt":"x","top_p":-1e-300}',
    b'{"v":1,"type":"generate","id":"h15","prompt":"x","presence_penalty":' + b"1" * 400 + b"}",
]


def test_hostile_generate_frames_are_bad_requests_and_the_worker_keeps_serving(tiny):
    for line in HOSTILE_GENERATE_LINES:
        tiny.sock.sendall(line + b"\n")
        err = tiny.read()
        assert err["type"] == "error" and err["kind"] == "bad_request", (line[:80], err)
        assert err["id"] == _frame_id(line), (line[:80], err)
        assert "Traceback" not in err["message"] and len(err["message"]) < 500, err
    # still READY: idle, and serving
    tiny.send("ping", "p")
    pong = tiny.read()
    assert pong["type"] == "pong" and pong["busy"] is False
    done, _ = tiny.generate("ok", prompt="Hello", max_tokens=2, seed=0xFFFFFFFE)
    assert done["type"] == "done" and done["usage"]["completion_tokens"] == 2
    # -1 is a random seed, as null is
    done, _ = tiny.generate("random", prompt="Hello", max_tokens=2, seed=-1)
    assert done["type"] == "done"
    assert tiny.proc.poll() is None


def test_chat_template_errors_are_bad_requests(spawn, builtin_model_path, tmp_path):
    template = (
        "{{ bos_token }}{% for m in messages %}"
        "{% if m['role'] == 'system' %}{{ raise_exception('System messages are not supported') }}{% endif %}"
        "[{{ m['role'] }}] {{ m['content'] }}{{ eos_token }}"
        "{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}"
    )
    w = spawn(write_variant(builtin_model_path, tmp_path / "strict.gguf", chat_template=template))
    _, ready = w.boot()
    assert ready["model"]["chat_format"] == "gguf-template"
    w.send("generate", "sys", messages=CHAT, max_tokens=3)
    err = w.read()
    assert err["type"] == "error" and err["kind"] == "bad_request", err
    assert "System messages are not supported" in err["message"]
    # the template's own bos_token is not doubled, and its eos_token "</s>" is a stop
    user = [{"role": "user", "content": "Hello"}]
    done, _ = w.generate("ok", messages=user, max_tokens=3, temperature=0.0)
    plain, _ = w.generate("p", prompt="[user] Hello</s>[assistant]", max_tokens=3, temperature=0.0)
    assert done["type"] == "done" and counts(done["usage"]) == counts(plain["usage"])


def test_presence_and_frequency_penalties(tiny):
    args = dict(prompt="Once upon a time", max_tokens=40, temperature=0.0)
    base, _ = tiny.generate("a", **args)
    zero, _ = tiny.generate("b", presence_penalty=0.0, frequency_penalty=0.0, **args)
    assert zero["text"] == base["text"]  # 0 is the default
    pen, _ = tiny.generate("c", presence_penalty=0.5, frequency_penalty=1.5, **args)
    assert pen["type"] == "done" and pen["usage"]["completion_tokens"] == 40
    assert pen["text"] != base["text"]

    def distinct(text):
        words = text.split()
        return len(set(words)) / len(words)

    assert distinct(pen["text"]) > distinct(base["text"])  # fewer repeated words
    neg, _ = tiny.generate("d", presence_penalty=-2, frequency_penalty=-2, **args)
    assert distinct(neg["text"]) <= distinct(base["text"])


# ---- embeddings -------------------------------------------------------------------------


def _norm(v):
    return sum(x * x for x in v) ** 0.5


def embed(w, id, inputs, **fields):
    w.send("embed", id, input=inputs, **fields)
    return w.read_until("done", "error")[0]


@pytest.fixture
def tiny_embed(spawn, builtin_model_path) -> Worker:
    w = spawn(builtin_model_path, embedding=True)
    _, ready = w.boot()
    assert ready["model"]["embedding"] is True
    assert ready["model"]["pooling"] == "none"  # msting-tiny declares no pooling type
    return w


def test_embed(tiny_embed):
    inputs = ["hello world", "the people of the world", "hello world"]
    done = embed(tiny_embed, "e1", inputs)
    assert done["type"] == "done" and done["id"] == "e1", done
    vectors = done["embeddings"]
    assert len(vectors) == 3
    for v in vectors:
        assert len(v) == 64 and all(isinstance(x, float) for x in v)
        assert abs(_norm(v) - 1.0) < 1e-6
    assert vectors[0] == vectors[2]
    assert max(abs(a - b) for a, b in zip(vectors[0], vectors[1])) > 1e-3
    assert done["usage"]["prompt_tokens"] == done["usage"]["total_tokens"] > 6
    assert done["finish_reason"] == "stop"
    assert set(done["timings"]) == {"prompt_ms"}
    # deterministic across requests, and independent of the other inputs in a request
    again = embed(tiny_embed, "e2", inputs)
    assert again["embeddings"] == vectors
    alone = embed(tiny_embed, "e3", ["the people of the world"])
    assert alone["embeddings"] == [vectors[1]]


def test_mean_pooling_matches_llama_cpp(spawn, builtin_model_path, tiny_embed, tmp_path):
    """Mean-pooled per-token vectors equal llama.cpp's own MEAN pooling of the same
    weights (a copy of msting-tiny that declares it)."""
    pooled = spawn(write_variant(builtin_model_path, tmp_path / "mean.gguf", pooling=1), embedding=True)
    _, ready = pooled.boot()
    assert ready["model"]["pooling"] == "mean"
    inputs = ["hello world", "the people of the world", "water"]
    ours = embed(tiny_embed, "a", inputs)["embeddings"]
    theirs = embed(pooled, "b", inputs)
    assert theirs["type"] == "done", theirs
    assert len(theirs["embeddings"]) == 3
    for a, b in zip(ours, theirs["embeddings"]):
        assert max(abs(x - y) for x, y in zip(a, b)) < 1e-5
    # a dedicated (pooled) embedding model does not generate
    pooled.send("generate", "g", prompt="Hello", max_tokens=2)
    err = pooled.read()
    assert err["kind"] == "bad_request" and "embeddings only" in err["message"]


def test_embedding_worker_also_generates(tiny_embed, tiny):
    args = dict(prompt="The people of the world", max_tokens=20, temperature=0.0)
    a, _ = tiny_embed.generate("g", **args)
    b, _ = tiny.generate("g", **args)
    assert a["type"] == "done" and a["text"] == b["text"] and a["usage"] == b["usage"]
    # embeddings are switched off while generating: llama.cpp would otherwise compute
    # every prompt token's output and warn about it on each decode
    assert "embeddings required" not in tiny_embed.stderr()
    # and embeds again after generating
    assert embed(tiny_embed, "e", ["hello"])["type"] == "done"


def test_embed_on_a_generation_worker_is_refused(tiny):
    err = embed(tiny, "e", ["hello"])
    assert err["type"] == "error" and err["kind"] == "bad_request"
    assert err["message"] == "this worker was not started for embeddings"


def test_embed_bad_requests(tiny_embed):
    for i, fields in enumerate([{}, {"input": []}, {"input": "hello"}, {"input": [""]}, {"input": ["a", 3]}]):
        tiny_embed.send("embed", f"bad{i}", **fields)
        err = tiny_embed.read()
        assert err["type"] == "error" and err["kind"] == "bad_request", (fields, err)
    err = embed(tiny_embed, "long", ["the " * 3000])
    assert err["type"] == "error" and err["kind"] == "bad_request"
    assert "context window" in err["message"]
    assert embed(tiny_embed, "ok", ["fine"])["type"] == "done"


def test_hostile_embed_frames_are_bad_requests(tiny_embed):
    lines = [
        b'{"v":1,"type":"embed","id":"e0","input":["\\ud800"]}',
        b'{"v":1,"type":"embed","id":"e1","input":["ok", NaN]}',
        b'{"v":1,"type":"embed","id":"e2","input":' + b"[" * 50_000 + b"]" * 50_000 + b"}",
        b'{"v":1,"type":"embed","id":"e3","input":[' + b",".join([b'"a"'] * 2049) + b"]}",
    ]
    for line in lines:
        tiny_embed.sock.sendall(line + b"\n")
        err = tiny_embed.read()
        assert err["type"] == "error" and err["kind"] == "bad_request" and err["id"] == _frame_id(line), (line[:60], err)
    assert embed(tiny_embed, "ok", ["fine"])["type"] == "done"


def test_embed_while_generating_is_busy(spawn, builtin_model_path):
    w = spawn(builtin_model_path, embedding=True, n_ctx=8192)
    w.boot()
    w.send("generate", "long", prompt="Once", max_tokens=1_000_000, stream=True)
    assert w.read()["type"] == "token"
    w.send("embed", "e", input=["hello"])
    err, _ = w.read_until("error")
    assert err["id"] == "e" and err["kind"] == "busy"
    w.send("cancel", "long")
    done, _ = w.read_until("done")
    assert done["finish_reason"] == "cancelled"
    assert embed(w, "e2", ["hello"])["type"] == "done"


def test_stories_chat_and_embed(spawn, stories_model_path):
    """stories260K: no chat template (the transcript fallback) and no pooling type
    (embeddings are mean-pooled token vectors)."""
    w = spawn(stories_model_path, embedding=True)
    _, ready = w.boot()
    assert ready["model"]["chat_format"] == "transcript"
    assert ready["model"]["pooling"] == "none"
    n_embd = ready["model"]["n_embd"]
    messages = [{"role": "user", "content": "Once upon a time"}]
    done, _ = w.generate("c", messages=messages, max_tokens=30, temperature=0.0)
    plain, _ = w.generate("p", prompt="User: Once upon a time\nAssistant:", max_tokens=30, temperature=0.0)
    assert done["type"] == "done" and done["text"]
    assert done["usage"]["prompt_tokens"] == plain["usage"]["prompt_tokens"]
    assert plain["text"].lstrip().startswith(done["text"])

    out = embed(w, "e", ["Once upon a time", "The cat sat on the mat.", "Once upon a time"])
    assert out["type"] == "done", out
    vectors = out["embeddings"]
    assert [len(v) for v in vectors] == [n_embd] * 3
    assert all(abs(_norm(v) - 1.0) < 1e-6 for v in vectors)
    assert vectors[0] == vectors[2] and vectors[0] != vectors[1]


# ---- the warm spare (--spare): engine imported, waiting for a `load` frame ------------


def test_spare_loads_on_the_load_frame_and_serves(spawn, builtin_model_path, tiny):
    spare = spawn(None)
    spare.send("generate", "early", prompt="Hi", max_tokens=1)  # no model yet
    refused = spare.read()
    assert refused["type"] == "error" and refused["id"] == "early" and refused["kind"] == "protocol"
    assert "accepts only 'load'" in refused["message"]
    spec = dict(spare.spec, path=str(builtin_model_path))
    spare.send("load", None, spec=spec)
    hello, ready = spare.boot()  # the same life cycle as a worker started with --spec
    assert hello["pid"] == spare.proc.pid
    assert ready["model"]["path"] == str(builtin_model_path) and ready["load_ms"] >= 0
    args = dict(prompt="Once upon a time", max_tokens=20, temperature=0.0, stream=False)
    mine, _ = spare.generate("a", **args)
    theirs, _ = tiny.generate("b", **args)
    assert mine["text"] and mine["text"] == theirs["text"]


@pytest.mark.parametrize("ending", ["eof", "shutdown"])
def test_spare_without_a_model_exits_zero(spawn, ending):
    spare = spawn(None)
    if ending == "eof":
        spare.sock.shutdown(socket.SHUT_WR)
    else:
        spare.send("shutdown")
    assert spare.wait() == 0
    assert spare.read() is None  # it never said hello


def test_spare_with_a_bad_spec_is_a_boot_error(spawn, tmp_path):
    spare = spawn(None)
    spare.send("load", None, spec={"path": str(tmp_path / "missing.gguf")})
    hello = spare.read()
    error = spare.read()
    assert hello["type"] == "hello"
    assert error["type"] == "error" and error["kind"] == "boot"
    assert "missing.gguf" in error["message"]
    assert spare.wait() == EXIT_BOOT_ERROR


# ---- parallel sequences in one worker (slots) ----------------------------------------

PROMPTS = [
    "Once upon a time", "The little dog", "Lily and Tom went to", "One day, a bird",
    "The sun was", "Max liked to eat", "In the park there", "She saw a big",
]


def _text(done: dict, frames: list[dict]) -> str:
    return done["text"] or "".join(f["text"] for f in frames if f["type"] == "token")


def run_together(w: Worker, requests: dict[str, dict]) -> dict[str, tuple[dict, list[dict]]]:
    """Send every request at once; each one's (done or error frame, its token frames)."""
    for rid, fields in requests.items():
        w.send("generate", rid, **fields)
    frames: dict[str, list[dict]] = {rid: [] for rid in requests}
    ends: dict[str, dict] = {}
    while len(ends) < len(requests):
        frame = w.read()
        assert frame is not None, w.stderr()
        assert frame["id"] in requests, frame
        if frame["type"] in ("done", "error"):
            ends[frame["id"]] = frame
        else:
            frames[frame["id"]].append(frame)
    return {rid: (ends[rid], frames[rid]) for rid in requests}


@pytest.mark.parametrize("model", ["msting-tiny", "stories260K"])
def test_each_sequence_equals_its_output_alone_at_every_parallel_n(spawn, builtin_model_path, stories_model_path, model):
    path = builtin_model_path if model == "msting-tiny" else stories_model_path

    def request(i: int) -> dict:
        fields = dict(max_tokens=24 + 9 * i, temperature=0.0, stream=i % 2 == 0)
        if i == 3:
            return dict(fields, messages=[{"role": "user", "content": PROMPTS[i]}])
        return dict(fields, prompt=PROMPTS[i])

    one = spawn(path, n_threads=1, n_ctx=512)
    one.boot()
    alone = {}
    for i in range(8):
        done, frames = one.generate(f"a{i}", **request(i))
        assert done["type"] == "done", done
        alone[i] = (_text(done, frames), done["usage"]["completion_tokens"], done["finish_reason"])
    assert len({text for text, _, _ in alone.values()}) == 8  # different prompts, different replies
    for n in (1, 2, 4, 8):
        w = spawn(path, n_threads=1, n_ctx=512, parallel=n)
        _, ready = w.boot()
        assert ready["model"]["parallel"] == n and ready["model"]["n_ctx"] == 512
        for round in range(2):  # the second round runs on the slots' caches
            out = run_together(w, {f"r{i}": request(i) for i in range(n)})
            for i in range(n):
                done, frames = out[f"r{i}"]
                assert done["type"] == "done", done
                got = (_text(done, frames), done["usage"]["completion_tokens"], done["finish_reason"])
                assert got == alone[i], (n, round, i)
                if done["usage"]["completion_tokens"] and request(i)["stream"]:
                    assert sum(f["n"] for f in frames) == done["usage"]["completion_tokens"]


def test_seeded_sampling_does_not_depend_on_the_other_sequences(spawn, builtin_model_path):
    w = spawn(builtin_model_path, n_threads=1, parallel=4)
    w.boot()
    args = dict(prompt="Once upon a time", max_tokens=40, temperature=0.9, top_p=0.9, seed=99)
    alone, _ = w.generate("alone", **args)
    out = run_together(w, {
        "x": dict(args), "y": dict(args, prompt="The people"), "z": dict(args, seed=5), "w": dict(args, temperature=0.0),
    })
    assert out["x"][0]["text"] == alone["text"]
    assert out["z"][0]["text"] != alone["text"]  # another seed samples another text


def test_slots_busy_cancel_and_pong(spawn, builtin_model_path):
    w = spawn(builtin_model_path, n_threads=1, parallel=2, n_ctx=8192)
    w.boot()
    w.send("ping", "idle")
    pong = w.read()
    assert pong["slots"] == 2 and pong["slots_busy"] == 0 and pong["busy"] is False
    assert pong["busy_since"] is None and pong["last_token_at"] is None
    long = dict(prompt="Once upon a time", max_tokens=1_000_000, temperature=0.8, stream=True)
    w.send("generate", "a", seed=1, **long)
    w.send("generate", "b", seed=2, **long)
    seen: set[str] = set()
    while seen != {"a", "b"}:
        frame = w.read()
        assert frame["type"] == "token", frame
        seen.add(frame["id"])
    w.send("generate", "c", prompt="x", max_tokens=5)  # every slot taken
    err, _ = w.read_until("error")
    assert err["id"] == "c" and err["kind"] == "busy" and "2 requests" in err["message"]
    w.send("generate", "a", prompt="x", max_tokens=5)  # an id already running
    err, _ = w.read_until("error")
    assert err["id"] == "a" and err["kind"] == "bad_request"
    w.send("ping", "busy")
    pong, _ = w.read_until("pong")
    assert pong["slots"] == 2 and pong["slots_busy"] == 2 and pong["busy"] is True
    assert 0 <= pong["last_token_at"] < 5 and pong["busy_since"] >= 0

    w.send("cancel", "a")  # only a stops; b goes on, and its slot takes a new request
    done, before = w.read_until("done")
    assert done["id"] == "a" and done["finish_reason"] == "cancelled"
    w.send("generate", "d", prompt="Hello", max_tokens=3, temperature=0.0)
    frames = []
    while True:
        frame = w.read()
        if frame["type"] == "done":
            break
        frames.append(frame)
    assert frame["id"] == "d" and frame["usage"]["completion_tokens"] == 3
    assert all(f["type"] == "token" and f["id"] in ("a", "b", "d") for f in before + frames)
    assert w.read()["id"] == "b"  # b streams on
    w.send("ping", "one")
    pong, _ = w.read_until("pong")
    assert pong["slots_busy"] == 1
    w.send("cancel", "b")
    done, _ = w.read_until("done")
    assert done["id"] == "b" and done["finish_reason"] == "cancelled"
    w.send("ping", "idle-again")
    pong, _ = w.read_until("pong")
    assert pong["slots_busy"] == 0 and pong["busy"] is False and pong["last_token_at"] is None


def test_a_long_prompt_is_prefilled_in_chunks_while_others_generate(spawn, builtin_model_path):
    w = spawn(builtin_model_path, n_threads=1, parallel=2, n_ctx=4096)
    w.boot()
    args = dict(max_tokens=20, temperature=0.0)
    long_prompt = "the people of the world " * 500  # about 2500 tokens: 20 chunks of prefill
    alone_long, _ = w.generate("l0", prompt=long_prompt, **args)
    w.send("generate", "short", prompt="Once upon a time", max_tokens=2000, temperature=0.0, stream=True)
    w.read_until("token")
    w.send("generate", "long", prompt=long_prompt, **args)
    long, before = w.read_until("done")
    assert long["id"] == "long" and long["text"] == alone_long["text"]
    assert long["usage"]["prompt_tokens"] > 2000
    # the short one kept streaming while the long prompt was decoded, chunk by chunk
    assert len([f for f in before if f["id"] == "short"]) >= 2
    w.send("cancel", "short")
    done, _ = w.read_until("done")
    assert done["id"] == "short"


# ---- the prompt cache: a free slot's KV reused by the next prompt that shares its start


def test_a_second_chat_turn_reuses_the_first_turns_kv(spawn, builtin_model_path, stories_model_path):
    for path in (builtin_model_path, stories_model_path):
        cached = spawn(path, n_threads=1, parallel=2)
        cached.boot()
        turn = [{"role": "system", "content": "You are brief."}, {"role": "user", "content": "Once upon a time"}]
        first, _ = cached.generate("t1", messages=turn, max_tokens=30, temperature=0.0)
        assert first["usage"]["cached_tokens"] == 0
        turn2 = turn + [{"role": "assistant", "content": first["text"]}, {"role": "user", "content": "And then?"}]
        second, _ = cached.generate("t2", messages=turn2, max_tokens=30, temperature=0.0)
        # a fresh worker decodes the whole prompt: the same text
        fresh = spawn(path, n_threads=1, parallel=2)
        fresh.boot()
        uncached, _ = fresh.generate("t2", messages=turn2, max_tokens=30, temperature=0.0)
        assert uncached["usage"]["cached_tokens"] == 0
        assert second["text"] == uncached["text"] and counts(second["usage"]) == counts(uncached["usage"])
        # the first turn's prompt and most of its reply were not decoded again
        assert first["usage"]["prompt_tokens"] <= second["usage"]["cached_tokens"] < second["usage"]["prompt_tokens"]


def test_a_shared_system_prompt_is_decoded_once_per_slot(spawn, builtin_model_path):
    w = spawn(builtin_model_path, n_threads=1, parallel=2)
    w.boot()
    system = {"role": "system", "content": "You are a helpful assistant who answers every question in a few words. " * 4}
    questions = ["Who are you?", "What is the world?", "Hello there", "Where are the people?"]
    alone = {}
    for i, q in enumerate(questions):
        fresh = spawn(builtin_model_path, n_threads=1)
        fresh.boot()
        done, _ = fresh.generate("q", messages=[system, {"role": "user", "content": q}], max_tokens=20, temperature=0.0)
        assert done["usage"]["cached_tokens"] == 0
        alone[q] = done["text"]
        fresh.close()
    for i, q in enumerate(questions):
        done, _ = w.generate(f"q{i}", messages=[system, {"role": "user", "content": q}], max_tokens=20, temperature=0.0)
        assert done["text"] == alone[q]
        if i:
            assert done["usage"]["cached_tokens"] > 40  # the system prompt, at least


# ---- embeddings: several inputs in one decode, one sequence each ------------------------


@pytest.mark.parametrize("pooling", [None, 1])  # msting-tiny's per-token vectors (mean-pooled here), llama.cpp's mean pooling
def test_batched_embeddings_equal_each_input_alone(spawn, builtin_model_path, tmp_path, pooling):
    path = builtin_model_path if pooling is None else write_variant(builtin_model_path, tmp_path / "mean.gguf", pooling=pooling)
    inputs = ["hello world", "the people of the world", "water", "Once upon a time there was a little world", "x", "hello"]
    one = spawn(path, embedding=True, n_threads=1)
    one.boot()
    alone = [embed(one, f"a{i}", [text])["embeddings"][0] for i, text in enumerate(inputs)]
    w = spawn(path, embedding=True, n_threads=1, parallel=4)
    _, ready = w.boot()
    assert ready["model"]["parallel"] == 4
    done = embed(w, "all", inputs)  # 4 inputs in the first decode, 2 in the second
    assert done["type"] == "done", done
    assert done["usage"]["prompt_tokens"] == sum(embed(one, "n", [t])["usage"]["prompt_tokens"] for t in inputs)
    for a, b in zip(alone, done["embeddings"]):
        assert max(abs(x - y) for x, y in zip(a, b)) < 1e-6
    # two requests at once share the decodes
    w.send("embed", "one", input=inputs[:3])
    w.send("embed", "two", input=inputs[3:])
    ends = {f["id"]: f for f in (w.read_until("done")[0], w.read_until("done")[0])}
    both = ends["one"]["embeddings"] + ends["two"]["embeddings"]
    for a, b in zip(alone, both, strict=True):
        assert max(abs(x - y) for x, y in zip(a, b)) < 1e-6
    if pooling is not None:
        return  # a model that declares pooling does not generate
    # embeddings and generation share the slots: a generation streams on meanwhile
    w.send("generate", "g", prompt="Once upon a time", max_tokens=200, temperature=0.0, stream=True)
    w.read_until("token")
    again = embed(w, "again", inputs)
    assert again["type"] == "done" and len(again["embeddings"]) == len(inputs)
    for a, b in zip(alone, again["embeddings"]):
        assert max(abs(x - y) for x, y in zip(a, b)) < 1e-6
    gen, _ = w.read_until("done")
    assert gen["id"] == "g" and gen["usage"]["completion_tokens"] == 200


def test_an_unrelated_prompt_takes_an_empty_slot_before_another_prompts_cache(spawn, builtin_model_path):
    w = spawn(builtin_model_path, n_threads=1, parallel=2)
    w.boot()
    story = "Once upon a time there was a little world, and the people of the world were happy. " * 3
    first, _ = w.generate("a", prompt=story, max_tokens=5, temperature=0.0)
    other, _ = w.generate("b", prompt="Hello", max_tokens=5, temperature=0.0)  # the empty slot
    again, _ = w.generate("c", prompt=story, max_tokens=5, temperature=0.0)
    assert other["usage"]["cached_tokens"] == 0
    assert again["usage"]["cached_tokens"] == first["usage"]["prompt_tokens"] - 1  # all but the last, decoded for its logits
    assert again["text"] == first["text"]


@pytest.mark.parametrize("ending", ["shutdown", "eof"])
def test_shutdown_with_every_slot_generating_exits_zero(spawn, builtin_model_path, ending):
    w = spawn(builtin_model_path, n_threads=1, parallel=3, n_ctx=8192)
    w.boot()
    for rid in ("a", "b", "c"):
        w.send("generate", rid, prompt="Hello", max_tokens=1_000_000, stream=True)
    seen: set[str] = set()
    while seen != {"a", "b", "c"}:
        seen.add(w.read()["id"])
    t0 = time.monotonic()
    if ending == "eof":
        w.sock.shutdown(socket.SHUT_WR)
    else:
        w.send("shutdown")
    assert w.wait() == 0
    assert time.monotonic() - t0 < 10
