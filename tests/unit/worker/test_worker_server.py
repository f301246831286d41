"""The worker's transport, job dispatcher and warm-spare wait, in-process: a real
socketpair, a stand-in engine whose prompts name what goes wrong, or the real engine
on msting-tiny (msting.worker.transport, .server, .spare)."""

import socket
import threading

import pytest

from msting.worker import params, spare
from msting.worker.engine import Engine, GenerationResult
from msting.worker.protocol import MAX_FRAME_BYTES, decode, encode
from msting.worker.server import WorkerServer
from msting.worker.transport import Connection, frame_id


class _FakeEngine:
    """Just enough of Engine: prompts name what goes wrong, while starting ("boom")
    or in the decode loop's thread after a first piece ("late")."""

    embedding = False
    serves_generate = True
    pooling = None
    parallel = 1
    last_token_at = None

    def start_generate(self, sink, cancelled, prompt=None, messages=None, **kwargs):
        if prompt == "boom":
            raise RuntimeError("secret engine detail")

        def loop():
            sink.piece("hi", 1)
            if prompt == "late":
                try:  # as the loop does: it passes on what it caught
                    raise ValueError("secret late detail")
                except ValueError as exc:
                    sink.fail(exc)
            else:
                sink.finish(GenerationResult("stop", 1, 1, 0.1, 0.1))

        threading.Thread(target=loop, daemon=True).start()

    def stop(self, timeout):
        return True


class _Harness:
    def __init__(self, engine):
        self.sock, worker_end = socket.socketpair()
        self.sock.settimeout(10)
        self.server = WorkerServer(Connection(worker_end), engine)
        self.thread = threading.Thread(target=self.server.serve, daemon=True)
        self.thread.start()
        self.reader = self.sock.makefile("rb")

    def send_line(self, line: bytes) -> None:
        self.sock.sendall(line + b"\n")

    def send(self, type: str, id: str | None = None, **fields) -> None:
        self.sock.sendall(encode(type, id, **fields))

    def read(self) -> dict:
        return decode(self.reader.readline())

    def until(self, *types: str) -> dict:
        while True:
            frame = self.read()
            if frame["type"] in types:
                return frame

    def close(self) -> None:
        self.send("shutdown")
        self.thread.join(10)
        self.reader.close()
        self.sock.close()


@pytest.fixture
def harness():
    h = _Harness(_FakeEngine())
    yield h
    h.close()


def _idle_and_serving(h: _Harness) -> None:
    h.send("ping", "p")
    pong = h.read()
    assert pong["type"] == "pong" and pong["busy"] is False
    h.send("generate", "ok", prompt="fine", stream=True)
    assert h.until("done", "error")["type"] == "done"


def test_engine_exceptions_are_error_frames_with_an_id_not_the_text(harness, capfd):
    for prompt in ("boom", "late"):
        harness.send("generate", prompt, prompt=prompt, stream=True)
        err = harness.until("error")
        assert err["id"] == prompt and err["kind"] == "engine"
        assert "secret" not in err["message"] and "Error" not in err["message"]
        error_id = err["message"].rsplit(" ", 1)[-1]
        assert error_id.startswith("err-")
        logged = capfd.readouterr().err
        assert error_id in logged and "Traceback" in logged and "secret" in logged  # for the operator
        _idle_and_serving(harness)


def test_undecodable_request_frames_are_bad_requests(harness):
    lines = [
        b'{"v":1,"type":"generate","id":"a","prompt":"x","seed":' + b"9" * 6000 + b"}",
        b'{"v":1,"type":"generate","id":"b","prompt":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"v":1,"type":"embed","id":"c","input":["x", NaN]}',
        b'{"v":1,"type":"generate","id":"d","prompt":"\\ud800"}',
        b'{"v":1,"type":"generate","id":"e","prompt":"x","seed":4294967296}',
        b'{"v":1,"type":"generate","id":"f","prompt":"x","temperature":1e400}',
    ]
    for line in lines:
        harness.send_line(line)
        err = harness.read()
        assert err["type"] == "error" and err["kind"] == "bad_request", (line[:60], err)
        assert err["id"] == line.split(b'"id":"')[1][:1].decode()
    harness.send_line(b"[" * 100_000)  # no id to answer: a protocol error, and no crash
    assert harness.read()["kind"] == "protocol"
    _idle_and_serving(harness)


