import json

import pytest

from msting.worker import protocol
from msting.worker.protocol import (
    EXIT_BOOT_ERROR,
    EXIT_OK,
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    MsgType,
    ProtocolError,
    decode,
    encode,
)


def test_constants():
    assert PROTOCOL_VERSION == 1
    assert MAX_FRAME_BYTES == 16 * 1024 * 1024
    assert EXIT_OK == 0
    assert EXIT_BOOT_ERROR == 3
    assert {t.value for t in MsgType} == {
        "hello", "ready", "generate", "embed", "token", "done",
        "error", "cancel", "ping", "pong", "shutdown",
    }
    assert MsgType.PING == "ping"


def test_roundtrip():
    raw = encode(MsgType.GENERATE, "r1", prompt="héllo ✓", max_tokens=5, stop=["\n"], stream=True)
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1
    assert b" " not in raw.split(b'"prompt"')[0]  # compact separators
    frame = decode(raw)
    assert frame == {
        "v": 1, "type": "generate", "id": "r1",
        "prompt": "héllo ✓", "max_tokens": 5, "stop": ["\n"], "stream": True,
    }
    assert decode(raw.rstrip(b"\n")) == frame


def test_encode_accepts_string_type_and_null_id():
    frame = decode(encode("pong", None, busy=False, busy_since=None, last_token_at=None))
    assert frame["type"] == "pong" and frame["id"] is None and frame["busy"] is False


def test_encode_rejects_bad_input():
    with pytest.raises(ProtocolError, match="unknown frame type"):
        encode("nope")
    with pytest.raises(ProtocolError, match="reserved"):
        encode(MsgType.TOKEN, "r", v=2)
    with pytest.raises(ProtocolError, match="cannot encode"):
        encode(MsgType.TOKEN, "r", text=object())
    with pytest.raises(ProtocolError, match="limit"):
        encode(MsgType.DONE, "r", text="x" * MAX_FRAME_BYTES)


def _line(obj) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def test_bad_version():
    with pytest.raises(ProtocolError, match="unsupported protocol version 2"):
        decode(_line({"v": 2, "type": "ping", "id": None}))
    with pytest.raises(ProtocolError, match="no protocol version"):
        decode(_line({"type": "ping", "id": None}))
    with pytest.raises(ProtocolError, match="version"):
        decode(_line({"v": True, "type": "ping", "id": None}))


def test_unknown_type():
    with pytest.raises(ProtocolError, match="unknown frame type 'explode'"):
        decode(_line({"v": 1, "type": "explode", "id": None}))
    with pytest.raises(ProtocolError, match="'type' must be a string"):
        decode(_line({"v": 1, "type": 5, "id": None}))


def test_missing_or_bad_id():
    with pytest.raises(ProtocolError, match="no 'id'"):
        decode(_line({"v": 1, "type": "ping"}))
    with pytest.raises(ProtocolError, match="'id' must be a string or null"):
        decode(_line({"v": 1, "type": "ping", "id": 7}))


def test_oversize():
    big = b'{"v":1,"type":"token","id":"r","text":"' + b"x" * MAX_FRAME_BYTES + b'"}\n'
    with pytest.raises(ProtocolError, match="over the 16777216-byte limit"):
        decode(big)


def test_non_object_and_garbage():
    with pytest.raises(ProtocolError, match="must be a JSON object, not an array"):
        decode(b"[1, 2]\n")
    with pytest.raises(ProtocolError, match="not a string"):
        decode(b'"ping"\n')
    with pytest.raises(ProtocolError, match="not valid JSON"):
        decode(b"{nope\n")
    with pytest.raises(ProtocolError, match="empty"):
        decode(b"\n")
    with pytest.raises(ProtocolError, match="UTF-8|JSON"):
        decode(b'{"v":1,"type":"ping","id":"\xff"}\n')
    with pytest.raises(ProtocolError, match="must be bytes"):
        decode("{}")  # type: ignore[arg-type]


def test_protocol_module_is_dependency_free():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(protocol))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported <= {"__future__", "json", "enum", "typing"}
