"""A profile file's schema: :class:`Profile`, :class:`ProfileModel`, :class:`ModelParams`,
their validation (:func:`parse_profile`, :func:`load_profile`) and the implicit profile
made from config.yaml's ``llm`` section (:func:`profile_from_config`).

Validation checks keys, types, ranges, model names, sources and ``default_model``,
and lists *every* problem in one :class:`ConfigError` with dotted keys such as
``models.story.n_ctx``. The fields are declared with :mod:`msting.config.fields`; a
model's parameters are declared as config.yaml's ``llm`` keys are (same defaults,
same ranges).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from msting.config.errors import ConfigError, ConfigProblem
from msting.config.fields import Bool, Choice, Num, Str, Text, UnknownKey, build, join, opt, same_as, schema_fields, section, show, split_known
from msting.config.profiles.policy import CacheConfig, Policy, RouterModelConfig, policy_problems, routes_field
from msting.config.schema import BUILTIN_TINY, Config, LLMConfig
from msting.config.yamlio import load_yaml, read_text
from msting.models.installed import installed_name

IMPLICIT_PROFILE_NAME = "default"
MODEL_TYPES = ("llm", "embeddings")
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]*"
NAME_RULE = "letters, digits, '.', '_' and '-', starting with a letter or digit"
# "default" (and "") already mean "the profile's default model" in requests.
RESERVED_MODEL_NAMES = frozenset({"default"})
DOWNLOAD_SCHEMES = ("http://", "https://", "hf://")
DOWNLOADS_UNSUPPORTED = "a profile names files, it does not download them: install it first (msting llm pull SOURCE --name NAME) and give source: installed:NAME"
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


# ------------------------------------------------------------------------ schema


@dataclass(frozen=True)
class ModelParams:
    """A model's generation defaults and worker parameters (``models.<name>.params``).
    The defaults are those of config.yaml's ``llm`` section."""

    temperature: float = same_as(LLMConfig, "temperature")
    max_tokens: int = same_as(LLMConfig, "max_tokens")
    n_threads: int | None = same_as(LLMConfig, "n_threads")  # null = automatic
    n_gpu_layers: int = same_as(LLMConfig, "n_gpu_layers")  # -1 = all
    chat_format: str | None = same_as(LLMConfig, "chat_format")


@dataclass(frozen=True)
class ProfileModel:
    """One model of a profile (``models.<name>``).

    ``source`` is ``builtin:tiny`` or the model file's path, resolved (``~``
    expanded, a relative path taken relative to the profile's folder) as config.yaml's
    ``llm.model`` is; ``path`` is the same as a Path, or None for the built-in model,
    whose file lives in the models folder (:func:`~msting.config.profiles.checks.check_files`
    writes it). ``keep_alive_sec`` applies to on-demand models (``always_ready: false``):
    they load when first requested and unload when idle that long.
    """

    source: str | None = opt(None, Str())
    type: str = opt("llm", Choice(MODEL_TYPES))
    n_ctx: int = same_as(LLMConfig, "n_ctx")
    replicas: int = same_as(LLMConfig, "replicas")
    parallel: int | None = same_as(LLMConfig, "parallel")  # null = automatic (msting.models.memory.choose_parallel)
    always_ready: bool = opt(True, Bool())
    keep_alive_sec: float = opt(300.0, Num(integer=False, lo=0, lo_open=True))
    params: ModelParams = section(ModelParams)
    name: str = ""
    path: Path | None = None

    @property
    def is_builtin(self) -> bool:
        return self.source == BUILTIN_TINY

    @property
    def installed(self) -> str | None:
        """The name of an installed model (``installed:NAME``; its file is in the models folder)."""
        return installed_name(self.source)

    @property
    def embedding(self) -> bool:
        return self.type == "embeddings"


@dataclass(frozen=True)
class Profile:
    """A validated profile. ``name`` is the file's stem; ``source`` the file (None
    for a profile not read from a file); ``memory_budget_mb`` None means no budget
    beyond the memory available."""

    name: str
    description: str
    default_model: str
    models: dict[str, ProfileModel]
    memory_budget_mb: float | None = None
    source: Path | None = None
    policy: Policy = Policy()  # routes, router model, response cache (msting.config.profiles.policy)

    @property
    def default(self) -> ProfileModel:
        return self.models[self.default_model]

    @property
    def memory_budget_bytes(self) -> int | None:
        return None if self.memory_budget_mb is None else int(self.memory_budget_mb * (1 << 20))

    @property
    def always_ready_models(self) -> list[ProfileModel]:
        return [m for m in self.models.values() if m.always_ready]


# The top level, described like the sections (``_TopLevel`` is never returned).
@dataclass(frozen=True)
class _TopLevel:
    description: str = opt("", Text(nullable=True))
    default_model: str | None = opt(None, Str())
    models: Any = opt(None, None)  # checked by parse_profile, model by model
    memory_budget_mb: float | None = opt(None, Num(integer=False, lo=0, lo_open=True, nullable=True))
    # the traffic policy (msting.config.profiles.policy)
    routes: tuple = routes_field()
    router_model: RouterModelConfig = section(RouterModelConfig)
    cache: CacheConfig = section(CacheConfig)


