"""msting.config.profiles.checks: a profile's model files (GGUF checks) and memory estimates."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from config_testing import MINIMAL, QWEN, parse_yaml

from msting.config.errors import ConfigError
from msting.config.paths import Paths
from msting.config.profiles.checks import check_files, estimate_profile
from msting.config.profiles.discovery import shipped_profiles_dir
from msting.config.profiles.schema import load_profile


# ------------------------------------------------------------------- shipped examples


def test_shipped_small_instruct_without_the_file_is_a_clear_problem(home: Path, paths: Paths, builtin_model_path: Path) -> None:
    p = load_profile(shipped_profiles_dir() / "small-instruct.yaml")
    problems = check_files(p, paths.models_dir)
    expected = home / "models" / "qwen2.5-0.5b-instruct-q4_k_m.gguf"
    assert [pr.key for pr in problems] == [f"models.{QWEN}.source"]
    msg = problems[0].message
    assert msg.startswith(f"{expected} does not exist")
    assert "download the model" in msg
    # with the file in place (any real GGUF will do for the check), nothing is left
    expected.parent.mkdir()
    shutil.copy(builtin_model_path, expected)
    assert check_files(p, paths.models_dir) == []


def test_shipped_embeddings(home: Path, paths: Paths) -> None:
    p = load_profile(shipped_profiles_dir() / "embeddings.yaml")
    types = {n: m.type for n, m in p.models.items()}
    assert types == {"msting-tiny": "llm", "tiny-embed": "embeddings"}
    assert p.default_model == "msting-tiny"
    assert not p.models["tiny-embed"].always_ready
    assert check_files(p, paths.models_dir) == []


# ------------------------------------------------------------------------ model files


def test_builtin_resolves_through_ensure_builtin_model(paths: Paths) -> None:
    p = parse_yaml(MINIMAL)
    target = paths.models_dir / "msting-tiny.gguf"
    assert not target.exists()
    assert check_files(p, paths.models_dir) == []
    assert target.is_file()


def test_file_problems_each_name_model_and_path(tmp_path: Path, paths: Paths, builtin_model_path: Path) -> None:
    missing = tmp_path / "missing.gguf"
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(os.urandom(4096))
    truncated = tmp_path / "truncated.gguf"
    data = builtin_model_path.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    folder = tmp_path / "adir.gguf"
    folder.mkdir()
    good = tmp_path / "good.gguf"
    shutil.copy(builtin_model_path, good)
    p = parse_yaml(
        f"""
        default_model: good
        models:
          good: {{source: {good}}}
          tiny: {{source: builtin:tiny}}
          missing: {{source: {missing}}}
          garbage: {{source: {garbage}}}
          truncated: {{source: {truncated}}}
          folder: {{source: {folder}}}
          again: {{source: {garbage}}}
        """
    )
    problems = {pr.key: pr.message for pr in check_files(p, paths.models_dir)}
    assert set(problems) == {f"models.{n}.source" for n in ("missing", "garbage", "truncated", "folder", "again")}
    assert problems["models.missing.source"] == (
        f"{missing} does not exist (download the model, or set models.missing.source to the path of a GGUF file)"
    )
    assert problems["models.garbage.source"].startswith(f"{garbage} is not a GGUF file (bad magic")
    assert problems["models.again.source"] == problems["models.garbage.source"]
    assert problems["models.truncated.source"].startswith(f"{truncated} is truncated: ")
    assert problems["models.folder.source"] == f"{folder} is a directory, not a GGUF file"


def _write_gguf(path: Path, arch: str, pooling: int | None) -> None:
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_embedding_length(8)
    w.add_head_count(2)
    if pooling is not None:
        w.add_pooling_type(gguf.PoolingType(pooling))
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_model_type_must_suit_the_file(tmp_path: Path, paths: Paths) -> None:
    embedder, reranker = tmp_path / "embedder.gguf", tmp_path / "reranker.gguf"
    _write_gguf(embedder, "bert", 1)
    _write_gguf(reranker, "bert", 4)
    p = parse_yaml(
        f"""
        default_model: chat
        models:
          chat: {{source: {embedder}}}
          rank: {{source: {reranker}, type: embeddings}}
          embed: {{source: {embedder}, type: embeddings}}
        """
    )
    assert [str(pr) for pr in check_files(p, paths.models_dir)] == [
        f"models.chat.type: {embedder} is an embedding model (bert, mean pooling), not an llm; set type: embeddings",
        f"models.rank.type: {reranker} is a reranker (bert, rank pooling); it cannot serve embeddings",
    ]


def test_estimate_profile(paths: Paths, tmp_path: Path) -> None:
    from msting.models.gguf_file import read_gguf_info
    from msting.models.memory import estimate_model

    p = load_profile(shipped_profiles_dir() / "embeddings.yaml")
    estimates = estimate_profile(p, paths.models_dir)
    info = read_gguf_info(paths.models_dir / "msting-tiny.gguf")
    assert estimates == [  # parallel automatic: 8 slots fit, with memory to spare
        estimate_model(info, 2048, 1, embedding=False, name="msting-tiny", parallel=8),
        estimate_model(info, 512, 1, embedding=True, name="tiny-embed", parallel=8),
    ]
    bad = parse_yaml(MINIMAL.replace("builtin:tiny", str(tmp_path / "none.gguf")))
    with pytest.raises(ConfigError) as exc:
        estimate_profile(bad, paths.models_dir)
    assert [p.key for p in exc.value.problems] == ["models.story.source"]


# ----------------------------------------------------------------------------- import


def test_import_is_cheap() -> None:
    code = (
        "import sys, msting.config.profiles, msting.models.memory; "
        "print(sorted(m for m in ('yaml', 'gguf', 'numpy', 'psutil', 'llama_cpp') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
