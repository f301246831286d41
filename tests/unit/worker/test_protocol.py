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
        "error", "cancel", "ping", "pong", "shutdown", "load",
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


def test_encode_refuses_what_json_cannot_carry():
    for fields in ({"prompt": "\ud800"}, {"messages": [{"role": "user", "content": "a\udfffb"}]},
                   {"stop": ["\ud800"]}, {"temperature": float("nan")}, {"temperature": float("inf")},
                   {"seed": 10**6000}):
        with pytest.raises(ProtocolError, match="cannot encode 'generate' frame"):
            encode(MsgType.GENERATE, "r", **fields)
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(ProtocolError, match="cannot encode"):
        encode(MsgType.GENERATE, "r", prompt=deep)


def test_decode_refuses_non_json_numbers_and_deep_nesting():
    for literal in (b"NaN", b"Infinity", b"-Infinity"):
        with pytest.raises(ProtocolError, match="not a JSON number"):
            decode(b'{"v":1,"type":"ping","id":null,"x":' + literal + b"}")
    with pytest.raises(ProtocolError, match="not valid JSON"):
        decode(b'{"v":1,"type":"ping","id":null,"x":' + b"9" * 6000 + b"}")
    with pytest.raises(ProtocolError, match="nested too deeply"):
        decode(b'{"v":1,"type":"ping","id":null,"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}")


def test_protocol_module_is_dependency_free():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(protocol))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    # msting.api.values names JSON values for messages, and imports nothing itself
    assert imported <= {"__future__", "json", "enum", "typing", "msting.api.values"}


# ---- frame field validation (msting.worker.params) --------------------------------------

from msting.worker import params  # noqa: E402
from msting.worker.params import BadRequest, parse_embed, parse_generate, parse_spec  # noqa: E402


def _gen(**fields):
    return parse_generate({"v": 1, "type": "generate", "id": "r", **fields})


def test_generate_defaults_are_backward_compatible():
    out = _gen(prompt="hi")
    assert out == {
        "prompt": "hi", "messages": None, "max_tokens": 256, "temperature": 0.7, "top_p": 0.95,
        "presence_penalty": 0.0, "frequency_penalty": 0.0, "stop": [], "seed": None, "stream": False,
    }


def test_generate_messages():
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "", "name": "x"}]
    out = _gen(messages=msgs, prompt=None, presence_penalty=1, frequency_penalty=-0.5, stop="\n")
    assert out["prompt"] is None
    assert out["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": ""}]
    assert out["presence_penalty"] == 1.0 and out["frequency_penalty"] == -0.5
    assert out["stop"] == ["\n"]


@pytest.mark.parametrize(
    "fields, match",
    [
        ({}, "'prompt' .* or 'messages' .* is required"),
        ({"prompt": "x", "messages": [{"role": "user", "content": "x"}]}, "not both"),
        ({"prompt": 3}, "'prompt' must be a string"),
        ({"messages": []}, "non-empty list"),
        ({"messages": {"role": "user"}}, "non-empty list"),
        ({"messages": ["hi"]}, r"messages\[0\] must be an object"),
        ({"messages": [{"role": "user", "content": "a"}, {"content": "b"}]}, r"messages\[1\]\.role"),
        ({"messages": [{"role": "user", "content": ["parts"]}]}, r"messages\[0\]\.content must be a string"),
        ({"prompt": "x", "presence_penalty": 2.5}, "'presence_penalty' must be between -2 and 2"),
        ({"prompt": "x", "frequency_penalty": "1"}, "'frequency_penalty' must be a number"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ],
)
def test_generate_rejects(fields, match):
    with pytest.raises(BadRequest, match=match):
        _gen(**fields)


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"prompt": "x", "seed": 2**32}, "'seed' must be an integer from -1 to 4294967294"),
        ({"prompt": "x", "seed": 0xFFFFFFFF}, "'seed'"),
        ({"prompt": "x", "seed": -2}, "'seed'"),
        ({"prompt": "x", "seed": 10**30}, "'seed'"),
        ({"prompt": "x", "seed": 1.0}, "'seed'"),
        ({"prompt": "x", "max_tokens": 2**40}, "'max_tokens' must be an integer from 1 to 1048576"),
        ({"prompt": "x", "temperature": float("nan")}, "'temperature'"),
        ({"prompt": "x", "temperature": float("inf")}, "'temperature'"),
        ({"prompt": "x", "temperature": 2.5}, "'temperature' must be between 0 and 2"),
        ({"prompt": "x", "top_p": float("-inf")}, "'top_p'"),
        ({"prompt": "x", "presence_penalty": 10**400}, "'presence_penalty'"),
        ({"prompt": "x", "stop": ["s"] * 17}, "at most 16"),
        ({"prompt": "a\ud800b"}, "'prompt' is not valid Unicode"),
        ({"messages": [{"role": "user", "content": "\udfff"}]}, r"messages\[0\]\.content is not valid Unicode"),
        ({"messages": [{"role": "\ud800", "content": "x"}]}, r"messages\[0\]\.role is not valid Unicode"),
        ({"prompt": "x", "stop": ["ok", "\ud800"]}, r"stop\[1\] is not valid Unicode"),
    ],
)
def test_generate_range_checks(fields, match):
    with pytest.raises(BadRequest, match=match):
        _gen(**fields)


