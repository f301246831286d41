import random
import struct
import time
from pathlib import Path

import pytest

from msting.models.gguf_file import GGML_TYPES, GGUFInfo, ModelFileError, read_gguf_info


def test_reads_builtin_model(builtin_model_path: Path):
    info = read_gguf_info(builtin_model_path)
    assert isinstance(info, GGUFInfo)
    assert info.path == str(builtin_model_path)
    assert info.size_bytes == builtin_model_path.stat().st_size
    assert info.version == 3
    assert info.arch == "llama"
    assert info.name == "msting-tiny"
    assert info.metadata["msting.builtin_version"] == 1
    assert info.n_ctx_train == 2048
    assert info.block_count == 4
    assert info.embedding_length == 64
    assert info.head_count == 4
    assert info.head_count_kv == 4
    assert "<|im_start|>" in info.chat_template
    assert info.metadata["tokenizer.ggml.model"] == "llama"
    assert info.metadata["tokenizer.ggml.tokens"] == {"array_len": 640, "type": "string"}
    assert info.metadata["tokenizer.ggml.scores"] == {"array_len": 640, "type": "float32"}
    assert info.tensor_count == len(info.tensors) == 2 + 1 + 4 * 9
    assert info.n_params == sum(t.n_elements for t in info.tensors) > 250_000
    # 2 (K, V) * 4 blocks * (64 / 4 * 4) * 2 bytes
    assert info.data_offset % info.alignment == 0
    emb = next(t for t in info.tensors if t.name == "token_embd.weight")
    assert emb.dims == (64, 640) and emb.type_name == "F32" and emb.n_bytes == 64 * 640 * 4


def test_matches_gguf_package(builtin_model_path: Path):
    import gguf
    reader = gguf.GGUFReader(str(builtin_model_path))
    info = read_gguf_info(builtin_model_path)
    assert [t.name for t in reader.tensors] == [t.name for t in info.tensors]
    for rt, t in zip(reader.tensors, info.tensors):
        assert tuple(int(d) for d in rt.shape) == t.dims
        assert int(rt.tensor_type) == t.ggml_type
        assert int(rt.data_offset) == info.data_offset + t.offset
    # and our block-size table agrees with gguf's where both know the type
    for qtype, (block, size) in gguf.GGML_QUANT_SIZES.items():
        if int(qtype) in GGML_TYPES:
            assert GGML_TYPES[int(qtype)][1:] == (block, size), qtype


def test_random_bytes_bad_magic(tmp_path: Path):
    p = tmp_path / "junk.gguf"
    p.write_bytes(b"PK\x03\x04" + random.Random(1).randbytes(4096))
    with pytest.raises(ModelFileError, match=r"is not a GGUF file \(bad magic b'PK\\x03\\x04'\)"):
        read_gguf_info(p)


def test_tiny_and_empty_files(tmp_path: Path):
    p = tmp_path / "empty.gguf"
    p.write_bytes(b"")
    with pytest.raises(ModelFileError, match="not a GGUF file"):
        read_gguf_info(p)
    p.write_bytes(b"GGUF")
    with pytest.raises(ModelFileError, match="truncated"):
        read_gguf_info(p)


def test_truncated_copy(builtin_model_path: Path, tmp_path: Path):
    data = builtin_model_path.read_bytes()
    p = tmp_path / "cut.gguf"
    p.write_bytes(data[: len(data) - 1000])
    with pytest.raises(ModelFileError) as err:
        read_gguf_info(p)
    msg = str(err.value)
    assert "is truncated: tensor 'output.weight' ends at byte" in msg
    assert f"but the file has {len(data) - 1000} bytes" in msg


def test_truncated_inside_header(builtin_model_path: Path, tmp_path: Path):
    data = builtin_model_path.read_bytes()
    for cut in (10, 30, 200, 3000, 9000):
        p = tmp_path / f"cut{cut}.gguf"
        p.write_bytes(data[:cut])
        with pytest.raises(ModelFileError, match="truncated|corrupt"):
            read_gguf_info(p)


def test_bad_version(tmp_path: Path):
    p = tmp_path / "v9.gguf"
    p.write_bytes(b"GGUF" + struct.pack("<IQQ", 9, 0, 0))
    with pytest.raises(ModelFileError, match="unsupported GGUF version 9"):
        read_gguf_info(p)


def test_missing_file(tmp_path: Path):
    with pytest.raises(ModelFileError, match="does not exist"):
        read_gguf_info(tmp_path / "nope.gguf")