_LEVELS: dict[str, type] = {"top": _TopLevel, "model": ProfileModel, "params": ModelParams}

# Keys people bring from config.yaml's llm section, and other near misses.
_ALIASES: dict[str, dict[str, str]] = {
    "model": {"model": "source", "path": "source", "file": "source", "url": "source",
              "keep_alive": "keep_alive_sec", "embedding": "type", "embeddings": "type"},
    "top": {"default": "default_model", "memory_budget": "memory_budget_mb"},
}
_TEMPLATES = {"top": "", "model": "models.<name>", "params": "models.<name>.params"}
_EXPLAINED: dict[tuple[str, str], str] = {
    ("top", "name"): "unknown key (a profile's name is its file name)",
    ("model", "name"): "unknown key (a model's name is its key under models)",
    ("model", "model_name"): "unknown key (a model's name is its key under models)",
}


# -------------------------------------------------------------------- validation


def _unknown_key(level: str, prefixes: dict[str, str | None]) -> UnknownKey:
    """"did you mean" for a profile's ``level``: the closest key at this level, a key
    people bring from config.yaml, or the same key at another level (of this model,
    whose dotted prefixes are ``prefixes``)."""

    def message(prefix: str, key: str, known: list[str]) -> str:
        explained = _EXPLAINED.get((level, key))
        if explained:
            return explained
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        if close:
            return f"unknown key (did you mean {close[0]!r}?)"
        alias = _ALIASES.get(level, {}).get(key)
        if alias:
            return f"unknown key (did you mean {alias!r}?)"
        for other, cls in _LEVELS.items():
            if other != level and key in schema_fields(cls):
                where_prefix = prefixes.get(other)
                where = join(where_prefix, key) if where_prefix is not None else join(_TEMPLATES[other], key)
                return f"unknown key here (did you mean {where!r}?)"
        return "unknown key (expected one of: " + ", ".join(known) + ")"

    return message


def _source_problem(source: str) -> str | None:
    name = installed_name(source)
    if name is not None:
        problem = _name_problem(name)
        return f"installed model {name!r}: {problem}" if problem else None
    if source.startswith("builtin:"):
        if source != BUILTIN_TINY:
            return f"unknown builtin model {source!r}; the only one is {BUILTIN_TINY!r}"
        return None
    if source.lower().startswith(DOWNLOAD_SCHEMES):
        return f"{source!r}: {DOWNLOADS_UNSUPPORTED}"
    scheme = _SCHEME.match(source)
    if scheme:
        return f"unknown source scheme {scheme.group(0)!r}; give {BUILTIN_TINY!r} or a path to a .gguf file"
    return None


def _resolve_source(source: str, base: Path | None) -> Path:
    p = Path(source).expanduser()
    if not p.is_absolute():
        p = (base if base is not None else Path.cwd()) / p
    return p


def _name_problem(name: Any) -> str | None:
    if not isinstance(name, str):
        return f"a model name must be a string ({NAME_RULE}), got {show(name)}; quote it"
    if "~" in name:
        return f"a model name must not contain '~' (it separates service and model, as in local~{name.replace('~', '')})"
    if not re.fullmatch(NAME_PATTERN, name):
        return f"a model name uses {NAME_RULE}; got {name!r}"
    if name in RESERVED_MODEL_NAMES:
        return f"{name!r} is reserved: requests use it to mean the profile's default model"
    return None


def _build_model(
    name: str, data: Any, prefix: str, base: Path | None, problems: list[ConfigProblem]
) -> ProfileModel | None:
    params_prefix = join(prefix, "params")
    prefixes: dict[str, str | None] = {"top": "", "model": prefix, "params": params_prefix}
    before = len(problems)
    model_keys, params_keys = _unknown_key("model", prefixes), _unknown_key("params", prefixes)
    known = split_known(ProfileModel, data, prefix, problems, model_keys)
    if known is None:
        return None
    raw_params = known.pop("params", None)
    model: ProfileModel = build(ProfileModel, known, prefix, problems, model_keys)
    params_known = split_known(ModelParams, raw_params, params_prefix, problems, params_keys)
    params = ModelParams() if params_known is None else build(ModelParams, params_known, params_prefix, problems, params_keys)

    path: Path | None = None
    if "source" not in known:
        problems.append(ConfigProblem(join(prefix, "source"), f"is required: {BUILTIN_TINY} or the path of a .gguf file"))
    elif model.source is not None:
        msg = _source_problem(model.source)
        if msg:
            problems.append(ConfigProblem(join(prefix, "source"), msg))
        elif not model.is_builtin and model.installed is None:
            path = _resolve_source(model.source, base)
    if len(problems) > before:
        return None
    if path is not None:
        model = replace(model, source=str(path))
    return replace(model, params=params, name=name, path=path)


