"""The typed msting configuration: dataclasses, validation and loading.

``parse_config`` turns already-parsed YAML data into a :class:`Config`, collecting
*every* problem (unknown keys, wrong types, out-of-range values) before raising one
:class:`ConfigError`. ``load_config`` reads the user's ``config.yaml`` (or the shipped
``default.yaml``), then applies environment overrides.

``yaml`` is imported only inside the functions that parse or dump YAML, so importing
this module stays cheap.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from msting.config.paths import Paths
from msting.api.limits import DEFAULT_MAX_TOKENS, DEFAULT_TEMPERATURE, MAX_TOKENS, TEMPERATURE  # dependency-free: a request default must be a valid request value

BUILTIN_TINY = "builtin:tiny"
BUILTIN_TINY_NAME = "msting-tiny"
PORT_ENV_VAR = "MSTING_LLM_PORT"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DEFAULT_CONFIG_RESOURCE = "default.yaml"


# --------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with a configuration.

    ``key`` is dotted (``"llm_service.port"``), an environment variable name, or ``""``
    for problems with the file as a whole (such as YAML syntax errors, which also set
    ``line``, 1-based).
    """

    key: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        return f"{self.key}: {self.message}" if self.key else self.message


class ConfigError(Exception):
    """A configuration is unusable. ``str()`` gives one line per problem:
    ``<file>: llm_service.port: must be an integer between 1 and 65535, got 'abc'``."""

    def __init__(self, problems: list[ConfigProblem], source: Path | str | None = None) -> None:
        self.problems = list(problems)
        self.source = Path(source) if source is not None else None
        super().__init__(self.problems, self.source)

    def __str__(self) -> str:
        prefix = f"{self.source}: " if self.source is not None else ""
        return "\n".join(prefix + str(p) for p in self.problems)


# ------------------------------------------------------------------ value checkers


class _Bad(Exception):
    """Raised by a checker when a value does not fit."""


def _fmt_num(x: float) -> str:
    if float(x).is_integer() and abs(x) < 1e15:
        return str(int(x))  # 1048576, not 1.04858e+06
    return f"{x:g}"


@dataclass(frozen=True)
class _Bool:
    nullable: bool = False

    def describe(self) -> str:
        return "true or false"

    def check(self, v: Any) -> Any:
        if type(v) is not bool:
            raise _Bad
        return v


@dataclass(frozen=True)
class _Num:
    integer: bool
    lo: float | None = None
    lo_open: bool = False  # True: lo itself is not allowed
    hi: float | None = None
    hi_open: bool = False
    nullable: bool = False

    def describe(self) -> str:
        base = "an integer" if self.integer else "a number"
        lo, hi = self.lo, self.hi
        if lo is not None and hi is not None and not self.lo_open and not self.hi_open:
            return f"{base} between {_fmt_num(lo)} and {_fmt_num(hi)}"
        parts = []
        if lo is not None:
            parts.append(f"{'>' if self.lo_open else '>='} {_fmt_num(lo)}")
        if hi is not None:
            parts.append(f"{'<' if self.hi_open else '<='} {_fmt_num(hi)}")
        return " ".join([base, " and ".join(parts)]) if parts else base

    def check(self, v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise _Bad
        if isinstance(v, float):
            if not math.isfinite(v):
                raise _Bad
            if self.integer:
                if not v.is_integer():
                    raise _Bad
                v = int(v)
        if not self.integer:
            v = float(v)
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            raise _Bad
        if self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi):
            raise _Bad
        return v


@dataclass(frozen=True)
class _Str:
    nullable: bool = False
    choices: tuple[str, ...] | None = None  # compared case-insensitively, stored upper-case
    pattern: str | None = None
    pattern_desc: str | None = None

    def describe(self) -> str:
        if self.choices:
            return "one of " + ", ".join(self.choices)
        return self.pattern_desc or "a non-empty string"

    def check(self, v: Any) -> Any:
        if not isinstance(v, str) or not v.strip():
            raise _Bad
        if self.choices:
            if v.strip().upper() not in self.choices:
                raise _Bad
            return v.strip().upper()
        if self.pattern and not re.fullmatch(self.pattern, v):
            raise _Bad
        return v


