import hashlib
import os
import subprocess
import sys
from pathlib import Path


from msting.models import builtin
from msting.models.builtin import (
    BUILTIN_NAME,
    BUILTIN_SOURCE,
    BUILTIN_VERSION,
    ensure_builtin_model,
    write_tiny_model,
)
from msting.models.gguf_file import read_gguf_info


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_constants():
    assert BUILTIN_SOURCE == "builtin:tiny"
    assert BUILTIN_NAME == "msting-tiny"
    assert BUILTIN_VERSION == 1


def test_deterministic_bytes(tmp_path: Path, builtin_model_path: Path):
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    write_tiny_model(a)
    write_tiny_model(b)
    assert _sha(a) == _sha(b) == _sha(builtin_model_path)
    assert 800_000 < a.stat().st_size < 1_500_000


def test_metadata(builtin_model_path: Path):
    info = read_gguf_info(builtin_model_path)
    md = info.metadata
    assert info.name == BUILTIN_NAME
    assert md["msting.builtin_version"] == BUILTIN_VERSION
    assert md["tokenizer.ggml.model"] == "llama"
    assert (md["tokenizer.ggml.bos_token_id"], md["tokenizer.ggml.eos_token_id"]) == (1, 2)
    assert md["tokenizer.ggml.unknown_token_id"] == 0
    assert md["tokenizer.ggml.add_bos_token"] is True
    assert info.chat_template.startswith("{% for message in messages %}")
    assert info.n_ctx_train == 2048


def test_vocabulary_shape():
    tokens, scores, types = builtin._build_vocab()
    assert len(tokens) == len(scores) == len(types) == builtin.N_VOCAB
    assert len(set(tokens)) == len(tokens)
    assert tokens[:3] == ["<unk>", "<s>", "</s>"]
    assert tokens[3:259] == [f"<0x{b:02X}>" for b in range(256)]
    assert all(t == 6 for t in types[3:259])  # BYTE
    assert "\u2581the" in tokens and "\u2581people" in tokens
    normal = {t for t, ty in zip(tokens, types) if ty == 1}
    assert len(normal) > 300
    # every "▁word" piece can be reached by SentencePiece merges: all prefixes exist
    for t in normal:
        if t.startswith("\u2581") and len(t) > 2:
            assert t[:-1] in normal, t
    assert all(len(t.encode()) < 32 for t in tokens)  # llama-cpp-python's piece buffer


def test_imports_are_lazy():
    code = (
        "import sys; sys.path.insert(0, %r); import msting.models.builtin; "
        "print('gguf' in sys.modules, 'numpy' in sys.modules)" % str(Path(builtin.__file__).parents[2])
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_ensure_writes_and_is_idempotent(tmp_path: Path):
    models = tmp_path / "models"
    p = ensure_builtin_model(models)
    assert p == models / "msting-tiny.gguf"
    st1 = p.stat()
    digest = _sha(p)
    p2 = ensure_builtin_model(models)
    st2 = p2.stat()
    assert p2 == p
    assert (st1.st_ino, st1.st_mtime_ns) == (st2.st_ino, st2.st_mtime_ns)  # not rewritten
    assert _sha(p) == digest
    assert [x.name for x in models.iterdir()] == ["msting-tiny.gguf"]  # no temp files left


def test_ensure_rewrites_wrong_version(tmp_path: Path):
    import gguf
    import numpy as np

    models = tmp_path
    target = models / "msting-tiny.gguf"
    w = gguf.GGUFWriter(str(target), "llama")
    w.add_uint32("msting.builtin_version", BUILTIN_VERSION + 41)
    w.add_tensor("x", np.zeros(4, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert read_gguf_info(target).metadata["msting.builtin_version"] == BUILTIN_VERSION + 41
    ino = target.stat().st_ino

    p = ensure_builtin_model(models)
    info = read_gguf_info(p)
    assert info.metadata["msting.builtin_version"] == BUILTIN_VERSION
    assert info.name == BUILTIN_NAME
    assert p.stat().st_ino != ino  # replaced atomically, not rewritten in place


def test_ensure_rewrites_corrupt_file(tmp_path: Path, builtin_model_path: Path):
    target = tmp_path / "msting-tiny.gguf"
    target.write_bytes(b"garbage")
    ensure_builtin_model(tmp_path)
    assert _sha(target) == _sha(builtin_model_path)
    assert oct(os.stat(target).st_mode & 0o777) == "0o644"
