"""Daemon <-> worker wire protocol: newline-delimited JSON frames.

Shared by the daemon and the worker process; dependency-free on purpose (json and
enum only) so that importing it is cheap on both sides.

Every frame is one JSON object on one line with at least::

    {"v": 1, "type": "<msg type>", "id": "<request id>" | null, ...fields}

See docs/architecture.md for the fields of each frame type.
"""

from __future__ import annotations

import json
from enum import Enum
from typing import Any

from msting.api.values import json_kind

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 16 * 1024 * 1024

# Worker process exit codes.
EXIT_OK = 0
EXIT_BOOT_ERROR = 3


class MsgType(str, Enum):
    HELLO = "hello"
    READY = "ready"
    GENERATE = "generate"
    EMBED = "embed"
    TOKEN = "token"
    DONE = "done"
    ERROR = "error"
    CANCEL = "cancel"
    PING = "ping"
    PONG = "pong"
    SHUTDOWN = "shutdown"
    LOAD = "load"  # to a spare worker: {spec}


_KNOWN_TYPES = frozenset(t.value for t in MsgType)
_RESERVED = frozenset({"v", "type", "id"})


class ProtocolError(Exception):
    """A frame could not be encoded or decoded."""


def encode(type: MsgType | str, id: str | None = None, **fields: Any) -> bytes:
    """Encode one frame as compact JSON terminated by a newline."""
    type_value = type.value if isinstance(type, MsgType) else str(type)
    if type_value not in _KNOWN_TYPES:
        raise ProtocolError(f"unknown frame type {type_value!r}")
    if id is not None and not isinstance(id, str):
        raise ProtocolError(f"frame id must be a string or None, not {id.__class__.__name__}")
    clash = _RESERVED.intersection(fields)
    if clash:
        raise ProtocolError(f"field name(s) {sorted(clash)} are reserved")
    frame: dict[str, Any] = {"v": PROTOCOL_VERSION, "type": type_value, "id": id}
    frame.update(fields)
    try:
        data = json.dumps(frame, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        out = data.encode("utf-8") + b"\n"
    except UnicodeEncodeError as exc:  # a lone surrogate in a string
        raise ProtocolError(f"cannot encode {type_value!r} frame: a string is not valid Unicode "
                            f"(a lone surrogate at character {exc.start})") from None
    except (TypeError, ValueError, RecursionError) as exc:  # also non-finite floats, cycles
        raise ProtocolError(f"cannot encode {type_value!r} frame: {exc}") from None
    if len(out) > MAX_FRAME_BYTES:
        raise ProtocolError(
            f"{type_value!r} frame is {len(out)} bytes, over the {MAX_FRAME_BYTES}-byte limit"
        )
    return out


def decode(line: bytes) -> dict[str, Any]:
    """Decode and validate one frame (with or without its trailing newline)."""
    if not isinstance(line, (bytes, bytearray, memoryview)):
        raise ProtocolError(f"frame must be bytes, not {line.__class__.__name__}")
    if len(line) > MAX_FRAME_BYTES:
        raise ProtocolError(
            f"frame is {len(line)} bytes, over the {MAX_FRAME_BYTES}-byte limit"
        )
    raw = bytes(line).rstrip(b"\r\n")
    if not raw.strip():
        raise ProtocolError("empty frame")
    try:
        frame = json.loads(raw, parse_constant=_refuse_constant)
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"frame is not valid UTF-8: {exc}") from None
    except ValueError as exc:  # also integers of more than 4300 digits
        raise ProtocolError(f"frame is not valid JSON: {exc}") from None
    except RecursionError:
        raise ProtocolError("frame is nested too deeply") from None
    if not isinstance(frame, dict):
        raise ProtocolError(f"frame must be a JSON object, not {json_kind(frame)}")
    if "v" not in frame:
        raise ProtocolError("frame has no protocol version 'v'")
    version = frame["v"]
    if isinstance(version, bool) or version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"unsupported protocol version {version!r} (this side speaks {PROTOCOL_VERSION})"
        )
    ftype = frame.get("type")
    if not isinstance(ftype, str):
        raise ProtocolError(f"frame 'type' must be a string, got {ftype!r}")
    if ftype not in _KNOWN_TYPES:
        raise ProtocolError(f"unknown frame type {ftype!r}")
    if "id" not in frame:
        raise ProtocolError(f"{ftype!r} frame has no 'id' key")
    fid = frame["id"]
    if fid is not None and not isinstance(fid, str):
        raise ProtocolError(f"{ftype!r} frame 'id' must be a string or null, got {fid!r}")
    return frame


def _refuse_constant(name: str) -> Any:
    # NaN, Infinity and -Infinity: Python's json reads them, JSON has no such numbers
    raise ValueError(f"{name} is not a JSON number")