@dataclass(frozen=True)
class _StrList:
    nullable: bool = False

    def describe(self) -> str:
        return "a list of non-empty strings"

    def check(self, v: Any) -> Any:
        if not isinstance(v, list) or not all(isinstance(x, str) and x.strip() for x in v):
            raise _Bad
        return tuple(x.strip() for x in v)


def _opt(default: Any, spec: Any) -> Any:
    return field(default=default, metadata={"spec": spec})


def _section(cls: type) -> Any:
    return field(default_factory=cls, metadata={"section": cls})


_POSITIVE = _Num(integer=False, lo=0, lo_open=True)
_NON_NEGATIVE = _Num(integer=False, lo=0)
_LEVEL = _Str(choices=LOG_LEVELS)
_ENV_NAME = _Str(pattern=r"[A-Za-z_][A-Za-z0-9_]*", pattern_desc="an environment variable name (letters, digits, _)")


# ------------------------------------------------------------------------ schema


@dataclass(frozen=True)
class RestartPolicy:
    """How crashed workers are restarted (``llm_service.restart``)."""

    backoff_initial_sec: float = _opt(0.5, _POSITIVE)
    backoff_max_sec: float = _opt(60.0, _POSITIVE)
    backoff_multiplier: float = _opt(2.0, _Num(integer=False, lo=1))
    jitter: float = _opt(0.2, _Num(integer=False, lo=0, hi=1, hi_open=True))
    stable_after_sec: float = _opt(30.0, _POSITIVE)
    max_crashes: int = _opt(5, _Num(integer=True, lo=1))
    crash_window_sec: float = _opt(120.0, _POSITIVE)
    waiting_backoff_max_sec: float = _opt(0.25, _NON_NEGATIVE)
    fatal_retry_sec: float = _opt(300.0, _POSITIVE)

    def _cross_checks(self, prefix: str) -> list[ConfigProblem]:
        if self.backoff_max_sec < self.backoff_initial_sec:
            return [
                ConfigProblem(
                    _join(prefix, "backoff_max_sec"),
                    f"must be >= backoff_initial_sec ({_fmt_num(self.backoff_initial_sec)}), "
                    f"got {_fmt_num(self.backoff_max_sec)}",
                )
            ]
        return []


@dataclass(frozen=True)
class ServiceConfig:
    """The daemon and its HTTP API (``llm_service``)."""

    enabled: bool = _opt(True, _Bool())
    always_ready: bool = _opt(True, _Bool())
    host: str = _opt("127.0.0.1", _Str())
    port: int = _opt(8086, _Num(integer=True, lo=1, hi=65535))
    socket: str | None = _opt(None, _Str(nullable=True))
    health_interval_sec: float = _opt(30.0, _POSITIVE)
    startup_timeout_sec: float = _opt(120.0, _POSITIVE)
    hang_timeout_sec: float = _opt(60.0, _POSITIVE)
    queue_size: int = _opt(64, _Num(integer=True, lo=1))
    drain_grace_sec: float = _opt(30.0, _NON_NEGATIVE)  # 0 = do not wait for in-flight work
    stop_timeout_sec: float = _opt(10.0, _POSITIVE)
    restart: RestartPolicy = _section(RestartPolicy)
    warm_spare: bool = _opt(True, _Bool())
    api_key_env_var: str = _opt("LLM_API_KEY", _ENV_NAME)
    allowed_hosts: tuple[str, ...] = _opt((), _StrList())


