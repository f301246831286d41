"""The strict request path: the body parser (msting.http.body), field ranges
(msting.http.errors.Fields and msting.api.limits), and the ErrorGuard that turns an
unexpected exception into a 500 with an error id without dropping the connection."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time

from types import SimpleNamespace

import pytest

from msting.api.errors import InvalidRequest
from msting.http.errors import status_of
from msting.api import limits
from msting.http.body import parse_json, parse_object
from msting.http.errors import Fields
from msting.api.limits import INT64, MAX_BODY_BYTES, MAX_DEPTH


def refused(data, status=400) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        parse_object(data)
    assert status_of(info.value) == (status, "invalid_request_error"), info.value.message
    for leak in ("Traceback", "RecursionError", "ValueError", "UnicodeEncodeError", "maximum recursion"):
        assert leak not in info.value.message
    return info.value


# ---- what is accepted ------------------------------------------------------------


def test_ordinary_bodies_parse():
    body = {"prompt": "héllo ✓ 😀", "max_tokens": 5, "temperature": 0.5, "stop": ["\n"], "stream": False, "seed": None}
    assert parse_object(json.dumps(body).encode()) == body
    assert parse_object(json.dumps(body, ensure_ascii=False)) == body  # str too (WebSocket text)
    assert parse_object(b'{"a": "\\ud83d\\ude00"}') == {"a": "😀"}  # a surrogate pair is one character
    assert parse_object(b'{"a": "\\\\ud800"}') == {"a": "\\ud800"}  # an escaped backslash, not an escape
    assert parse_object(b'  {"a": 1}\n') == {"a": 1}
    assert parse_object(b'{"a": 1e-400}') == {"a": 0.0}  # underflow is finite
    assert parse_object(b'{"a": 1.7976931348623157e308}')["a"] == 1.7976931348623157e308
    assert parse_json(b"[1, 2]") == [1, 2] and parse_json(b'"x"') == "x"


def test_integer_edges_of_64_bits():
    lo, hi = INT64
    assert parse_object(f'{{"a": [{lo}, {hi}]}}'.encode()) == {"a": [lo, hi]}
    for n in (hi + 1, lo - 1, 2**64, -(2**64)):
        err = refused(f'{{"a": {{"b": [0, {n}]}}}}'.encode())
        assert err.code == "invalid_number" and "$.a.b[1]" in err.message
    assert "digits" in refused(b'{"seed": ' + b"9" * 6000 + b"}").message
    assert refused(b'{"seed": -' + b"9" * 6000 + b"}").code == "invalid_number"
    assert refused(b'{"seed": ' + b"9" * 300 + b"}").code == "invalid_number"


def test_depth_limit():
    ok = b'{"a":' * (MAX_DEPTH - 1) + b"[]" + b"}" * (MAX_DEPTH - 1)
    parse_object(ok)  # exactly MAX_DEPTH levels
    deeper = b'{"a":' * MAX_DEPTH + b"[]" + b"}" * MAX_DEPTH
    err = refused(deeper)
    assert err.code == "nesting_too_deep" and str(MAX_DEPTH) in err.message and "$.a.a" in err.message
    for n in (1000, 100_000):
        assert refused(b'{"a":' + b"[" * n + b"]" * n + b"}").code == "nesting_too_deep"
        assert refused(b'{"a":' * n + b"1" + b"}" * n).code == "nesting_too_deep"
        assert refused(b'{"a":' + b"[" * n + b"}").code in ("nesting_too_deep", "invalid_json")  # unterminated


# ---- what is refused -------------------------------------------------------------


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400", b"1" * 400 + b".5",
                                     b"1e99999999999999999999"])
def test_non_finite_numbers(literal):
    assert refused(b'{"temperature": ' + literal + b"}").code == "invalid_number"
    assert refused(b'{"a": [1, {"b": ' + literal + b"}]}").code == "invalid_number"


@pytest.mark.parametrize("raw", [
    b'{"a": "\\ud800"}', b'{"a": "\\udfff"}', b'{"a": "x\\ud800y"}', b'{"a": "\\ud800\\u0041"}',
    b'{"a": "\\ud800\\ud800"}', b'{"a": "\\udc00\\ud800"}', b'{"\\ud800": 1}', b'{"a": ["\\udbff"]}',
    b'{"a": "\xff"}', b'{"a": "\xc0\xaf"}', b'{"a": "\xed\xa0\x80"}', b'{"a": "caf\xe9"}', b'{"\xfe": 1}',
    b'{"a": "\xf4\x90\x80\x80"}',  # beyond U+10FFFF
])
def test_invalid_unicode(raw):
    assert refused(raw).code == "invalid_unicode"


def test_invalid_unicode_in_a_str():
    assert refused('{"a": "\ud800"}').code == "invalid_unicode"


def test_lone_surrogate_message_names_the_byte():
    err = refused(b'{"prompt": "ab\\ud800c"}')
    assert "surrogate" in err.message and "byte 14" in err.message


@pytest.mark.parametrize("raw, code", [
    (b"", "invalid_json"), (b"   \n", "invalid_json"), (b"{not json", "invalid_json"), (b'{"a": 1} x', "invalid_json"),
    (b'{"a": 1,}', "invalid_json"), (b"[1]", "invalid_body"), (b'"x"', "invalid_body"), (b"null", "invalid_body"),
    (b"\xef\xbb\xbf{}", "invalid_json"), (b"NaN", "invalid_number"), (b"1e400", "invalid_number"),
])
def test_malformed_and_non_objects(raw, code):
    assert refused(raw).code == code


def test_size_limit():
    at_limit = b'{"a": "' + b"x" * (MAX_BODY_BYTES - 9) + b'"}'
    assert len(at_limit) == MAX_BODY_BYTES
    assert len(parse_object(at_limit)["a"]) == MAX_BODY_BYTES - 9
    err = refused(at_limit + b" ", status=413)
    assert err.code == "body_too_large" and str(MAX_BODY_BYTES) in err.message


def test_rejecting_hostile_bodies_costs_less_than_accepting_one_large_body():
    """No hostile body makes the parser slow: rejecting all of these takes less than
    parsing one ordinary body of the maximum size (measured about 0.5x on 2 cores; a
    ratio in the same run, median of interleaved rounds, so the machine's load cancels)."""
    hostile = [b'{"a": NaN}', b'{"a": 1e400}', b'{"a": "\\ud800"}', b'{"a": "\xff"}', b'{"a": ' + b"9" * 6000 + b"}",
               b"[" * 100_000 + b"]" * 100_000, b'{"a": 18446744073709551616}']
    large = json.dumps({"prompt": "x" * (MAX_BODY_BYTES - 100)}).encode()
    ratios = []
    for _ in range(15):
        t0 = time.perf_counter()
        for raw in hostile:
            with pytest.raises(InvalidRequest):
                parse_object(raw)
        t1 = time.perf_counter()
        parse_object(large)
        t2 = time.perf_counter()
        ratios.append((t1 - t0) / (t2 - t1))
    ratios.sort()
    assert ratios[len(ratios) // 2] < 3.0, ratios


# ---- field ranges ----------------------------------------------------------------


def test_fields_ranges_and_status():
    f = Fields({"max_tokens": 0, "temperature": 2.5, "seed": 2**32, "top_p": 0.5, "n": True, "model": "m" * 300}, 
               {"max_tokens", "temperature", "seed", "top_p", "n", "model"})
    for call, key in [(lambda: f.integer("max_tokens", None, limits.MAX_TOKENS), "max_tokens"),
                      (lambda: f.number("temperature", None, limits.TEMPERATURE), "temperature"),
                      (lambda: f.integer("seed", None, limits.SEED), "seed"),
                      (lambda: f.integer("n", 1, limits.N), "n"),
                      (lambda: f.string("model", max_chars=limits.MAX_NAME_CHARS), "model")]:
        with pytest.raises(InvalidRequest) as info:
            call()
        assert status_of(info.value)[0] == 400 and info.value.code == "invalid_parameter"
        assert info.value.details["param"] == key
    assert f.number("top_p", None, limits.TOP_P) == 0.5
    assert f.integer("missing", 7, limits.MAX_TOKENS) == 7


def test_unknown_keys_message_is_bounded():
    body = {f"k{i}" * 50: i for i in range(10_000)}
    with pytest.raises(InvalidRequest) as info:
        Fields(body, {"prompt"})
    assert status_of(info.value)[0] == 400 and len(info.value.message) < 600 and "more" in info.value.message


def test_limits_are_coherent():
    from msting.worker.protocol import MAX_FRAME_BYTES

    assert MAX_BODY_BYTES < MAX_FRAME_BYTES
    assert limits.SEED == (-1, 2**32 - 2) and limits.RANDOM_SEED == -1
    for lo, hi in limits.NUMERIC_FIELDS.values():
        assert lo <= hi


# ---- through the real app: the guard ------------------------------------------------


class _BrokenControl:
    """Enough of a Control for build_app: every call that reaches it is a bug."""

    def health(self):
        raise RuntimeError("secret detail of the failure")

    def status(self):
        raise KeyError("another secret")


def _raw(path: str):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(path)
    return sock


def _exchange(sock, request: bytes) -> tuple[int, bytes]:
    sock.sendall(request)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    status = int(head.split()[1])
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(rest) < length:
        rest += sock.recv(65536)
    return status, rest[:length]


@pytest.fixture
def served_app(tmp_path):
    import uvicorn

    from msting.http.app import build_app
    from msting.http.security import SecurityPolicy

    app = build_app(SimpleNamespace(), _BrokenControl(), security=SecurityPolicy())
    path = str(tmp_path / "s.sock")
    server = uvicorn.Server(uvicorn.Config(app, uds=path, lifespan="off", log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    yield path
    server.should_exit = True
    thread.join(10)


def test_an_unexpected_error_is_a_500_with_an_error_id_and_the_connection_survives(served_app, caplog):
    caplog.set_level(logging.ERROR, logger="msting.http")
    sock = _raw(served_app)
    try:
        get = b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n"
        status, body = _exchange(sock, get)
        assert status == 500
        error = json.loads(body)["error"]
        assert error["code"] == "internal_error" and error["type"] == "server_error"
        assert "secret" not in body.decode() and "RuntimeError" not in body.decode()
        error_id = error["error_id"]
        assert error_id.startswith("err-") and error_id in error["message"] and "daemon log" in error["message"]
        # the operator finds the id, with the traceback, in the log
        logged = [r for r in caplog.records if error_id in r.getMessage()]
        assert logged and logged[0].exc_info is not None and "secret detail" in logged[0].getMessage()
        # the same keep-alive connection answers the next requests
        status, body = _exchange(sock, b"GET /v1/status HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert status == 500 and json.loads(body)["error"]["error_id"] != error_id
        status, body = _exchange(sock, b"POST /generate HTTP/1.1\r\nHost: localhost\r\nContent-Length: 28\r\n\r\n"
                                       b'{"prompt": "x", "seed": NaN}')
        assert status == 400 and json.loads(body)["error"]["code"] == "invalid_number"
        status, body = _exchange(sock, b"GET /nowhere HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert status == 404
    finally:
        sock.close()


def test_hostile_bodies_on_the_real_app_never_reach_the_service(served_app):
    sock = _raw(served_app)
    try:
        for path in ("/generate", "/llm", "/models/load", "/models/unload", "/v1/chat/completions", "/v1/completions",
                     "/v1/embeddings", "/v1/execute", "/v1/profiles/switch"):
            for body, code in [(b'{"a": "\\ud800"}', "invalid_unicode"), (b"[" * 100_000, "nesting_too_deep"),
                               (b'{"a": ' + b"7" * 6000 + b"}", "invalid_number"), (b'{"a": Infinity}', "invalid_number")]:
                request = f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
                status, answer = _exchange(sock, request)
                assert status == 400 and json.loads(answer)["error"]["code"] == code, (path, body[:40], answer)
    finally:
        sock.close()
