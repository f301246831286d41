"""config.yaml: the typed :class:`Config` (its sections as frozen dataclasses, declared
with :mod:`msting.config.fields`), its validation and its loading.

``parse_config`` turns already-parsed YAML data into a :class:`Config`, collecting
*every* problem (unknown keys, wrong types, out-of-range values) before raising one
:class:`ConfigError`. ``load_config`` reads the user's ``config.yaml`` (or the shipped
``default.yaml``), then applies environment overrides. The remote services of
``llm.services`` are declared in :mod:`msting.config.services`. Writing the user's file is
:mod:`msting.config.editor`'s job.

``yaml`` is imported only inside the functions that parse YAML, so importing this
module stays cheap.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from msting.api.limits import DEFAULT_MAX_TOKENS, DEFAULT_TEMPERATURE, MAX_TOKENS, TEMPERATURE  # dependency-free: a request default must be a valid request value
from msting.config.errors import ConfigError, ConfigProblem
from msting.config.fields import ENV_VAR_NAME, Bool, Choice, Num, Str, StrList, build, fmt_num, join, opt, plain, schema_fields, section
from msting.config.paths import Paths
from msting.config.policy import ClientPolicy, LocalPolicy, UsageConfig, clients_field
from msting.config.services import BUILTIN_SERVICES, RemoteServiceConfig, services_field
from msting.config.yamlio import load_yaml, read_text
from msting.models.builtin import BUILTIN_NAME, BUILTIN_SOURCE

BUILTIN_TINY = BUILTIN_SOURCE  # the built-in model's source and name (msting.models.builtin writes it)
BUILTIN_TINY_NAME = BUILTIN_NAME
PORT_ENV_VAR = "MSTING_LLM_PORT"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DEFAULT_CONFIG_RESOURCE = "default.yaml"

_POSITIVE = Num(integer=False, lo=0, lo_open=True)
_NON_NEGATIVE = Num(integer=False, lo=0)
_LEVEL = Choice(LOG_LEVELS, upper=True)


# ------------------------------------------------------------------------ schema


@dataclass(frozen=True)
class RestartPolicy:
    """How crashed workers are restarted (``llm_service.restart``)."""

    backoff_initial_sec: float = opt(0.5, _POSITIVE)
    backoff_max_sec: float = opt(60.0, _POSITIVE)
    backoff_multiplier: float = opt(2.0, Num(integer=False, lo=1))
    jitter: float = opt(0.2, Num(integer=False, lo=0, hi=1, hi_open=True))
    stable_after_sec: float = opt(30.0, _POSITIVE)
    max_crashes: int = opt(5, Num(integer=True, lo=1))
    crash_window_sec: float = opt(120.0, _POSITIVE)
    waiting_backoff_max_sec: float = opt(0.25, _NON_NEGATIVE)
    fatal_retry_sec: float = opt(300.0, _POSITIVE)

    def cross_checks(self, prefix: str) -> list[ConfigProblem]:
        if self.backoff_max_sec < self.backoff_initial_sec:
            return [
                ConfigProblem(
                    join(prefix, "backoff_max_sec"),
                    f"must be >= backoff_initial_sec ({fmt_num(self.backoff_initial_sec)}), "
                    f"got {fmt_num(self.backoff_max_sec)}",
                )
            ]
        return []


@dataclass(frozen=True)
class PowerSaving:
    """Unloading idle on-demand models sooner under memory pressure (``llm_service.power_saving``).

    There is pressure when the memory available (psutil's ``available``) is below
    ``min_available_mb``, or when the models loaded are estimated to use at least
    ``budget_used_percent`` of the active profile's ``memory_budget_mb`` (a profile without a
    budget has only the first test). Under pressure an on-demand model idle for
    ``idle_sec`` is unloaded, whatever its keep-alive; always-ready models never are."""

    enabled: bool = opt(False, Bool())
    idle_sec: float = opt(30.0, _NON_NEGATIVE)
    min_available_mb: int = opt(1024, Num(integer=True, lo=0))
    budget_used_percent: float = opt(90.0, Num(integer=False, lo=0, lo_open=True, hi=100))


@dataclass(frozen=True)
class ServiceConfig:
    """The daemon and its HTTP API (``llm_service``)."""

    enabled: bool = opt(True, Bool())
    always_ready: bool = opt(True, Bool())
    host: str = opt("127.0.0.1", Str())
    port: int = opt(8086, Num(integer=True, lo=1, hi=65535))
    socket: str | None = opt(None, Str(nullable=True))
    health_interval_sec: float = opt(30.0, _POSITIVE)
    startup_timeout_sec: float = opt(120.0, _POSITIVE)
    hang_timeout_sec: float = opt(60.0, _POSITIVE)
    queue_size: int = opt(64, Num(integer=True, lo=1))
    drain_grace_sec: float = opt(30.0, _NON_NEGATIVE)  # 0 = do not wait for in-flight work
    stop_timeout_sec: float = opt(10.0, _POSITIVE)
    restart: RestartPolicy = section(RestartPolicy)
    warm_spare: bool = opt(True, Bool())
    api_key_env_var: str = opt("LLM_API_KEY", ENV_VAR_NAME)
    allowed_hosts: tuple[str, ...] = opt((), StrList())
    metrics_public: bool = opt(False, Bool())  # GET /metrics without the API key (for a scraper)
    power_saving: PowerSaving = section(PowerSaving)


@dataclass(frozen=True)
class LLMConfig:
    """The model and its generation defaults, and the remote services (``llm``).

    Requests go to ``service~model``, a bare model name to ``default_service``: one of
    :attr:`service_names` (the built-in "local" and "stub", then the configured
    ``services``, a tuple of :class:`~msting.config.services.RemoteServiceConfig` in
    the order written; look one up with :meth:`service`). ``fallback_chain`` names the
    services tried in order when one fails."""

    default_service: str = opt("local", Str())
    model: str = opt(BUILTIN_TINY, Str())
    model_name: str | None = opt(None, Str(nullable=True))
    temperature: float = opt(DEFAULT_TEMPERATURE, Num(integer=False, lo=TEMPERATURE[0], hi=TEMPERATURE[1]))  # the API's own range
    max_tokens: int = opt(DEFAULT_MAX_TOKENS, Num(integer=True, lo=MAX_TOKENS[0], hi=MAX_TOKENS[1]))
    n_ctx: int = opt(2048, Num(integer=True, lo=16))
    n_threads: int | None = opt(None, Num(integer=True, lo=1, nullable=True))
    n_gpu_layers: int = opt(0, Num(integer=True, lo=-1))
    replicas: int = opt(1, Num(integer=True, lo=1, hi=64))
    parallel: int | None = opt(None, Num(integer=True, lo=1, hi=64, nullable=True))  # slots per worker; null = automatic
    chat_format: str | None = opt(None, Str(nullable=True))
    fallback_chain: tuple[str, ...] = opt((), StrList())
    services: tuple[RemoteServiceConfig, ...] = services_field()
    local: LocalPolicy = section(LocalPolicy)  # the local service's rate limits and prices (msting.config.policy)
    clients: tuple[ClientPolicy, ...] = clients_field()
    rate_limit_max_wait_sec: float = opt(30.0, _NON_NEGATIVE)  # a request over a limit waits this long at most for room
    usage: UsageConfig = section(UsageConfig)

    @property
    def service_names(self) -> tuple[str, ...]:
        """Every service a request can name: "local", "stub", then the configured ones."""
        return BUILTIN_SERVICES + tuple(s.name for s in self.services)

    def service(self, name: str) -> RemoteServiceConfig | None:
        """The configured service ``name``; None for a built-in or unknown name."""
        return next((s for s in self.services if s.name == name), None)

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

    def cross_checks(self, prefix: str) -> list[ConfigProblem]:
        problems = []
        if self.model.startswith("builtin:") and not self.is_builtin:
            problems.append(
                ConfigProblem(
                    join(prefix, "model"),
                    f"unknown builtin model {self.model!r}; the only one is {BUILTIN_TINY!r}",
                )
            )
        if self.default_service not in self.service_names:
            problems.append(ConfigProblem(join(prefix, "default_service"), self._unknown_service(self.default_service)))
        seen: set[str] = set()
        for name in self.fallback_chain:
            if name in seen:
                problems.append(ConfigProblem(join(prefix, "fallback_chain"), f"{name!r} is listed twice"))
            elif name not in self.service_names:
                problems.append(ConfigProblem(join(prefix, "fallback_chain"), self._unknown_service(name)))
            seen.add(name)
        return problems

    def _unknown_service(self, name: str) -> str:
        import difflib

        known = self.service_names
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        more = "" if self.services else "; configure others under llm.services"
        return f"{name!r} is not a service ({hint}the services are: {', '.join(known)}{more})"


@dataclass(frozen=True)
class ModelsConfig:
    """Installing models (``models``): where the Ollama registry is, how downloads retry."""

    ollama_registry: str = opt("https://registry.ollama.ai", Str())
    stall_timeout_sec: float = opt(30.0, _POSITIVE)
    max_retries: int = opt(8, Num(integer=True, lo=0, hi=100))


@dataclass(frozen=True)
class LoggingConfig:
    """Daemon logging (``logging``)."""

    console_level: str = opt("WARNING", _LEVEL)
    file_level: str = opt("INFO", _LEVEL)
    file: str | None = opt(None, Str(nullable=True))
    max_bytes: int = opt(10485760, Num(integer=True, lo=0))
    backups: int = opt(3, Num(integer=True, lo=0))


@dataclass(frozen=True)
class Config:
    """The whole configuration. ``source`` is the file it was read from, or None for
    the shipped defaults."""

    llm_service: ServiceConfig = section(ServiceConfig)
    llm: LLMConfig = section(LLMConfig)
    models: ModelsConfig = section(ModelsConfig)
    logging: LoggingConfig = section(LoggingConfig)
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
        """The configuration as plain data (without ``source``), e.g. for display: an
        API key shows as ``"***"``, ``llm.services`` as the mapping it was written as."""
        d = plain(self)
        d.pop("source", None)
        return d


# -------------------------------------------------------------------- validation


def _all_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Every key of ``cls``, dotted; an entry of a named mapping is ``<name>``."""
    out: list[str] = []
    for name, f in schema_fields(cls).items():
        dotted = join(prefix, name)
        out.append(dotted)
        if "section" in f.metadata:
            out.extend(_all_keys(f.metadata["section"], dotted))
        elif "named" in f.metadata:
            out.extend(_all_keys(f.metadata["named"].cls, join(dotted, "<name>")))
    return out


