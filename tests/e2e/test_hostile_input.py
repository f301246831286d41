"""Input that cannot hurt the service: hostile bodies against a real daemon.

Sent raw over the Unix socket, on one keep-alive connection, because httpx (and the
json module) would refuse to write most of them: lone surrogate escapes, NaN, invalid
UTF-8 bytes, 100,000-deep nesting, 6000-digit integers, oversized and chunked oversized
bodies. Every one must be a 400 (413 for size) in the error shape with a `code`, never
a 5xx and never Python exception text; the connection must answer the next request;
no worker may see any of it (its pid, restart count and requests served unchanged),
and a normal generate works afterwards.
"""

from __future__ import annotations

import json
import socket

import pytest
from websockets.sync.client import unix_connect

from msting.api.limits import MAX_BODY_BYTES, MAX_DEPTH

pytestmark = pytest.mark.e2e

# What a Python exception leaks into a body: none of it may appear in an answer.
LEAKS = ("Traceback", "recursion", "RecursionError", "ValueError", "TypeError", "KeyError", "UnicodeEncodeError",
         "UnicodeDecodeError", "AttributeError", "codec can't", "Exception", "File \"")


class RawConnection:
    """HTTP/1.1 by hand over the daemon's Unix socket, keep-alive."""

    def __init__(self, path: str, timeout: float = 30):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def request(self, method: str, path: str, body: bytes | None = None, *, chunks: list[bytes] | None = None,
                content_length: int | None = None) -> tuple[int, dict, bytes]:
        head = [f"{method} {path} HTTP/1.1", "Host: localhost", "Content-Type: application/json"]
        if chunks is not None:
            head.append("Transfer-Encoding: chunked")
        elif body is not None:
            head.append(f"Content-Length: {len(body) if content_length is None else content_length}")
        data = ("\r\n".join(head) + "\r\n\r\n").encode()
        if chunks is not None:
            data += b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
        elif body is not None:
            data += body
        self.sock.sendall(data)
        return self.response()

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the daemon closed the connection")
        self.buf += chunk

    def response(self) -> tuple[int, dict, bytes]:
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            n = int(headers["content-length"])
            while len(self.buf) < n:
                self._fill()
            body, self.buf = self.buf[:n], self.buf[n:]
        else:  # chunked
            body = b""
            while True:
                while b"\r\n" not in self.buf:
                    self._fill()
                size_line, self.buf = self.buf.split(b"\r\n", 1)
                size = int(size_line.split(b";")[0], 16)
                while len(self.buf) < size + 2:
                    self._fill()
                body, self.buf = body + self.buf[:size], self.buf[size + 2:]
                if size == 0:
                    break
        return status, headers, body


# Each body-taking route: a template whose @S@ is a string and @N@ a number, valid with
# the defaults, so that only the hostile value is to blame for a refusal.
ROUTES = {
    "/generate": b'{"prompt": @S@, "max_tokens": 2, "temperature": @N@}',
    "/llm": b'{"prompt": @S@, "max_tokens": 2, "temperature": @N@}',
    "/models/load": b'{"model": @S@, "timeout": @N@}',
    "/models/unload": b'{"model": @S@, "x": @N@}',
    "/v1/chat/completions": b'{"messages": [{"role": "user", "content": @S@}], "max_tokens": 2, "top_p": @N@}',
    "/v1/completions": b'{"prompt": @S@, "max_tokens": 2, "frequency_penalty": @N@}',
    "/v1/embeddings": b'{"input": [@S@], "user": "u", "x": @N@}',
    "/v1/execute": b'{"prompt": @S@, "max_tokens": 2, "seed": @N@}',
    "/v1/profiles/switch": b'{"profile": @S@, "dry_run": true, "x": @N@}',
}
GOOD_S, GOOD_N = b'"default"', b"0"

HOSTILE_NUMBERS = {
    b"NaN": "invalid_number", b"Infinity": "invalid_number", b"-Infinity": "invalid_number",
    b"1e400": "invalid_number", b"-1e400": "invalid_number", b"9" * 6000: "invalid_number",
    b"-" + b"9" * 6000: "invalid_number", b"18446744073709551616": "invalid_number",
    b"9223372036854775808": "invalid_number", b"-9223372036854775809": "invalid_number",
    b"[" * 100_000 + b"]" * 100_000: "nesting_too_deep",
    b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1): "nesting_too_deep",
}
HOSTILE_STRINGS = {
    b'"\\ud800"': "invalid_unicode", b'"\\udfff"': "invalid_unicode", b'"a\\ud800b"': "invalid_unicode",
    b'"\\ud800\\u0041"': "invalid_unicode", b'"\\udc00\\ud800"': "invalid_unicode",
    b'"\xff\xfe"': "invalid_unicode", b'"\xc0\xaf"': "invalid_unicode", b'"\xed\xa0\x80"': "invalid_unicode",
    b'"caf\xe9"': "invalid_unicode",
}


