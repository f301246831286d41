"""A profile naming an installed model: `source: installed:NAME` is the file
`<models dir>/NAME.gguf`, checked as any model file is."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from msting.config.errors import ConfigError
from msting.config.profiles.checks import check_files
from msting.config.profiles.schema import parse_profile
from msting.daemon.local.model import specs_from_profile


def _profile(source: str):
    return parse_profile({"default_model": "story", "models": {"story": {"source": source}}}, "p")


def test_an_installed_source_names_a_file_in_the_models_folder(tmp_path: Path, stories_model_path: Path) -> None:
    profile = _profile("installed:story")
    model = profile.models["story"]
    assert model.installed == "story" and model.path is None and not model.is_builtin
    problems = check_files(profile, tmp_path)
    assert len(problems) == 1 and problems[0].key == "models.story.source"
    assert "(install it: msting llm pull SOURCE --name story)" in problems[0].message
    shutil.copy(stories_model_path, tmp_path / "story.gguf")
    assert check_files(profile, tmp_path) == []
    assert specs_from_profile(profile, tmp_path)[0].path == tmp_path / "story.gguf"


@pytest.mark.parametrize("name", ["bad name", "", "-x", "default"])
def test_an_installed_name_follows_the_model_name_rule(name: str) -> None:
    with pytest.raises(ConfigError, match=f"models.story.source: installed model {name!r}"):
        _profile(f"installed:{name}")