def _key_near(template: str, here: str) -> str:
    """``template`` (from :func:`_all_keys`) with each ``<name>`` taken from ``here``
    where the two agree up to it: ``llm.services.<name>.upstream.x`` near
    ``llm.services.lan.x`` is ``llm.services.lan.upstream.x``."""
    t, h = template.split("."), here.split(".")
    for i, part in enumerate(t):
        if part == "<name>" and i < len(h) and t[:i] == h[:i]:
            t[i] = h[i]
    return ".".join(t)


def _shared(a: str, b: str) -> int:
    """How many leading dotted parts ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(a.split("."), b.split(".")):
        if x != y:
            break
        n += 1
    return n


def _unknown_key_message(prefix: str, key: str, known: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return f"unknown key (did you mean {close[0]!r}?)"
    here = join(prefix, key)
    elsewhere = [_key_near(k, here) for k in _all_keys() if k.rsplit(".", 1)[-1] == key]
    elsewhere = [k for k in elsewhere if k != here]
    if elsewhere:
        # a real key before a "<name>" one, then the nearest; the first of equals
        nearest = max(elsewhere, key=lambda k: ("<name>" not in k, _shared(k, here)))
        return f"unknown key here (did you mean {nearest!r}?)"
    return "unknown key (expected one of: " + ", ".join(known) + ")"


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
    cfg: Config = build(Config, data, "", problems, _unknown_key_message)
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
        data = load_yaml(read_text(path), path)
        cfg = parse_config(data, path)
    else:
        default_path = _default_config_path()
        data = load_yaml(default_config_text(), default_path)
        try:
            cfg = parse_config(data, None)
        except ConfigError as e:  # only if the shipped default itself is broken
            raise ConfigError(e.problems, default_path) from None
    return _apply_env(cfg, env)