def parse_profile(data: object, name: str, source: Path | str | None = None) -> Profile:
    """Validate parsed YAML ``data`` into the profile ``name``.

    Every problem is collected before one ConfigError (dotted keys, such as
    ``models.story.n_ctx``) is raised. Relative model paths are taken relative to
    the folder of ``source`` (the profile file), or to the current directory.
    """
    source = Path(source) if source is not None else None
    base = source.parent if source is not None else None
    problems: list[ConfigProblem] = []
    if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
        problems.append(ConfigProblem("", f"the profile name {name!r} (the file name) must use {NAME_RULE}"))

    top_keys = _unknown_key("top", {"top": "", "model": None, "params": None})
    known = split_known(_TopLevel, data, "", problems, top_keys)
    if known is None:
        raise ConfigError(problems, source)
    scalars = {k: known[k] for k in schema_fields(_TopLevel) if k in known and k != "models"}  # in schema order
    top: _TopLevel = build(_TopLevel, scalars, "", problems, top_keys)

    models: dict[str, ProfileModel] = {}
    raw_models = known.get("models")
    has_models = isinstance(raw_models, Mapping) and bool(raw_models)
    if "models" not in known:
        problems.append(ConfigProblem("models", "is required: a mapping of model names to models"))
    elif not has_models:
        shown = "an empty mapping" if isinstance(raw_models, Mapping) or raw_models is None else show(raw_models)
        problems.append(ConfigProblem("models", f"must map at least one model name to a model, got {shown}"))
    else:
        assert isinstance(raw_models, Mapping)
        for raw_name, model_data in raw_models.items():
            shown_name = raw_name if isinstance(raw_name, str) else show(raw_name)
            prefix = f"models.{shown_name}"
            bad_name = _name_problem(raw_name)
            if bad_name:
                problems.append(ConfigProblem(prefix, bad_name))
            model = _build_model(shown_name, model_data, prefix, base, problems)
            if model is not None and not bad_name:
                models[shown_name] = model

    default = top.default_model
    llms = _declared_llms(raw_models)
    if "default_model" not in known:
        hint = f" (one of: {', '.join(llms)})" if llms else ""
        problems.append(ConfigProblem("default_model", f"is required: the llm model served when a request names none{hint}"))
    elif default is not None and has_models:
        assert isinstance(raw_models, Mapping)
        named = [n if isinstance(n, str) else show(n) for n in raw_models]
        problems.extend(_default_problems(default, models, named, llms))
    policy = Policy(top.routes, top.router_model, top.cache)
    if has_models:
        problems.extend(policy_problems(policy, models, llms))

    if problems:
        raise ConfigError(problems, source)
    return Profile(
        name=name,
        description=top.description or "",
        default_model=default,  # type: ignore[arg-type]
        models=models,
        memory_budget_mb=top.memory_budget_mb,
        source=source,
        policy=policy,
    )


def _declared_llms(raw_models: Any) -> list[str]:
    """The well-named models written as llm models (valid or not): what
    ``default_model`` could name."""
    if not isinstance(raw_models, Mapping):
        return []
    out = []
    for name, data in raw_models.items():
        if _name_problem(name) is not None:
            continue
        kind = data.get("type", "llm") if isinstance(data, Mapping) else "llm"
        if isinstance(kind, str) and kind.strip().lower() == "llm":
            out.append(name)
    return out


def _default_problems(
    default: str, models: dict[str, ProfileModel], named: list[str], llms: list[str]
) -> list[ConfigProblem]:
    """``default_model`` must name an llm model of the profile. ``models`` are those
    that parsed; ``named`` every name written under ``models``; ``llms`` the
    well-named ones written as llm models."""
    if default not in named:
        close = difflib.get_close_matches(default, named, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return [ConfigProblem("default_model", f"{default!r} is not a model of this profile ({hint}the models are: {', '.join(named)})")]
    model = models.get(default)
    if model is None or model.type == "llm":
        return []  # an invalid model has its own problems
    others = f"; the llm models are: {', '.join(llms)}" if llms else "; the profile has no llm model"
    return [ConfigProblem("default_model", f"{default!r} is an {model.type} model; the default model must be an llm model{others}")]


def load_profile(path: Path | str) -> Profile:
    """Read and validate the profile file ``path`` (its name is the file's stem)."""
    path = Path(path)
    data = load_yaml(read_text(path), path)
    return parse_profile(data, path.stem, path)


# ------------------------------------------------------------- implicit profile


def profile_from_config(config: Config) -> Profile:
    """The implicit ``default`` profile: one always-ready llm model named
    ``llm.served_name`` from ``llm.model``, with config.yaml's ``llm`` parameters."""
    llm = config.llm
    model = ProfileModel(
        source=llm.model,
        type="llm",
        n_ctx=llm.n_ctx,
        replicas=llm.replicas,
        parallel=llm.parallel,
        always_ready=True,
        params=ModelParams(
            temperature=llm.temperature,
            max_tokens=llm.max_tokens,
            n_threads=llm.n_threads,
            n_gpu_layers=llm.n_gpu_layers,
            chat_format=llm.chat_format,
        ),
        name=llm.served_name,
        path=llm.model_path,
    )
    return Profile(
        name=IMPLICIT_PROFILE_NAME,
        description="the llm section of config.yaml",
        default_model=llm.served_name,
        models={llm.served_name: model},
        memory_budget_mb=None,
        source=config.source,
    )