def _hostile_bodies(template: bytes):
    for value, code in HOSTILE_NUMBERS.items():
        yield template.replace(b"@S@", GOOD_S).replace(b"@N@", value), code
    for value, code in HOSTILE_STRINGS.items():
        yield template.replace(b"@S@", value).replace(b"@N@", GOOD_N), code
    good = template.replace(b"@S@", GOOD_S).replace(b"@N@", GOOD_N)
    yield b'{"\\ud800": 1, ' + good[1:], "invalid_unicode"  # in a key
    yield b'{"\xff": 1, ' + good[1:], "invalid_unicode"
    yield good[:-1] + b', "deep": ' + b'{"a": ' * 100_000 + b"1" + b"}" * 100_000 + b"}", "nesting_too_deep"
    yield good + b" NaN", "invalid_json"
    yield b"NaN", "invalid_number"


def _assert_refused(status: int, body: bytes, want_status: int, want_code: str, what: str) -> None:
    assert status == want_status, (what, status, body[:300])
    text = body.decode("utf-8")
    for leak in LEAKS:
        assert leak not in text, (what, leak, text[:300])
    error = json.loads(text)["error"]
    assert error["code"] == want_code, (what, error)
    assert error["type"] == "invalid_request_error" and error["message"], (what, error)


def _tiny(status: dict) -> dict:
    return next(m for m in status["models"] if m["name"] == "msting-tiny")


def _worker_facts(daemon_home) -> tuple:
    with daemon_home.client() as c:
        model = _tiny(c.get("/v1/status").json())
    return ([(w["pid"], w["restarts"]) for w in model["workers"]], model["restarts"], model["requests_served"])


def test_hostile_bodies_on_every_route_are_400s_and_harm_nothing(daemon_home):
    daemon_home.start()
    before = _worker_facts(daemon_home)
    sent = 0
    with RawConnection(str(daemon_home.socket)) as conn:
        for path, template in ROUTES.items():
            for body, code in _hostile_bodies(template):
                status, _, answer = conn.request("POST", path, body)
                _assert_refused(status, answer, 400, code, (path, body[:60]))
                sent += 1
            # the same keep-alive connection still answers
            status, _, answer = conn.request("GET", "/health")
            assert status == 200 and json.loads(answer)["status"] == "ok"
    assert sent > 9 * 20
    assert _worker_facts(daemon_home) == before  # no worker saw any of it, none restarted
    with daemon_home.client() as c:
        r = c.post("/generate", json={"prompt": "Once", "max_tokens": 3})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3


FIELD_RANGES = [
    ("/generate", {"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ("/generate", {"prompt": "x", "max_tokens": 2**40}, "max_tokens"),
    ("/generate", {"prompt": "x", "seed": 2**32}, "seed"),
    ("/generate", {"prompt": "x", "seed": 0xFFFFFFFF}, "seed"),  # llama.cpp's "random" sentinel
    ("/generate", {"prompt": "x", "seed": -2}, "seed"),
    ("/generate", {"prompt": "x", "seed": 2**63 - 1}, "seed"),
    ("/generate", {"prompt": "x", "temperature": 2.5}, "temperature"),
    ("/generate", {"prompt": "x", "temperature": -0.1}, "temperature"),
    ("/generate", {"prompt": "x", "top_p": 1.5}, "top_p"),
    ("/generate", {"prompt": "x", "stop": ["a"] * 17}, "stop"),
    ("/generate", {"prompt": "x", "model": "m" * 1000}, "model"),
    ("/llm", {"prompt": "x", "max_tokens": -5}, "max_tokens"),
    ("/llm", {"prompt": "x", "temperature": 1e308}, "temperature"),
    ("/models/load", {"timeout": -1}, "timeout"),
    ("/models/load", {"timeout": 1e300}, "timeout"),
    ("/models/unload", {"model": 5}, "model"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "presence_penalty": 2.5}, "presence_penalty"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 2**31}, "max_completion_tokens"),
    ("/v1/chat/completions", {"messages": [{"role": ["user"], "content": "x"}]}, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "n": 2**62}, "n"),
    ("/v1/completions", {"prompt": "x", "frequency_penalty": -3}, "frequency_penalty"),
    ("/v1/completions", {"prompt": "x", "seed": 1.5}, "seed"),
    ("/v1/embeddings", {"input": ["a"] * 2049}, "input"),
    ("/v1/execute", {"prompt": "x", "top_p": -1}, "top_p"),
    ("/v1/profiles/switch", {"profile": "p" * 1000}, "profile"),
]


