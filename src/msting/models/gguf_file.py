"""A pure-Python GGUF header reader (no numpy, no ``gguf`` package).

Used to validate a model file before a worker is spawned and to estimate memory.
It reads only the header (metadata key/values and tensor infos), seeks over array
payloads, and checks that every tensor's data lies inside the file. Garbage input
raises :class:`ModelFileError`, never ``MemoryError`` or a hang: every length read
from the file is checked against the bytes that remain.

GGUF layout (little-endian)::

    magic "GGUF" | u32 version | u64 tensor_count | u64 kv_count
    kv_count   x (string key | u32 value_type | value)
    tensor_count x (string name | u32 n_dims | u64 dims[n_dims] | u32 ggml_type | u64 offset)
    padding to general.alignment (default 32)
    tensor data
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

# llama.cpp's pooling types (LLAMA_POOLING_TYPE_*, the GGUF key <arch>.pooling_type)
POOLING_NAMES = {0: "none", 1: "mean", 2: "cls", 3: "last", 4: "rank"}

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
_MAX_NESTING = 8
# String arrays whose elements are kept (as a list of str) rather than skipped: the
# model card's short lists that capabilities read (e.g. tags such as "code").
KEPT_STRING_ARRAYS = frozenset({"general.tags", "general.languages"})
_MAX_KEPT_ELEMENTS = 256

# GGUF metadata value types: id -> (name, struct format or None)
_VT_UINT8, _VT_INT8, _VT_UINT16, _VT_INT16 = 0, 1, 2, 3
_VT_UINT32, _VT_INT32, _VT_FLOAT32, _VT_BOOL = 4, 5, 6, 7
_VT_STRING, _VT_ARRAY, _VT_UINT64, _VT_INT64, _VT_FLOAT64 = 8, 9, 10, 11, 12

_SCALAR_FORMATS: dict[int, tuple[str, str]] = {
    _VT_UINT8: ("uint8", "<B"),
    _VT_INT8: ("int8", "<b"),
    _VT_UINT16: ("uint16", "<H"),
    _VT_INT16: ("int16", "<h"),
    _VT_UINT32: ("uint32", "<I"),
    _VT_INT32: ("int32", "<i"),
    _VT_FLOAT32: ("float32", "<f"),
    _VT_BOOL: ("bool", "<?"),
    _VT_UINT64: ("uint64", "<Q"),
    _VT_INT64: ("int64", "<q"),
    _VT_FLOAT64: ("float64", "<d"),
}
_TYPE_NAMES = {k: v[0] for k, v in _SCALAR_FORMATS.items()}
_TYPE_NAMES[_VT_STRING] = "string"
_TYPE_NAMES[_VT_ARRAY] = "array"

# ggml tensor types: id -> (name, elements per block, bytes per block)
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 2 + 16),
    3: ("Q4_1", 32, 2 + 2 + 16),
    6: ("Q5_0", 32, 2 + 4 + 16),
    7: ("Q5_1", 32, 2 + 2 + 4 + 16),
    8: ("Q8_0", 32, 2 + 32),
    9: ("Q8_1", 32, 4 + 4 + 32),
    10: ("Q2_K", 256, 2 + 2 + 256 // 16 + 256 // 4),
    11: ("Q3_K", 256, 2 + 256 // 4 + 256 // 8 + 12),
    12: ("Q4_K", 256, 2 + 2 + 256 // 2 + 12),
    13: ("Q5_K", 256, 2 + 2 + 256 // 2 + 256 // 8 + 12),
    14: ("Q6_K", 256, 2 + 256 // 16 + 3 * 256 // 4),
    15: ("Q8_K", 256, 4 + 256 + 256 // 8),
    16: ("IQ2_XXS", 256, 2 + 256 // 4),
    17: ("IQ2_XS", 256, 2 + 256 // 4 + 256 // 32),
    18: ("IQ3_XXS", 256, 2 + 256 // 4 + 256 // 8),
    19: ("IQ1_S", 256, 2 + 256 // 8 + 256 // 16),
    20: ("IQ4_NL", 32, 2 + 16),
    21: ("IQ3_S", 256, 2 + 256 // 4 + 256 // 8 + 256 // 32 + 4),
    22: ("IQ2_S", 256, 2 + 256 // 4 + 256 // 16),
    23: ("IQ4_XS", 256, 2 + 2 + 256 // 2 + 256 // 64),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 256 // 8 + 256 // 16 + 256 // 32),
    30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 2 + 4 * 13),
    35: ("TQ2_0", 256, 2 + 64),
    39: ("MXFP4", 32, 1 + 16),
    40: ("NVFP4", 64, 4 * 1 + 64 // 2),
    41: ("Q1_0", 128, 2 + 128 // 8),
}


class ModelFileError(Exception):
    """A model file is missing, unreadable or not a valid GGUF file."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dims: tuple[int, ...]
    ggml_type: int
    offset: int  # relative to the start of the data section

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.dims:
            n *= d
        return n

    @property
    def type_name(self) -> str:
        known = GGML_TYPES.get(self.ggml_type)
        return known[0] if known else f"type{self.ggml_type}"

    @property
    def n_bytes(self) -> int | None:
        """Size of the tensor's data, or None for an unknown ggml type."""
        known = GGML_TYPES.get(self.ggml_type)
        if known is None:
            return None
        _, block, type_size = known
        return self.n_elements // block * type_size