def test_generate_range_edges():
    out = _gen(prompt="x", seed=0xFFFFFFFE, max_tokens=1_048_576, temperature=2, top_p=0, presence_penalty=-2)
    assert out["seed"] == 0xFFFFFFFE and out["max_tokens"] == 1_048_576 and out["temperature"] == 2.0
    assert _gen(prompt="x", seed=-1)["seed"] is None  # -1: a random seed, as null
    assert _gen(prompt="x", seed=0)["seed"] == 0


def test_embed_range_checks():
    for bad, match in ((["a"] * 2049, "at most 2048"), (["ok", "\ud800"], r"input\[1\] is not valid Unicode")):
        with pytest.raises(BadRequest, match=match):
            parse_embed({"type": "embed", "id": "e", "input": bad})


def test_spec_seed():
    assert parse_spec({"path": "p", "seed": -1})["seed"] is None
    assert parse_spec({"path": "p", "seed": 7})["seed"] == 7
    with pytest.raises(BadRequest, match="seed"):
        parse_spec({"path": "p", "seed": 2**40})


def test_generate_needs_an_id():
    with pytest.raises(BadRequest, match="non-empty string 'id'"):
        parse_generate({"v": 1, "type": "generate", "id": None, "prompt": "x"})


def test_embed_frame():
    assert parse_embed({"type": "embed", "id": "e", "input": ["a", "b"]}) == {"inputs": ["a", "b"]}
    for bad in (None, "a", [], [""], ["a", 1]):
        with pytest.raises(BadRequest, match="input"):
            parse_embed({"type": "embed", "id": "e", "input": bad})
    with pytest.raises(BadRequest, match="'id'"):
        parse_embed({"type": "embed", "id": "", "input": ["a"]})


def test_spec():
    spec = parse_spec({"path": "/m.gguf"})
    assert spec == {
        "name": None, "path": "/m.gguf", "n_ctx": 2048, "n_threads": None, "n_gpu_layers": 0,
        "seed": None, "embedding": False, "chat_format": None, "parallel": 1,
    }
    assert parse_spec({"path": "/m.gguf", "parallel": 8, "n_threads": None})["parallel"] == 8
    assert parse_spec({"path": "/m.gguf", "parallel": None})["parallel"] == 1
    spec = parse_spec({"path": "/m.gguf", "n_threads": 0, "embedding": True, "chat_format": "chatml"})
    assert spec["n_threads"] is None and spec["embedding"] is True and spec["chat_format"] == "chatml"
    assert parse_spec({"path": "/m.gguf", "embedding": None, "chat_format": ""})["chat_format"] is None
    for bad, match in [
        ([], "JSON object"), ({}, "'path'"), ({"path": "p", "n_ctx": "big"}, "n_ctx"),
        ({"path": "p", "embedding": 1}, "embedding"), ({"path": "p", "chat_format": 5}, "chat_format"),
        ({"path": "p", "parallel": 0}, "'parallel' must be an integer from 1 to 64, got 0"),
        ({"path": "p", "parallel": 65}, "parallel"), ({"path": "p", "parallel": "4"}, "parallel"),
    ]:
        with pytest.raises(BadRequest, match=match):
            parse_spec(bad)


def _imports(module) -> set[str]:
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(module))
    return {
        n.module if isinstance(n, ast.ImportFrom) else a.name
        for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
        for a in n.names
    }


def test_params_module_is_dependency_free():
    from msting.api import limits

    # params shares its ranges with the HTTP layer and the config through msting.api.limits, which
    # imports nothing itself
    assert _imports(params) <= {"__future__", "typing", "math", "msting.api"}
    assert _imports(limits) <= {"__future__"}


def test_the_engine_defaults_are_the_frames_defaults():
    import inspect

    from msting.worker.engine import Engine

    generate = inspect.signature(Engine.start_generate).parameters
    frame = _gen(prompt="hi")
    for name in ("max_tokens", "temperature", "top_p", "presence_penalty", "frequency_penalty"):
        assert generate[name].default == frame[name], name
    assert inspect.signature(Engine).parameters["n_ctx"].default == parse_spec({"path": "p"})["n_ctx"]
