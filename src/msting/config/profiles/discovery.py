"""Finding profiles by name: the user's files and msting's shipped examples.

A profile lives in ``<config dir>/profiles/<name>.yaml`` (``Paths.profiles_dir``;
``$MSTING_HOME/config/profiles`` when MSTING_HOME is set); msting ships examples in
``msting/config/shipped_profiles`` (``config/profiles`` at the top of
the repo). A user file wins over a shipped example of the same name. Without a user
``default`` profile, the ``llm`` section of ``config.yaml`` is the implicit one.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path

from msting.config.errors import ConfigError, ConfigProblem
from msting.config.paths import Paths
from msting.config.profiles.schema import IMPLICIT_PROFILE_NAME, NAME_PATTERN, Profile, load_profile, profile_from_config
from msting.config.schema import Config

PROFILE_SUFFIXES = (".yaml", ".yml")  # .yaml wins when both exist


@dataclass(frozen=True)
class ProfileEntry:
    """One profile as :func:`list_profiles` finds it: valid (``profile`` set) or not
    (``problems`` set). ``shipped`` is True for msting's own examples; ``shadows``
    is the shipped example a user file of the same name hides, if any."""

    name: str
    path: Path
    shipped: bool
    profile: Profile | None = None
    problems: tuple[ConfigProblem, ...] = ()
    shadows: Path | None = None

    @property
    def ok(self) -> bool:
        return self.profile is not None and not self.problems

    @property
    def description(self) -> str:
        return self.profile.description if self.profile is not None else ""


class ProfileNotFound(ConfigError):
    """No profile has the name asked for; the message lists those that exist."""


def shipped_profiles_dir() -> Path:
    """The folder of the shipped example profiles (``msting/config/shipped_profiles``)."""
    return Path(__file__).parent.parent / "shipped_profiles"


def _profile_files(folder: Path) -> dict[str, Path]:
    """name -> file for the profile files in ``folder`` (``.yaml`` over ``.yml``)."""
    found: dict[str, Path] = {}
    try:
        entries = sorted(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return found
    for p in entries:
        if p.name.startswith(".") or p.suffix not in PROFILE_SUFFIXES:
            continue
        if not (p.is_file() or p.is_symlink()):
            continue
        current = found.get(p.stem)
        if current is None or PROFILE_SUFFIXES.index(p.suffix) < PROFILE_SUFFIXES.index(current.suffix):
            found[p.stem] = p
    return found


def list_profiles(paths: Paths) -> list[ProfileEntry]:
    """Every profile: the files in ``paths.profiles_dir`` and the shipped examples,
    sorted by name; a user file hides a shipped example of the same name.

    Each file is schema-checked (not its model files:
    :func:`~msting.config.profiles.checks.check_files` does that); an invalid one is
    listed with its problems rather than left out.
    """
    user = _profile_files(paths.profiles_dir)
    shipped = _profile_files(shipped_profiles_dir())
    entries: list[ProfileEntry] = []
    for name in sorted(set(user) | set(shipped)):
        is_user = name in user
        path = user[name] if is_user else shipped[name]
        shadows = shipped.get(name) if is_user else None
        try:
            profile = load_profile(path)
        except ConfigError as e:
            entries.append(ProfileEntry(name, path, not is_user, None, tuple(e.problems), shadows))
        else:
            entries.append(ProfileEntry(name, path, not is_user, profile, (), shadows))
    return entries


def find_profile(paths: Paths, name: str) -> Path:
    """The file of the profile ``name``: the user's, else the shipped example.

    Raises ProfileNotFound (a ConfigError) naming the available profiles.
    """
    if isinstance(name, str) and re.fullmatch(NAME_PATTERN, name):
        for folder in (paths.profiles_dir, shipped_profiles_dir()):
            found = _profile_files(folder).get(name)
            if found is not None:
                return found
    available = sorted(set(_profile_files(paths.profiles_dir)) | set(_profile_files(shipped_profiles_dir())))
    close = difflib.get_close_matches(str(name), available, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    listed = ", ".join(available) if available else "none"
    raise ProfileNotFound(
        [ConfigProblem("", f"no profile named {name!r} ({hint}available: {listed}; "
                           f"user profiles live in {paths.profiles_dir})")],
        None,
    )


def load_named_profile(paths: Paths, config: Config, name: str) -> Profile:
    """The profile the daemon serves as ``name`` (schema-checked;
    :func:`~msting.config.profiles.checks.check_files` is the caller's next step).

    ``default`` is the user's ``profiles/default.yaml`` when there is one, else the
    implicit profile from config.yaml's ``llm`` section (:func:`profile_from_config`;
    with an untouched config it serves what the shipped ``default.yaml`` does, and
    ``msting llm install --model`` keeps working). Any other name is looked up with
    :func:`find_profile` (raises ProfileNotFound) and read with :func:`load_profile`.
    """
    if name == IMPLICIT_PROFILE_NAME and name not in _profile_files(paths.profiles_dir):
        return profile_from_config(config)
    return load_profile(find_profile(paths, name))