@dataclass(frozen=True)
class LLMConfig:
    """The model and its generation defaults (``llm``)."""

    default_service: str = _opt("local", _Str())
    model: str = _opt(BUILTIN_TINY, _Str())
    model_name: str | None = _opt(None, _Str(nullable=True))
    temperature: float = _opt(DEFAULT_TEMPERATURE, _Num(integer=False, lo=TEMPERATURE[0], hi=TEMPERATURE[1]))  # the API's own range
    max_tokens: int = _opt(DEFAULT_MAX_TOKENS, _Num(integer=True, lo=MAX_TOKENS[0], hi=MAX_TOKENS[1]))
    n_ctx: int = _opt(2048, _Num(integer=True, lo=16))
    n_threads: int | None = _opt(None, _Num(integer=True, lo=1, nullable=True))
    n_gpu_layers: int = _opt(0, _Num(integer=True, lo=-1))
    replicas: int = _opt(1, _Num(integer=True, lo=1, hi=64))
    chat_format: str | None = _opt(None, _Str(nullable=True))

    @property
    def is_builtin(self) -> bool:
        return self.model == BUILTIN_TINY

    @property
    def model_path(self) -> Path | None:
        """The model file (``~`` expanded), or None for the builtin model."""
        return None if self.is_builtin else Path(self.model).expanduser()

    @property
    def served_name(self) -> str:
        """The name the model is served under."""
        if self.model_name:
            return self.model_name
        if self.is_builtin:
            return BUILTIN_TINY_NAME
        return Path(self.model).stem

    def _cross_checks(self, prefix: str) -> list[ConfigProblem]:
        if self.model.startswith("builtin:") and not self.is_builtin:
            return [
                ConfigProblem(
                    _join(prefix, "model"),
                    f"unknown builtin model {self.model!r}; the only one is {BUILTIN_TINY!r}",
                )
            ]
        return []


@dataclass(frozen=True)
class LoggingConfig:
    """Daemon logging (``logging``)."""

    console_level: str = _opt("WARNING", _LEVEL)
    file_level: str = _opt("INFO", _LEVEL)
    file: str | None = _opt(None, _Str(nullable=True))
    max_bytes: int = _opt(10485760, _Num(integer=True, lo=0))
    backups: int = _opt(3, _Num(integer=True, lo=0))


@dataclass(frozen=True)
class Config:
    """The whole configuration. ``source`` is the file it was read from, or None for
    the shipped defaults."""

    llm_service: ServiceConfig = _section(ServiceConfig)
    llm: LLMConfig = _section(LLMConfig)
    logging: LoggingConfig = _section(LoggingConfig)
    source: Path | None = None

    @property
    def url(self) -> str:
        host = self.llm_service.host
        if ":" in host and not host.startswith("["):  # IPv6 literal
            host = f"[{host}]"
        return f"http://{host}:{self.llm_service.port}"

    def socket_path(self, paths: Paths) -> Path:
        if self.llm_service.socket:
            return Path(self.llm_service.socket).expanduser()
        return paths.default_socket

    def log_file(self, paths: Paths) -> Path:
        if self.logging.file:
            return Path(self.logging.file).expanduser()
        return paths.daemon_log

    def as_dict(self) -> dict[str, Any]:
        """The configuration as plain data (without ``source``), e.g. for display."""
        d = asdict(self)
        d.pop("source", None)
        return d