def test_a_bug_in_frame_handling_is_answered_and_serving_goes_on(harness, monkeypatch):
    def broken_status():
        raise AttributeError("secret status detail")

    monkeypatch.setattr(harness.server, "_status", broken_status)
    harness.send("ping", "p1")
    err = harness.read()
    assert err["type"] == "error" and err["id"] == "p1" and err["kind"] == "engine" and "secret" not in err["message"]
    monkeypatch.undo()
    _idle_and_serving(harness)


def test_a_bug_in_validation_is_a_bad_request(harness, monkeypatch):
    def broken_parse(frame):
        raise TypeError("secret parse detail")

    monkeypatch.setattr(params, "parse_generate", broken_parse)
    harness.send("generate", "g", prompt="x")
    err = harness.read()
    assert err["id"] == "g" and err["kind"] == "bad_request" and "secret" not in err["message"]
    monkeypatch.undo()
    _idle_and_serving(harness)


@pytest.fixture
def real(builtin_model_path):
    engine = Engine(builtin_model_path, n_ctx=512, n_threads=1)
    engine.load()
    h = _Harness(engine)
    yield h
    h.close()
    engine.close()


def test_a_bug_around_the_job_does_not_lose_the_decode_loop(real, monkeypatch):
    harness = real
    calls = {"n": 0}
    finish = harness.server._finish

    def finish_once_broken(req_id):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("secret finish detail")
        finish(req_id)

    monkeypatch.setattr(harness.server, "_finish", finish_once_broken)
    harness.send("generate", "j", prompt="fine")
    err = harness.until("error")
    assert err["id"] == "j" and err["kind"] == "engine" and "secret" not in err["message"]
    monkeypatch.undo()
    _idle_and_serving(harness)


# ---- the transport (msting.worker.transport) ----------------------------------------


def test_an_over_long_frame_is_a_protocol_error_and_reading_goes_on(harness):
    sender = threading.Thread(target=harness.send_line, args=(b'{"id":"big","x":"' + b"x" * MAX_FRAME_BYTES + b'"}',))
    sender.start()
    err = harness.read()
    sender.join(10)
    assert err["type"] == "error" and err["kind"] == "protocol" and err["id"] is None
    assert f"over the {MAX_FRAME_BYTES}-byte limit" in err["message"]
    _idle_and_serving(harness)


def test_frame_id_is_found_in_lines_that_do_not_decode():
    assert frame_id(b'{"v":1,"type":"generate","id":"a","x":NaN-ish') == "a"
    assert frame_id(b'{"v":2,"type":"ping","id":"b"}') == "b"
    assert frame_id(b'{"v":1,"type":"ping","id":5}') is None
    assert frame_id(b"[1, 2]") is None
    assert frame_id(b"\xff\xfe not json") is None


# ---- the warm spare's wait (msting.worker.spare) --------------------------------------


class _SpareHarness:
    def __init__(self):
        self.sock, worker_end = socket.socketpair()
        self.sock.settimeout(10)
        self.conn = Connection(worker_end)
        self.result: dict = {}
        self.thread = threading.Thread(target=lambda: self.result.update(load=spare.await_load(self.conn)), daemon=True)
        self.thread.start()
        self.reader = self.sock.makefile("rb")

    def read(self) -> dict:
        return decode(self.reader.readline())

    def wait(self):
        self.thread.join(10)
        assert not self.thread.is_alive()
        return self.result["load"]

    def close(self) -> None:
        self.reader.close()
        self.sock.close()
        self.conn.close()


@pytest.fixture
def spare_harness():
    h = _SpareHarness()
    yield h
    h.close()


def test_a_spare_answers_everything_but_load_with_a_protocol_error(spare_harness):
    h = spare_harness
    h.sock.sendall(encode("generate", "early", prompt="Hi"))
    err = h.read()
    assert err["id"] == "early" and err["kind"] == "protocol" and "accepts only 'load'" in err["message"]
    h.sock.sendall(b'{"v":1,"type":"ping","id":"p","x":NaN}\n')
    err = h.read()
    assert err["id"] == "p" and err["kind"] == "protocol"
    h.sock.sendall(encode("load", None, spec={"path": "m.gguf"}))
    load = h.wait()
    assert load["type"] == "load" and load["spec"] == {"path": "m.gguf"}


@pytest.mark.parametrize("ending", ["eof", "shutdown"])
def test_a_spare_without_a_model_ends_its_wait(spare_harness, ending):
    if ending == "eof":
        spare_harness.sock.shutdown(socket.SHUT_WR)
    else:
        spare_harness.sock.sendall(encode("shutdown"))
    assert spare_harness.wait() is None
