"""Profiles: YAML files naming the models to serve, their parameters and the default.

A profile lives in ``<config dir>/profiles/<name>.yaml`` (``Paths.profiles_dir``;
``$MSTING_HOME/config/profiles`` when MSTING_HOME is set); msting ships examples in
``msting/config/profiles`` (``config/profiles`` at the top of the repo). A user
file wins over a shipped example of the same name. Without a profile, the ``llm``
section of ``config.yaml`` is the implicit profile (:func:`profile_from_config`).

Validation happens in two steps, and both list *every* problem:

* :func:`parse_profile` / :func:`load_profile`: the schema (keys, types, ranges,
  model names, sources, ``default_model``), raising :class:`ConfigError` with dotted
  keys such as ``models.story.n_ctx``;
* :func:`check_files`: every model file exists, is readable and really is GGUF (its
  header and metadata parse); the built-in model is written if needed.

Then :func:`estimate_profile` and :func:`msting.models.memory.preflight` compare the
memory needed with what is available.

The fields are declared with :mod:`msting.config.fields`; ``yaml`` and the GGUF
modules are imported only when used, so importing this module stays cheap.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from msting.config.errors import ConfigError, ConfigProblem
from msting.config.fields import Bool, Choice, Num, Str, Text, UnknownKey, build, join, opt, same_as, schema_fields, section, show, split_known
from msting.config.paths import Paths
from msting.config.schema import BUILTIN_TINY, BUILTIN_TINY_NAME, Config, LLMConfig
from msting.config.yamlio import load_yaml, read_text

if TYPE_CHECKING:
    from msting.models.gguf_file import GGUFInfo
    from msting.models.memory import MemoryEstimate

PROFILE_SUFFIXES = (".yaml", ".yml")  # .yaml wins when both exist
SHIPPED_PROFILES_RESOURCE = "profiles"
IMPLICIT_PROFILE_NAME = "default"
MODEL_TYPES = ("llm", "embeddings")
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]*"
NAME_RULE = "letters, digits, '.', '_' and '-', starting with a letter or digit"
# "default" (and "") already mean "the profile's default model" in requests.
RESERVED_MODEL_NAMES = frozenset({"default"})
DOWNLOAD_SCHEMES = ("http://", "https://", "hf://")
DOWNLOADS_UNSUPPORTED = "downloads are not supported yet; download the file and give its path"
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
    whose file lives in the models folder (:func:`check_files`
    writes it). ``keep_alive_sec`` applies to on-demand models (``always_ready: false``):
    they load when first requested and unload when idle that long.
    """

    source: str | None = opt(None, Str())
    type: str = opt("llm", Choice(MODEL_TYPES))
    n_ctx: int = same_as(LLMConfig, "n_ctx")
    replicas: int = same_as(LLMConfig, "replicas")
    always_ready: bool = opt(True, Bool())
    keep_alive_sec: float = opt(300.0, Num(integer=False, lo=0, lo_open=True))
    params: ModelParams = section(ModelParams)
    name: str = ""
    path: Path | None = None

    @property
    def is_builtin(self) -> bool:
        return self.source == BUILTIN_TINY

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
        elif not model.is_builtin:
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

    if problems:
        raise ConfigError(problems, source)
    return Profile(
        name=name,
        description=top.description or "",
        default_model=default,  # type: ignore[arg-type]
        models=models,
        memory_budget_mb=top.memory_budget_mb,
        source=source,
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
    """The folder of the shipped example profiles (``msting/config/profiles``)."""
    return Path(__file__).with_name(SHIPPED_PROFILES_RESOURCE)


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
    :func:`check_files` does that); an invalid one is
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
    :func:`check_files` is the caller's next step).

    ``default`` is the user's ``profiles/default.yaml`` when there is one, else the
    implicit profile from config.yaml's ``llm`` section (:func:`profile_from_config`;
    with an untouched config it serves what the shipped ``default.yaml`` does, and
    ``msting llm install --model`` keeps working). Any other name is looked up with
    :func:`find_profile` (raises ProfileNotFound) and read with :func:`load_profile`.
    """
    if name == IMPLICIT_PROFILE_NAME and name not in _profile_files(paths.profiles_dir):
        return profile_from_config(config)
    return load_profile(find_profile(paths, name))



# llama_pooling_type values, as GGUF files declare them in {arch}.pooling_type
_POOLING_NAMES = {0: "none", 1: "mean", 2: "cls", 3: "last", 4: "rank"}


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
                if not path.exists():
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
    arch = info.arch or "unknown"
    pooling_value = info.metadata.get(f"{arch}.pooling_type")
    pooling = _POOLING_NAMES.get(pooling_value) if isinstance(pooling_value, int) else None
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
    GGUF header in ``infos`` (from :func:`inspect_files`), in profile order."""
    from msting.models.memory import estimate_model

    return {
        name: estimate_model(info, m.n_ctx, m.replicas, embedding=m.embedding, name=name)
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



def describe_profiles(paths: Paths, config: Config) -> list[dict[str, Any]]:
    """Every profile as plain (JSON-ready) data, sorted by name: what
    :func:`list_profiles` finds, with ``default``
    as :func:`load_named_profile` sees it, each
    checked in full (schema, then model files) and estimated.

    Each item: ``name``, ``description``, ``source`` (the file, or config.yaml for
    the implicit default), ``shipped``, ``implicit``, ``valid``, ``problems``
    (``"key: message"`` strings), ``default_model``, ``memory_budget_mb``,
    ``estimated_bytes`` (every model loaded at once, shared files counted once; None
    unless valid), ``always_ready_bytes`` (the always-ready models only) and
    ``models``: ``name``, ``type``, ``source``, ``n_ctx``, ``replicas``,
    ``always_ready``, ``keep_alive_sec``, ``params``, ``estimated_bytes``.

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
