"""Profiles: YAML files naming the models to serve, their parameters and the default.

* :mod:`.schema`: the profile schema and its validation (:func:`parse_profile`,
  :func:`load_profile`), and the implicit profile from config.yaml's ``llm``
  section (:func:`profile_from_config`);
* :mod:`.discovery`: finding profiles by name, the user's and the shipped examples
  (:func:`list_profiles`, :func:`find_profile`, :func:`load_named_profile`);
* :mod:`.checks`: the model files, checked (:func:`check_files`: each exists, is
  readable and really is GGUF) and estimated (:func:`estimate_profile`);
* :mod:`.presentation`: every profile as JSON-ready data (:func:`describe_profiles`).

This folder also holds the shipped example profiles (``*.yaml``). The names below are
re-exported for code outside :mod:`msting.config`; inside it, import from the
submodules. ``yaml`` and the GGUF modules are imported only when used, so importing
this package stays cheap.
"""

from msting.config.profiles.checks import check_files, estimate_profile
from msting.config.profiles.discovery import (
    ProfileEntry,
    ProfileNotFound,
    find_profile,
    list_profiles,
    load_named_profile,
    shipped_profiles_dir,
)
from msting.config.profiles.presentation import describe_profiles
from msting.config.profiles.schema import ModelParams, Profile, ProfileModel, load_profile, parse_profile, profile_from_config
from msting.config.schema import BUILTIN_TINY, BUILTIN_TINY_NAME

__all__ = [
    "BUILTIN_TINY",
    "BUILTIN_TINY_NAME",
    "ModelParams",
    "Profile",
    "ProfileEntry",
    "ProfileModel",
    "ProfileNotFound",
    "check_files",
    "describe_profiles",
    "estimate_profile",
    "find_profile",
    "list_profiles",
    "load_named_profile",
    "load_profile",
    "parse_profile",
    "profile_from_config",
    "shipped_profiles_dir",
]