# -------------------------------------------------------------------- validation


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _show(v: Any) -> str:
    """A value as the user wrote it (YAML-ish), for error messages."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        r = repr(v)
        return r if len(r) <= 80 else r[:77] + "...'"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, Mapping):
        return "a mapping"
    if isinstance(v, (list, tuple)):
        return "a list"
    return type(v).__name__


def _schema_fields(cls: type) -> dict[str, Any]:
    return {f.name: f for f in fields(cls) if "spec" in f.metadata or "section" in f.metadata}


def _all_keys(cls: type = Config, prefix: str = "") -> list[str]:
    out: list[str] = []
    for name, f in _schema_fields(cls).items():
        dotted = _join(prefix, name)
        out.append(dotted)
        if "section" in f.metadata:
            out.extend(_all_keys(f.metadata["section"], dotted))
    return out


def _unknown_key_message(prefix: str, key: str, known: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return f"unknown key (did you mean {close[0]!r}?)"
    here = _join(prefix, key)
    elsewhere = [k for k in _all_keys() if k.rsplit(".", 1)[-1] == key and k != here]
    if elsewhere:
        return f"unknown key here (did you mean {elsewhere[0]!r}?)"
    return "unknown key (expected one of: " + ", ".join(known) + ")"


def _build(cls: type, data: Any, prefix: str, problems: list[ConfigProblem]) -> Any:
    if data is None:  # "llm:" with nothing under it
        data = {}
    if not isinstance(data, Mapping):
        if prefix:
            msg = f"must be a mapping of keys to values, got {_show(data)}"
        else:
            msg = f"the top level must be a mapping of keys to values, got {_show(data)}"
        problems.append(ConfigProblem(prefix, msg))
        return cls()
    known = _schema_fields(cls)
    values: dict[str, Any] = {}
    before = len(problems)
    for raw_key, v in data.items():
        key = raw_key if isinstance(raw_key, str) else _show(raw_key)
        dotted = _join(prefix, key)
        f = known.get(raw_key) if isinstance(raw_key, str) else None
        if f is None:
            problems.append(ConfigProblem(dotted, _unknown_key_message(prefix, key, list(known))))
            continue
        if "section" in f.metadata:
            values[f.name] = _build(f.metadata["section"], v, dotted, problems)
            continue
        spec = f.metadata["spec"]
        if v is None and spec.nullable:
            values[f.name] = None
            continue
        try:
            values[f.name] = spec.check(v)
        except _Bad:
            expected = spec.describe() + (" or null" if spec.nullable else "")
            problems.append(ConfigProblem(dotted, f"must be {expected}, got {_show(v)}"))
    obj = cls(**values)
    cross = getattr(obj, "_cross_checks", None)
    if cross is not None and len(problems) == before:
        problems.extend(cross(prefix))
    return obj


def _resolve_path(value: str | None, base: Path | None) -> str | None:
    """Expand ``~`` and make a relative path relative to ``base`` (the config's dir)."""
    if value is None:
        return None
    p = Path(value).expanduser()
    if not p.is_absolute() and base is not None:
        p = base / p
    return str(p)


def parse_config(data: object, source: Path | None) -> Config:
    """Validate parsed YAML data (``None`` means all defaults) into a Config.

    Every problem is collected before one ConfigError is raised. When ``source`` is
    given, relative paths (``llm.model``, ``llm_service.socket``, ``logging.file``) are
    taken relative to its directory.
    """
    source = Path(source) if source is not None else None
    problems: list[ConfigProblem] = []
    cfg: Config = _build(Config, data, "", problems)
    if problems:
        raise ConfigError(problems, source)
    base = source.parent if source is not None else None
    llm = cfg.llm
    if not llm.is_builtin and not llm.model.startswith("builtin:"):
        llm = replace(llm, model=_resolve_path(llm.model, base))
    return replace(
        cfg,
        llm=llm,
        llm_service=replace(cfg.llm_service, socket=_resolve_path(cfg.llm_service.socket, base)),
        logging=replace(cfg.logging, file=_resolve_path(cfg.logging.file, base)),
        source=source,
    )


# ----------------------------------------------------------------------- loading


def _yaml_loader() -> Any:
    """A SafeLoader that also rejects duplicate keys (PyYAML silently keeps the last).

    Built per call (microseconds) rather than cached, so the module holds no state."""
    import yaml

    class _Loader(yaml.SafeLoader):
        pass

    def construct_mapping(loader: Any, node: Any, deep: bool = False) -> Any:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = loader.construct_object(key_node)
            try:
                first = seen.get(key)
            except TypeError:
                continue
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first defined at line {first})", key_node.start_mark
                )
            seen[key] = key_node.start_mark.line + 1
        return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

    _Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    return _Loader