@dataclass(frozen=True)
class GGUFInfo:
    path: str
    size_bytes: int
    version: int
    tensor_count: int
    metadata: dict[str, Any]
    tensors: tuple[TensorInfo, ...] = field(default=(), repr=False)
    data_offset: int = 0
    alignment: int = DEFAULT_ALIGNMENT

    def _get_int(self, key: str) -> int | None:
        value = self.metadata.get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            return None
        return value

    def _arch_int(self, suffix: str) -> int | None:
        arch = self.arch
        if not arch:
            return None
        return self._get_int(f"{arch}.{suffix}")

    @property
    def arch(self) -> str | None:
        value = self.metadata.get("general.architecture")
        return value if isinstance(value, str) else None

    @property
    def name(self) -> str | None:
        value = self.metadata.get("general.name")
        return value if isinstance(value, str) else None

    @property
    def n_ctx_train(self) -> int | None:
        return self._arch_int("context_length")

    @property
    def block_count(self) -> int | None:
        return self._arch_int("block_count")

    @property
    def embedding_length(self) -> int | None:
        return self._arch_int("embedding_length")

    @property
    def head_count(self) -> int | None:
        return self._arch_int("attention.head_count")

    @property
    def head_count_kv(self) -> int | None:
        kv = self._arch_int("attention.head_count_kv")
        return kv if kv is not None else self.head_count

    @property
    def chat_template(self) -> str | None:
        value = self.metadata.get("tokenizer.chat_template")
        return value if isinstance(value, str) else None

    @property
    def file_type(self) -> int | None:
        """``general.file_type`` (llama.cpp's LLAMA_FTYPE), None when absent."""
        return self._get_int("general.file_type")

    @property
    def pooling(self) -> str | None:
        """The declared pooling type's name (``<arch>.pooling_type``: none, mean, cls,
        last, rank), None when the file declares none."""
        value = self._arch_int("pooling_type")
        if value is None:
            return None
        return POOLING_NAMES.get(value, f"type {value}")

    def strings(self, key: str) -> tuple[str, ...]:
        """A kept string array (:data:`KEPT_STRING_ARRAYS`), or one string, as a tuple;
        () when absent or of another type."""
        value = self.metadata.get(key)
        if isinstance(value, str):
            return (value,)
        if isinstance(value, list):
            return tuple(v for v in value if isinstance(v, str))
        return ()

    @property
    def n_params(self) -> int:
        return sum(t.n_elements for t in self.tensors)


_U64 = struct.Struct("<Q")
_CHUNK = 1 << 20


