"""Profiles as plain (JSON-ready) data, for ``msting llm profiles`` and the daemon's
``/v1/profiles`` route: :func:`describe_profiles`."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from msting.config.errors import ConfigProblem
from msting.config.paths import Paths
from msting.config.profiles.checks import estimate_models, inspect_files
from msting.config.profiles.discovery import list_profiles
from msting.config.profiles.schema import IMPLICIT_PROFILE_NAME, Profile, profile_from_config
from msting.config.schema import Config


def describe_profiles(paths: Paths, config: Config) -> list[dict[str, Any]]:
    """Every profile as plain (JSON-ready) data, sorted by name: what
    :func:`~msting.config.profiles.discovery.list_profiles` finds, with ``default``
    as :func:`~msting.config.profiles.discovery.load_named_profile` sees it, each
    checked in full (schema, then model files) and estimated.

    Each item: ``name``, ``description``, ``source`` (the file, or config.yaml for
    the implicit default), ``shipped``, ``implicit``, ``valid``, ``problems``
    (``"key: message"`` strings), ``default_model``, ``memory_budget_mb``,
    ``estimated_bytes`` (every model loaded at once, shared files counted once; None
    unless valid), ``always_ready_bytes`` (the always-ready models only) and
    ``models``: ``name``, ``type``, ``source``, ``n_ctx``, ``replicas``,
    ``parallel`` (as written; None = automatic), ``estimated_parallel`` (the slots
    the estimate counts: the automatic choice), ``always_ready``,
    ``keep_alive_sec``, ``params``, ``estimated_bytes``.

    Reads each model file's header, and writes the built-in model when a profile
    uses it.
    """
    from msting.models.memory import preflight

    out: list[dict[str, Any]] = []
    for entry in list_profiles(paths):
        implicit = entry.name == IMPLICIT_PROFILE_NAME and entry.shipped
        if implicit:
            profile: Profile | None = profile_from_config(config)
            problems: list[ConfigProblem] = []
            source = config.source
        else:
            profile, problems, source = entry.profile, list(entry.problems), entry.path
        models: list[dict[str, Any]] = []
        total = ready = None
        if profile is not None:
            infos, file_problems = inspect_files(profile, paths.models_dir)
            problems.extend(file_problems)
            estimates = estimate_models(profile, infos)
            for name, m in profile.models.items():
                est = estimates.get(name)
                models.append({
                    "name": name, "type": m.type, "source": m.source, "n_ctx": m.n_ctx, "replicas": m.replicas,
                    "parallel": m.parallel, "estimated_parallel": est.parallel if est is not None else None,
                    "always_ready": m.always_ready, "keep_alive_sec": m.keep_alive_sec, "params": asdict(m.params),
                    "estimated_bytes": est.total_bytes if est is not None else None,
                })
            if not problems:
                all_models = list(estimates.values())
                total = preflight(all_models, available_bytes=0).needed
                ready = preflight([e for e in all_models if profile.models[e.name].always_ready], available_bytes=0).needed
        out.append({
            "name": entry.name,
            "description": profile.description if profile is not None else "",
            "source": str(source) if source is not None else None,
            "shipped": entry.shipped and not implicit,
            "implicit": implicit,
            "valid": profile is not None and not problems,
            "problems": [str(p) for p in problems],
            "default_model": profile.default_model if profile is not None else None,
            "memory_budget_mb": profile.memory_budget_mb if profile is not None else None,
            "estimated_bytes": total,
            "always_ready_bytes": ready,
            "models": models,
        })
    return out
