"""msting.config.profiles.discovery: listing and finding profiles, the user's and the shipped ones."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
from config_testing import MINIMAL, REPO, SHIPPED, write_profile

from msting.config.errors import ConfigError
from msting.config.paths import Paths
from msting.config.profiles.discovery import ProfileNotFound, find_profile, list_profiles, load_named_profile, shipped_profiles_dir
from msting.config.profiles.schema import load_profile, profile_from_config
from msting.config.schema import parse_config


def test_shipped_examples_are_where_the_package_and_repo_say() -> None:
    folder = shipped_profiles_dir()
    assert folder == REPO / "src" / "msting" / "config" / "shipped_profiles"  # data only, beside the profiles package
    assert sorted(p.stem for p in folder.glob("*.yaml")) == sorted(SHIPPED)
    link = REPO / "config" / "profiles"
    assert link.is_symlink() and os.readlink(link) == "../src/msting/config/shipped_profiles"
    assert link.resolve() == folder.resolve()
    assert '"config/shipped_profiles/*.yaml"' in (REPO / "pyproject.toml").read_text()


# ---------------------------------------------------------------------------- listing


def test_list_profiles_user_and_shipped(paths: Paths, home: Path) -> None:
    user = paths.profiles_dir
    write_profile(user, "default.yaml", "description: my own default\n" + textwrap.dedent(MINIMAL))
    write_profile(user, "mine.yml", MINIMAL)
    write_profile(user, "broken.yaml", textwrap.dedent(MINIMAL.replace("builtin:tiny", "builtin:tiny\n        replicas: 0")) + "extra: 1\n")
    write_profile(user, ".hidden.yaml", MINIMAL)
    write_profile(user, "notes.txt", "not a profile")
    entries = {e.name: e for e in list_profiles(paths)}
    assert list(entries) == ["broken", "default", "embeddings", "mine", "small-instruct"]

    default = entries["default"]
    assert not default.shipped and default.ok and default.path == user / "default.yaml"
    assert default.description == "my own default"
    assert default.shadows == shipped_profiles_dir() / "default.yaml"

    broken = entries["broken"]
    assert not broken.ok and broken.profile is None and broken.description == ""
    assert [str(p) for p in broken.problems] == [
        "extra: unknown key (expected one of: description, default_model, models, memory_budget_mb, routes, router_model, cache)",
        "models.story.replicas: must be an integer between 1 and 64, got 0",
    ]

    assert entries["mine"].ok and entries["mine"].path == user / "mine.yml"
    for name in ("embeddings", "small-instruct"):
        assert entries[name].shipped and entries[name].ok and entries[name].shadows is None


def test_list_profiles_without_user_folder(paths: Paths, home: Path) -> None:
    assert not paths.profiles_dir.exists()
    entries = list_profiles(paths)
    assert [e.name for e in entries] == list(SHIPPED)
    assert all(e.shipped and e.ok for e in entries)


def test_yaml_wins_over_yml(paths: Paths) -> None:
    write_profile(paths.profiles_dir, "twin.yml", "description: yml\n" + textwrap.dedent(MINIMAL))
    write_profile(paths.profiles_dir, "twin.yaml", "description: yaml\n" + textwrap.dedent(MINIMAL))
    (entry,) = [e for e in list_profiles(paths) if e.name == "twin"]
    assert entry.description == "yaml"
    assert find_profile(paths, "twin") == paths.profiles_dir / "twin.yaml"


def test_find_profile(paths: Paths) -> None:
    assert find_profile(paths, "default") == shipped_profiles_dir() / "default.yaml"
    mine = write_profile(paths.profiles_dir, "default.yaml", MINIMAL)
    assert find_profile(paths, "default") == mine
    assert find_profile(paths, "small-instruct") == shipped_profiles_dir() / "small-instruct.yaml"


@pytest.mark.parametrize("name", ["small-instrcut", "nope", "../default", "default.yaml", ""])
def test_find_profile_unknown(paths: Paths, name: str) -> None:
    write_profile(paths.profiles_dir, "mine.yaml", MINIMAL)
    with pytest.raises(ProfileNotFound) as exc:
        find_profile(paths, name)
    assert isinstance(exc.value, ConfigError)
    msg = str(exc.value)
    assert msg.startswith(f"no profile named {name!r} (")
    assert "available: default, embeddings, mine, small-instruct;" in msg
    assert str(paths.profiles_dir) in msg
    if name == "small-instrcut":
        assert "did you mean 'small-instruct'?" in msg


# ------------------------------------------------------------------ the daemon's view


def test_load_named_profile(paths: Paths, tmp_path: Path) -> None:
    cfg = parse_config({"llm": {"model": "/m/story.gguf"}}, tmp_path / "config.yaml")
    # "default" is config.yaml's llm section...
    implicit = load_named_profile(paths, cfg, "default")
    assert implicit == profile_from_config(cfg) and implicit.default_model == "story"
    # ...until the user writes a profiles/default.yaml
    mine = write_profile(paths.profiles_dir, "default.yaml", MINIMAL)
    assert load_named_profile(paths, cfg, "default") == load_profile(mine)
    assert load_named_profile(paths, cfg, "embeddings") == load_profile(shipped_profiles_dir() / "embeddings.yaml")
    with pytest.raises(ProfileNotFound):
        load_named_profile(paths, cfg, "nope")
    write_profile(paths.profiles_dir, "bad.yaml", "models: 3\n")
    with pytest.raises(ConfigError):
        load_named_profile(paths, cfg, "bad")