def test_numbers_outside_each_fields_range_are_400s(daemon_home):
    daemon_home.start()
    before = _worker_facts(daemon_home)
    with RawConnection(str(daemon_home.socket)) as conn:
        for path, body, param in FIELD_RANGES:
            status, _, answer = conn.request("POST", path, json.dumps(body).encode())
            _assert_refused(status, answer, 400, "invalid_parameter", (path, body))
            assert json.loads(answer)["error"]["param"] == param, (path, body, answer)
        # -1 is a random seed, like null; the edges of each range are accepted
        status, _, answer = conn.request("POST", "/generate", json.dumps(
            {"prompt": "x", "max_tokens": 1, "seed": -1, "temperature": 2, "top_p": 0}).encode())
        assert status == 200, answer
        status, _, answer = conn.request("POST", "/v1/completions", json.dumps(
            {"prompt": "x", "max_tokens": 1, "seed": 0xFFFFFFFE, "presence_penalty": -2, "frequency_penalty": 2}).encode())
        assert status == 200, answer
    pids, restarts, served = _worker_facts(daemon_home)
    assert (pids, restarts, served) == (before[0], before[1], before[2] + 2)


def test_oversized_bodies_are_413_and_the_connection_survives(daemon_home):
    daemon_home.start()
    before = _worker_facts(daemon_home)
    big = b'{"prompt": "' + b"x" * MAX_BODY_BYTES + b'"}'
    with RawConnection(str(daemon_home.socket)) as conn:
        for path in ROUTES:
            status, _, answer = conn.request("POST", path, big)  # refused on its Content-Length
            _assert_refused(status, answer, 413, "body_too_large", path)
            assert str(MAX_BODY_BYTES) in json.loads(answer)["error"]["message"]
            # chunked: no length up front, counted as it arrives
            pieces = [big[i:i + 65536] for i in range(0, len(big), 65536)]
            status, _, answer = conn.request("POST", path, chunks=pieces)
            _assert_refused(status, answer, 413, "body_too_large", (path, "chunked"))
            status, _, answer = conn.request("GET", "/health")
            assert status == 200
        # exactly at the limit is parsed (and refused for its content, not its size)
        at_limit = b'{"prompt": "' + b"x" * (MAX_BODY_BYTES - 40) + b'", "bogus": 1}'
        at_limit += b" " * (MAX_BODY_BYTES - len(at_limit))
        status, _, answer = conn.request("POST", "/generate", at_limit)
        _assert_refused(status, answer, 400, "invalid_parameter", "at the limit")
    # a huge Content-Length is refused before a byte of the body is read
    with RawConnection(str(daemon_home.socket)) as conn:
        status, _, answer = conn.request("POST", "/generate", b"", content_length=10**12)
        _assert_refused(status, answer, 413, "body_too_large", "claimed length")
    assert _worker_facts(daemon_home) == before
    with daemon_home.client() as c:
        assert c.post("/generate", json={"prompt": "Once", "max_tokens": 3}).status_code == 200


def test_tcp_keep_alive_survives_hostile_bodies(daemon_home):
    daemon_home.start()
    with daemon_home.tcp_client() as c:  # one pooled keep-alive connection
        for body in (b'{"prompt": "x", "seed": ' + b"9" * 6000 + b"}", b'{"prompt": ' + b"[" * 100_000 + b"}",
                     b'{"prompt": "\\ud800"}', b'{"prompt": "x", "temperature": NaN}'):
            r = c.post("/v1/completions", content=body)
            assert r.status_code == 400 and r.json()["error"]["code"], r.text
            assert c.get("/health").status_code == 200
        assert c.post("/v1/completions", json={"prompt": "Once", "max_tokens": 2}).status_code == 200


def test_websocket_hostile_messages_get_errors_and_the_connection_survives(daemon_home):
    daemon_home.start()
    before = _worker_facts(daemon_home)
    gen = b'{"type": "generate", "id": "h", "prompt": @S@, "max_tokens": 2, "temperature": @N@}'
    with unix_connect(str(daemon_home.socket), uri="ws://localhost/v1/ws", max_size=None) as ws:
        cases = list(_hostile_bodies(gen))
        cases.append((gen.replace(b"@S@", GOOD_S).replace(b"@N@", b"0")[:-1] + b', "seed": 4294967296}', "invalid_parameter"))
        cases.append((b'{"type": "generate", "id": "h", "prompt": "' + b"x" * MAX_BODY_BYTES + b'"}', "body_too_large"))
        cases.append((b'{"type": "cancel", "id": {"a": [1]}}', None))  # an unhashable id: ignored
        for raw, code in cases:
            # binary frames for bytes that are not UTF-8 text; the rest as text, like a browser
            try:
                ws.send(raw.decode("utf-8"))
            except UnicodeDecodeError:
                ws.send(raw)
            if code is None:
                continue
            msg = json.loads(ws.recv(timeout=10))
            assert msg["type"] == "error" and msg["error"]["code"] == code, (raw[:80], msg)
            for leak in LEAKS:
                assert leak not in json.dumps(msg), (raw[:80], msg)
        ws.send(json.dumps({"type": "generate", "id": "ok", "prompt": "Hi", "max_tokens": 3}))
        while True:
            msg = json.loads(ws.recv(timeout=30))
            if msg["type"] in ("done", "error"):
                break
        assert msg["type"] == "done" and msg["id"] == "ok", msg
    pids, restarts, served = _worker_facts(daemon_home)
    assert (pids, restarts, served) == (before[0], before[1], before[2] + 1)
