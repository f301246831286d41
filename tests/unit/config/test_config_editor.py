"""msting.config.editor: writing the user's config.yaml (comments kept)."""

from __future__ import annotations

from pathlib import Path

import pytest
from config_testing import write_config

from msting.config.editor import write_user_config
from msting.config.paths import Paths
from msting.config.schema import Config, default_config_text, load_config


def test_write_user_config_copies_default_and_is_idempotent(paths: Paths) -> None:
    f = write_user_config(paths)
    assert f == paths.config_file
    assert f.read_text(encoding="utf-8") == default_config_text()
    f.write_text(f.read_text(encoding="utf-8") + "# my note\n", encoding="utf-8")
    assert write_user_config(paths) == f
    assert f.read_text(encoding="utf-8").endswith("# my note\n")  # an existing file is kept
    assert load_config(paths, env={}) == Config(source=f)


def test_write_user_config_model_keeps_comments(paths: Paths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    f = write_user_config(paths, model="models/my-model.Q4_K_M.gguf")
    text = f.read_text(encoding="utf-8")
    expected = str(tmp_path / "models" / "my-model.Q4_K_M.gguf")

    default_comments = [line for line in default_config_text().splitlines() if line.strip().startswith("#")]
    comments = [line for line in text.splitlines() if line.strip().startswith("#")]
    assert comments == default_comments
    assert f"  model: {expected}" in text.splitlines()
    # Only the model line changed.
    changed = [
        (a, b) for a, b in zip(default_config_text().splitlines(), text.splitlines(), strict=True) if a != b
    ]
    assert changed == [("  model: builtin:tiny", f"  model: {expected}")]

    cfg = load_config(paths, env={})
    assert cfg.llm.model == expected
    assert cfg.llm.served_name == "my-model.Q4_K_M"
    assert cfg.llm.model_path == Path(expected)

    # Twice is the same as once.
    write_user_config(paths, model=expected)
    assert f.read_text(encoding="utf-8") == text
    write_user_config(paths)
    assert f.read_text(encoding="utf-8") == text


def test_write_user_config_model_with_awkward_path(paths: Paths, tmp_path: Path) -> None:
    model = str(tmp_path / "my models" / "a #1: 'q'.gguf")
    write_user_config(paths, model=model)
    text = paths.config_file.read_text(encoding="utf-8")
    assert "# Default sampling temperature" in text
    assert load_config(paths, env={}).llm.model == model


def test_write_user_config_model_into_user_file_shapes(paths: Paths, tmp_path: Path) -> None:
    model = str(tmp_path / "m.gguf")
    # No llm section at all.
    write_config(paths, "# mine\nllm_service:\n  port: 9000\n")
    write_user_config(paths, model=model)
    cfg = load_config(paths, env={})
    assert (cfg.llm.model, cfg.llm_service.port) == (model, 9000)
    assert paths.config_file.read_text(encoding="utf-8").startswith("# mine\n")

    # An llm section without a model key.
    write_config(paths, "llm:\n  # keep me\n  n_ctx: 512\n")
    write_user_config(paths, model=model)
    cfg = load_config(paths, env={})
    assert (cfg.llm.model, cfg.llm.n_ctx) == (model, 512)
    assert "# keep me" in paths.config_file.read_text(encoding="utf-8")

    # "model:" with no value, and a trailing comment.
    write_config(paths, "llm:\n  model:   # set me\n  n_ctx: 512\n")
    write_user_config(paths, model=model)
    assert load_config(paths, env={}).llm.model == model
    assert "# set me" in paths.config_file.read_text(encoding="utf-8")

    # A flow mapping cannot be edited textually: re-dumped, still correct.
    write_config(paths, "llm: {model: builtin:tiny, n_ctx: 256}\n")
    write_user_config(paths, model=model)
    cfg = load_config(paths, env={})
    assert (cfg.llm.model, cfg.llm.n_ctx) == (model, 256)


def test_write_user_config_replaces_symlink_not_its_target(paths: Paths, tmp_path: Path) -> None:
    target = tmp_path / "shared.yaml"
    target.write_text(default_config_text(), encoding="utf-8")
    paths.config_dir.mkdir(parents=True)
    paths.config_file.symlink_to(target)
    write_user_config(paths, model=str(tmp_path / "m.gguf"))
    assert target.read_text(encoding="utf-8") == default_config_text()
    assert not paths.config_file.is_symlink()
    assert load_config(paths, env={}).llm.model == str(tmp_path / "m.gguf")


def test_write_user_config_builtin_model(paths: Paths) -> None:
    write_user_config(paths, model="/x/y.gguf")
    write_user_config(paths, model="builtin:tiny")
    assert load_config(paths, env={}).llm.is_builtin