def test_directory(tmp_path: Path):
    with pytest.raises(ModelFileError, match="is a directory"):
        read_gguf_info(tmp_path)


def _header(kvs: bytes, n_kv: int, n_tensors: int = 0) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv) + kvs


def _gstr(s: bytes) -> bytes:
    return struct.pack("<Q", len(s)) + s


@pytest.mark.parametrize(
    "blob, match",
    [
        # metadata count far beyond what the file could hold
        (_header(b"", 2**62), "claims"),
        # tensor count far beyond what the file could hold
        (_header(b"", 0, 2**60), "claims"),
        # key length of 2**63
        (_header(struct.pack("<Q", 2**63), 1), "claims"),
        # string value claiming 1 TB
        (_header(_gstr(b"k") + struct.pack("<IQ", 8, 2**40), 1), "claims"),
        # array of 2**61 uint64 values
        (_header(_gstr(b"k") + struct.pack("<IIQ", 9, 10, 2**61), 1), "claims"),
        # array of 2**60 strings
        (_header(_gstr(b"k") + struct.pack("<IIQ", 9, 8, 2**60), 1), "claims"),
        # unknown value type
        (_header(_gstr(b"k") + struct.pack("<I", 77), 1), "unknown value type 77"),
        # unknown array element type
        (_header(_gstr(b"k") + struct.pack("<IIQ", 9, 77, 1), 1), "unknown element type"),
        # deeply nested arrays
        (_header(_gstr(b"k") + struct.pack("<I", 9) + struct.pack("<IQ", 9, 1) * 20, 1), "nested too deeply"),
        # bad alignment
        (_header(_gstr(b"general.alignment") + struct.pack("<II", 4, 3), 1), "not a power of two"),
    ],
)
def test_garbage_headers_fail_fast(tmp_path: Path, blob: bytes, match: str):
    p = tmp_path / "bad.gguf"
    p.write_bytes(blob + b"\0" * 64)
    t0 = time.perf_counter()
    with pytest.raises(ModelFileError, match=match):
        read_gguf_info(p)
    assert time.perf_counter() - t0 < 1.0


def test_tensor_beyond_end_and_bad_dims(tmp_path: Path):
    tensor = _gstr(b"w") + struct.pack("<I", 2) + struct.pack("<QQ", 64, 64) + struct.pack("<IQ", 0, 0)
    p = tmp_path / "t.gguf"
    p.write_bytes(_header(tensor, 0, 1) + b"\0" * 100)
    with pytest.raises(ModelFileError, match="is truncated: tensor 'w' ends at byte"):
        read_gguf_info(p)
    bad = _gstr(b"w") + struct.pack("<I", 9) + b"\0" * 100
    p.write_bytes(_header(bad, 0, 1))
    with pytest.raises(ModelFileError, match="9 dimensions"):
        read_gguf_info(p)
    # unknown ggml types skip the size check
    unknown = _gstr(b"w") + struct.pack("<I", 1) + struct.pack("<Q", 10**9) + struct.pack("<IQ", 250, 0)
    p.write_bytes(_header(unknown, 0, 1) + b"\0" * 64)
    info = read_gguf_info(p)
    assert info.tensors[0].n_bytes is None and info.n_params == 10**9


def test_random_garbage_never_crashes(tmp_path: Path, builtin_model_path: Path):
    """Flip bytes in the header of a real model: always ModelFileError or success."""
    data = bytearray(builtin_model_path.read_bytes()[:20000])
    rng = random.Random(42)
    p = tmp_path / "fuzz.gguf"
    for _ in range(200):
        blob = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            blob[rng.randrange(4, 17400)] = rng.randrange(256)
        p.write_bytes(bytes(blob))
        try:
            read_gguf_info(p)
        except ModelFileError:
            pass


def test_stories260k(stories_model_path: Path):
    t0 = time.perf_counter()
    info = read_gguf_info(stories_model_path)
    assert time.perf_counter() - t0 < 0.5
    assert info.arch == "llama"
    assert info.size_bytes == 1_185_376
    assert info.block_count == 5
    assert info.embedding_length == 64
    assert info.head_count == 8
    assert info.head_count_kv == 4
    assert info.n_ctx_train == 2048
    assert info.chat_template is None
    assert info.metadata["tokenizer.ggml.tokens"]["array_len"] == 512
    assert info.tensor_count == 48
    assert 250_000 < info.n_params < 300_000
    # 2 * 5 * (64 / 8 * 4) * 2