def _load_yaml(text: str, source: Path | None) -> Any:
    import yaml

    try:
        return yaml.load(text, Loader=_yaml_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        what = getattr(e, "problem", None) or str(e)
        context = getattr(e, "context", None)
        context_mark = getattr(e, "context_mark", None)
        if context:
            if context_mark is not None and mark is not None and context_mark.line != mark.line:
                context = f"{context} that started at line {context_mark.line + 1}"
            what = f"{what} ({context})"
        if mark is not None:
            line = mark.line + 1
            msg = f"invalid YAML at line {line}, column {mark.column + 1}: {what}"
        else:
            line = None
            msg = f"invalid YAML: {what}"
        raise ConfigError([ConfigProblem("", msg, line=line)], source) from None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError([ConfigProblem("", f"not valid UTF-8 text ({e.reason} at byte {e.start})")], path) from None
    except OSError as e:
        raise ConfigError([ConfigProblem("", f"cannot read: {e.strerror or e}")], path) from None


def _default_config_path() -> Path:
    return Path(__file__).with_name(DEFAULT_CONFIG_RESOURCE)


def default_config_text() -> str:
    """The text of the shipped ``default.yaml``."""
    from importlib import resources

    return resources.files("msting.config").joinpath(DEFAULT_CONFIG_RESOURCE).read_text(encoding="utf-8")


def _apply_env(cfg: Config, env: Mapping[str, str]) -> Config:
    raw = env.get(PORT_ENV_VAR)
    if raw is None or not raw.strip():
        return cfg
    try:
        port = int(raw.strip(), 10)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise ConfigError(
            [
                ConfigProblem(
                    PORT_ENV_VAR,
                    f"must be an integer between 1 and 65535, got {raw!r} "
                    "(this environment variable overrides llm_service.port)",
                )
            ],
            None,
        )
    return replace(cfg, llm_service=replace(cfg.llm_service, port=port))


def load_config(paths: Paths, env: Mapping[str, str] | None = None) -> Config:
    """Read ``paths.config_file`` (or the shipped defaults when it does not exist),
    validate it, then apply ``MSTING_LLM_PORT`` from ``env`` (default ``os.environ``).

    Raises ConfigError for any problem: unreadable file, YAML syntax, schema, or a bad
    environment override.
    """
    if env is None:
        env = os.environ
    path = paths.config_file
    if path.exists() or path.is_symlink():  # a dangling symlink is an error, not "no config"
        data = _load_yaml(_read_text(path), path)
        cfg = parse_config(data, path)
    else:
        default_path = _default_config_path()
        data = _load_yaml(default_config_text(), default_path)
        try:
            cfg = parse_config(data, None)
        except ConfigError as e:  # only if the shipped default itself is broken
            raise ConfigError(e.problems, default_path) from None
    return _apply_env(cfg, env)


# ------------------------------------------------------------------ user config


def _yaml_scalar(value: str) -> str:
    """``value`` as a YAML scalar: plain when that reads back unchanged, else quoted."""
    import json

    import yaml

    if "\n" not in value and "#" not in value:
        try:
            if yaml.safe_load(f"k: {value}\n") == {"k": value}:
                return value
        except yaml.YAMLError:
            pass
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a YAML double-quoted scalar


def _set_model_textually(text: str, scalar: str) -> str | None:
    """Set ``llm.model`` by editing ``text`` in place, keeping comments and layout.
    Returns None when the document's shape does not allow a safe textual edit."""
    import yaml

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    if root is None:  # empty, or only comments
        sep = "" if not text or text.endswith("\n") else "\n"
        return f"{text}{sep}llm:\n  model: {scalar}\n"
    if not isinstance(root, yaml.MappingNode) or root.flow_style:
        return None
    llm_node = None
    for k, v in root.value:
        if isinstance(k, yaml.ScalarNode) and k.value == "llm":
            llm_node = (k, v)
    if llm_node is None:
        sep = "" if text.endswith("\n") else "\n"
        return f"{text}{sep}llm:\n  model: {scalar}\n"
    llm_key, llm_val = llm_node

    if isinstance(llm_val, yaml.ScalarNode) and llm_val.tag == "tag:yaml.org,2002:null" and llm_val.value == "":
        # "llm:" with nothing under it: add the key on the next line.
        return _insert_after_colon_line(text, llm_key.end_mark.index, f"  model: {scalar}")
    if not isinstance(llm_val, yaml.MappingNode) or llm_val.flow_style or not llm_val.value:
        return None

    for k, v in llm_val.value:
        if isinstance(k, yaml.ScalarNode) and k.value == "model":
            if not isinstance(v, yaml.ScalarNode) or v.style in ("|", ">"):
                return None
            if v.value == "" and v.style is None:  # "model:" with no value
                colon = text.find(":", k.end_mark.index)
                if colon < 0:
                    return None
                return text[: colon + 1] + f" {scalar}" + text[colon + 1 :]
            return text[: v.start_mark.index] + scalar + text[v.end_mark.index :]

    # No model key under llm: add one, indented like the first existing key.
    first_key = llm_val.value[0][0]
    line_start = text.rfind("\n", 0, first_key.start_mark.index) + 1
    indent = text[line_start : first_key.start_mark.index]
    if indent.strip():
        return None
    return text[:line_start] + f"{indent}model: {scalar}\n" + text[line_start:]


def _insert_after_colon_line(text: str, pos: int, new_line: str) -> str:
    eol = text.find("\n", pos)
    if eol < 0:
        return f"{text}\n{new_line}\n"
    return text[: eol + 1] + new_line + "\n" + text[eol + 1 :]


def _model_of(text: str) -> Any:
    try:
        data = _load_yaml(text, None)
    except ConfigError:
        return None
    if isinstance(data, Mapping) and isinstance(data.get("llm"), Mapping):
        return data["llm"].get("model")
    return None


def _atomic_write(path: Path, text: str, mode: int) -> None:
    import tempfile

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_user_config(paths: Paths, *, model: str | None = None) -> Path:
    """Make sure the user's config file exists (a copy of ``default.yaml``), and if
    ``model`` is given set ``llm.model`` to it (made absolute unless it is a
    ``builtin:`` name). Comments are kept when the file allows a textual edit;
    otherwise the file is re-written with yaml (and loses its comments).

    Idempotent: running it again with the same arguments changes nothing.
    Returns the path of the user's config file.
    """
    path = paths.config_file
    path.parent.mkdir(parents=True, exist_ok=True)
    if not (path.exists() or path.is_symlink()):
        _atomic_write(path, default_config_text(), 0o644)
    if model is None:
        return path

    value = model if model.startswith("builtin:") else os.path.abspath(os.path.expanduser(model))
    text = _read_text(path)
    new = _set_model_textually(text, _yaml_scalar(value))
    if new is None or _model_of(new) != value:
        new = _set_model_by_dump(text, value, path)
    if new != text:
        try:
            mode = path.stat().st_mode & 0o777
        except OSError:
            mode = 0o644
        _atomic_write(path, new, mode)  # replaces a symlink rather than writing through it
    return path


def _set_model_by_dump(text: str, value: str, path: Path) -> str:
    import yaml

    data = _load_yaml(text, path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([ConfigProblem("", f"the top level must be a mapping of keys to values, got {_show(data)}")], path)
    llm = data.get("llm")
    if llm is None:
        llm = data["llm"] = {}
    elif not isinstance(llm, dict):
        raise ConfigError([ConfigProblem("llm", f"must be a mapping of keys to values, got {_show(llm)}")], path)
    llm["model"] = value
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)