class _Reader:
    """Sequential little-endian reader over a file, bounds-checked against its size.

    Reads through its own window of up to 1 MiB so that skipping the hundreds of
    thousands of short strings of a big tokenizer stays fast; skips past the window
    cost nothing (the next read seeks).
    """

    def __init__(self, fh: BinaryIO, size: int, path: str) -> None:
        self.fh = fh
        self.size = size
        self.path = path
        self.pos = 0
        self.buf = b""
        self.base = 0  # file offset of buf[0]

    def remaining(self) -> int:
        return self.size - self.pos

    def truncated(self, what: str, need: int) -> ModelFileError:
        return ModelFileError(
            f"{self.path} is truncated: {what} needs {need} bytes at offset {self.pos} "
            f"but the file has {self.size} bytes"
        )

    def corrupt_length(self, what: str, n: int) -> ModelFileError:
        return ModelFileError(
            f"{self.path} is corrupt: {what} claims {n} bytes at offset {self.pos} "
            f"but only {self.remaining()} bytes remain"
        )

    def _fill(self, n: int) -> None:
        """Make buf cover [pos, pos + n)."""
        self.fh.seek(self.pos)
        data = self.fh.read(max(n, _CHUNK))
        self.buf, self.base = data, self.pos
        if len(data) < n:
            raise OSError(f"short read at offset {self.pos}")

    def read(self, n: int, what: str) -> bytes:
        if n < 0 or n > self.remaining():
            raise self.truncated(what, n)
        off = self.pos - self.base
        if off < 0 or off + n > len(self.buf):
            self._fill(n)
            off = 0
        self.pos += n
        return self.buf[off : off + n]

    def skip(self, n: int, what: str) -> None:
        if n < 0 or n > self.remaining():
            raise self.truncated(what, n)
        self.pos += n

    def u32(self, what: str) -> int:
        return struct.unpack("<I", self.read(4, what))[0]

    def u64(self, what: str) -> int:
        return struct.unpack("<Q", self.read(8, what))[0]

    def string(self, what: str) -> str:
        n = self.u64(f"length of {what}")
        if n > self.remaining():
            raise self.corrupt_length(what, n)
        raw = self.read(n, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("utf-8", errors="replace")

    def skip_strings(self, count: int, what: str) -> None:
        """Skip *count* length-prefixed strings (the hot loop for tokenizers)."""
        unpack = _U64.unpack_from
        size = self.size
        pos, base, buf = self.pos, self.base, self.buf
        for _ in range(count):
            off = pos - base
            if off < 0 or off + 8 > len(buf):
                if pos + 8 > size:
                    self.pos = pos
                    raise self.truncated(f"length of {what}", 8)
                self.pos = pos
                self._fill(8)
                base, buf, off = self.base, self.buf, 0
            n = unpack(buf, off)[0]
            pos += 8
            if n > size - pos:
                self.pos = pos
                raise self.corrupt_length(what, n)
            pos += n
        self.pos = pos


def _read_value(r: _Reader, vtype: int, key: str, depth: int = 0) -> Any:
    if vtype in _SCALAR_FORMATS:
        fmt = _SCALAR_FORMATS[vtype][1]
        return struct.unpack(fmt, r.read(struct.calcsize(fmt), f"value of {key!r}"))[0]
    if vtype == _VT_STRING:
        return r.string(f"value of {key!r}")
    if vtype == _VT_ARRAY:
        return _read_array(r, key, depth)
    raise ModelFileError(
        f"{r.path} is corrupt: metadata key {key!r} has unknown value type {vtype}"
    )


def _read_array(r: _Reader, key: str, depth: int) -> dict[str, Any] | list[str]:
    """Read (mostly skip) an array; return only its length and element type, or the
    strings themselves for a short array named in :data:`KEPT_STRING_ARRAYS`."""
    if depth >= _MAX_NESTING:
        raise ModelFileError(f"{r.path} is corrupt: arrays nested too deeply in {key!r}")
    etype = r.u32(f"array type of {key!r}")
    count = r.u64(f"array length of {key!r}")
    if etype in _SCALAR_FORMATS:
        size = struct.calcsize(_SCALAR_FORMATS[etype][1])
        total = count * size
        if total > r.remaining():
            raise ModelFileError(
                f"{r.path} is corrupt: array {key!r} claims {count} elements "
                f"({total} bytes) but only {r.remaining()} bytes remain"
            )
        r.skip(total, f"array {key!r}")
    elif etype == _VT_STRING:
        # each string costs at least its 8-byte length prefix
        if count * 8 > r.remaining():
            raise ModelFileError(
                f"{r.path} is corrupt: string array {key!r} claims {count} elements "
                f"but only {r.remaining()} bytes remain"
            )
        if depth == 0 and key in KEPT_STRING_ARRAYS and count <= _MAX_KEPT_ELEMENTS:
            return [r.string(f"element of {key!r}") for _ in range(count)]
        r.skip_strings(count, f"element of {key!r}")
    elif etype == _VT_ARRAY:
        if count * 12 > r.remaining():  # u32 type + u64 length per nested array
            raise ModelFileError(
                f"{r.path} is corrupt: array {key!r} claims {count} nested arrays "
                f"but only {r.remaining()} bytes remain"
            )
        for _ in range(count):
            _read_array(r, key, depth + 1)
    else:
        raise ModelFileError(
            f"{r.path} is corrupt: array {key!r} has unknown element type {etype}"
        )
    return {"array_len": count, "type": _TYPE_NAMES.get(etype, str(etype))}


def read_gguf_info(path: str | os.PathLike[str]) -> GGUFInfo:
    """Parse and validate the header of the GGUF file at *path*."""
    p = Path(path)
    shown = str(p)
    try:
        fh = open(p, "rb")
    except FileNotFoundError:
        raise ModelFileError(f"{shown} does not exist") from None
    except IsADirectoryError:
        raise ModelFileError(f"{shown} is a directory, not a GGUF file") from None
    except PermissionError:
        raise ModelFileError(f"{shown} is not readable (permission denied)") from None
    except OSError as exc:
        raise ModelFileError(f"{shown} is not readable: {exc.strerror or exc}") from None
    try:
        with fh:
            try:
                st = os.fstat(fh.fileno())
                return _parse(fh, st.st_size, shown)
            except OSError as exc:
                raise ModelFileError(f"{shown} is not readable: {exc.strerror or exc}") from None
    except RecursionError:  # pragma: no cover - guarded by _MAX_NESTING
        raise ModelFileError(f"{shown} is corrupt: nesting too deep") from None


def _parse(fh: BinaryIO, size: int, path: str) -> GGUFInfo:
    r = _Reader(fh, size, path)
    magic = fh.read(4)
    r.pos = len(magic)
    if magic != GGUF_MAGIC:
        if len(magic) < 4:
            raise ModelFileError(f"{path} is not a GGUF file (only {size} bytes long)")
        raise ModelFileError(f"{path} is not a GGUF file (bad magic {magic!r})")
    version = r.u32("version")
    if version not in SUPPORTED_VERSIONS:
        raise ModelFileError(
            f"{path} has unsupported GGUF version {version} "
            f"(supported: {', '.join(map(str, SUPPORTED_VERSIONS))})"
        )
    tensor_count = r.u64("tensor count")
    kv_count = r.u64("metadata count")
    # a KV pair needs at least 8 (key length) + 4 (type) + 1 bytes; a tensor info at
    # least 8 (name length) + 4 (n_dims) + 4 (type) + 8 (offset) bytes
    if kv_count * 13 > r.remaining():
        raise ModelFileError(
            f"{path} is corrupt: header claims {kv_count} metadata entries but only "
            f"{r.remaining()} bytes remain"
        )
    if tensor_count * 24 > r.remaining():
        raise ModelFileError(
            f"{path} is corrupt: header claims {tensor_count} tensors but only "
            f"{r.remaining()} bytes remain"
        )

    metadata: dict[str, Any] = {}
    for i in range(kv_count):
        key = r.string(f"metadata key #{i}")
        vtype = r.u32(f"type of metadata key {key!r}")
        metadata[key] = _read_value(r, vtype, key)

    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if (
        isinstance(alignment, bool)
        or not isinstance(alignment, int)
        or alignment <= 0
        or alignment & (alignment - 1)
    ):
        raise ModelFileError(
            f"{path} is corrupt: general.alignment {alignment!r} is not a power of two"
        )

    tensors: list[TensorInfo] = []
    seen: set[str] = set()
    for i in range(tensor_count):
        name = r.string(f"name of tensor #{i}")
        n_dims = r.u32(f"dimension count of tensor {name!r}")
        if n_dims > MAX_DIMS:
            raise ModelFileError(
                f"{path} is corrupt: tensor {name!r} has {n_dims} dimensions (max {MAX_DIMS})"
            )
        dims = struct.unpack(f"<{n_dims}Q", r.read(8 * n_dims, f"dimensions of tensor {name!r}"))
        ggml_type = r.u32(f"type of tensor {name!r}")
        offset = r.u64(f"offset of tensor {name!r}")
        if name in seen:
            raise ModelFileError(f"{path} is corrupt: duplicate tensor name {name!r}")
        seen.add(name)
        if offset % alignment:
            raise ModelFileError(
                f"{path} is corrupt: tensor {name!r} offset {offset} is not aligned "
                f"to {alignment} bytes"
            )
        known = GGML_TYPES.get(ggml_type)
        if known is not None and dims and dims[0] % known[1]:
            raise ModelFileError(
                f"{path} is corrupt: tensor {name!r} of type {known[0]} has a row of "
                f"{dims[0]} elements, not a multiple of its block size {known[1]}"
            )
        tensors.append(TensorInfo(name, tuple(dims), ggml_type, offset))

    data_offset = r.pos + (-r.pos) % alignment
    for t in tensors:
        n_bytes = t.n_bytes
        if n_bytes is None:
            continue
        end = data_offset + t.offset + n_bytes
        if end > size:
            raise ModelFileError(
                f"{path} is truncated: tensor {t.name!r} ends at byte {end} "
                f"but the file has {size} bytes"
            )

    return GGUFInfo(
        path=path,
        size_bytes=size,
        version=version,
        tensor_count=tensor_count,
        metadata=metadata,
        tensors=tuple(tensors),
        data_offset=data_offset,
        alignment=alignment,
    )
