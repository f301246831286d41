"""A profile's model files, checked before a worker is spawned: each exists, is readable,
really is GGUF (its header and metadata parse) and suits the model's type; the
built-in model is written when needed. Then :func:`estimate_profile` (and
:func:`msting.models.memory.preflight`) compare the memory needed with what is
available.

The GGUF and memory modules are imported only when used, so importing this module
stays cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from msting.config.errors import ConfigError, ConfigProblem
from msting.config.profiles.schema import Profile, ProfileModel

if TYPE_CHECKING:
    from msting.models.gguf_file import GGUFInfo
    from msting.models.memory import MemoryEstimate

# llama_pooling_type values, as GGUF files declare them in {arch}.pooling_type


def inspect_files(profile: Profile, models_dir: Path) -> tuple[dict[str, GGUFInfo], list[ConfigProblem]]:
    """The GGUF header of each model whose file checks out (by model name), and the
    problems of the others (see :func:`check_files`). A file shared by several models
    is read once."""
    from msting.models.gguf_file import ModelFileError, read_gguf_info

    infos: dict[str, GGUFInfo] = {}
    problems: list[ConfigProblem] = []
    by_path: dict[Path, GGUFInfo | str] = {}
    for name, model in profile.models.items():
        key = f"models.{name}.source"
        if model.is_builtin:
            from msting.models.builtin import ensure_builtin_model

            try:
                path = ensure_builtin_model(Path(models_dir))
            except (OSError, ModelFileError) as e:
                problems.append(ConfigProblem(key, f"cannot write the built-in model into {models_dir}: {e}"))
                continue
        elif model.installed is not None:
            from msting.models.installed import installed_path

            path = installed_path(Path(models_dir), model.installed)
        elif model.path is not None:
            path = model.path
        else:  # a Profile built by hand with neither
            problems.append(ConfigProblem(key, f"no file for source {model.source!r}"))
            continue
        cached = by_path.get(path)
        if cached is None:
            try:
                cached = read_gguf_info(path)
            except ModelFileError as e:
                msg = str(e)
                if not path.exists() and model.installed is not None:
                    msg += f" (install it: msting llm pull SOURCE --name {model.installed})"
                elif not path.exists():
                    msg += f" (download the model, or set models.{name}.source to the path of a GGUF file)"
                cached = msg
            by_path[path] = cached
        if isinstance(cached, str):
            problems.append(ConfigProblem(key, cached))
            continue
        problems.extend(_type_problems(name, model, cached))
        infos[name] = cached
    return infos, problems


def _type_problems(name: str, model: ProfileModel, info: GGUFInfo) -> list[ConfigProblem]:
    """A dedicated embedding model cannot generate; a reranker cannot embed."""
    from msting.models.gguf_file import POOLING_NAMES

    arch = info.arch or "unknown"
    pooling_value = info.metadata.get(f"{arch}.pooling_type")
    pooling = POOLING_NAMES.get(pooling_value) if isinstance(pooling_value, int) else None
    key = f"models.{name}.type"
    if model.type == "llm" and pooling not in (None, "none"):
        return [ConfigProblem(key, f"{info.path} is an embedding model ({arch}, {pooling} pooling), not an llm; set type: embeddings")]
    if model.type == "embeddings" and pooling == "rank":
        return [ConfigProblem(key, f"{info.path} is a reranker ({arch}, rank pooling); it cannot serve embeddings")]
    return []


def check_files(profile: Profile, models_dir: Path) -> list[ConfigProblem]:
    """The problems with the profile's model files: each non-builtin file must exist,
    be readable and parse as GGUF (header and metadata), and suit the model's type;
    the built-in model is written into ``models_dir`` when missing. An empty list
    means every model can be handed to a worker."""
    return inspect_files(profile, models_dir)[1]


def estimate_models(profile: Profile, infos: dict[str, GGUFInfo]) -> dict[str, MemoryEstimate]:
    """A memory estimate (named by model name) per model of the profile that has its
    GGUF header in ``infos`` (from :func:`inspect_files`), in profile order. An
    automatic ``parallel`` is chosen as the daemon chooses it (the memory budget)."""
    from msting.models.memory import choose_parallel, estimate_model

    budget = profile.memory_budget_bytes
    return {
        name: estimate_model(info, m.n_ctx, m.replicas, embedding=m.embedding, name=name,
                             parallel=m.parallel or choose_parallel(info, m.n_ctx, m.replicas, budget_bytes=budget, embedding=m.embedding))
        for name, m in profile.models.items()
        if (info := infos.get(name)) is not None
    }


def estimate_profile(profile: Profile, models_dir: Path) -> list[MemoryEstimate]:
    """A memory estimate per model of the profile (on-demand ones included), in
    profile order, named by model name; for :func:`msting.models.memory.preflight`
    with ``budget_bytes=profile.memory_budget_bytes``.

    Raises ConfigError listing the file problems when a file does not check out.
    """
    infos, problems = inspect_files(profile, models_dir)
    if problems:
        raise ConfigError(problems, profile.source)
    return list(estimate_models(profile, infos).values())
