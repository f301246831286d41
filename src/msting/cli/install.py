"""``msting llm install``: dependencies, config, model, daemon, checks. Safe to re-run.

It succeeds only once the model has really generated tokens through the daemon.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from msting.cli.exit_codes import ExitCode
from msting.cli.output import BUILTIN_MODEL_NOTE, CommandError, Terminal, fmt_ms, fmt_rate, log_tails

PIP_PACKAGE = "llama-cpp-python>=0.3"
PIP_TAIL_LINES = 20


class Steps:
    """Numbered, visible steps; remembers each outcome for the JSON report."""

    def __init__(self, term: Terminal, names: list[str], report: dict[str, Any]) -> None:
        self.term = term
        self.names = names
        self.report = report
        report["steps"] = []
        self.current: str | None = None

    def begin(self, name: str, title: str) -> None:
        self.current = name
        self.term.step(self.names.index(name) + 1, len(self.names), title)

    def done(self, detail: str, skipped: bool = False) -> None:
        (self.term.step_skip if skipped else self.term.step_ok)(detail)
        self.report["steps"].append({"name": self.current, "ok": True, "skipped": skipped, "detail": detail})

    def failing(self, exc: CommandError) -> CommandError:
        exc.step = exc.step or self.current
        if not self.term.json_mode:
            self.term.step_fail(exc.message.splitlines()[0])
        self.report["steps"].append({"name": exc.step, "ok": False, "detail": exc.message})
        return exc


def install(
    model: Annotated[
        Optional[str],
        typer.Option("--model", metavar="PATH|SOURCE", help="A GGUF model file to serve, or a source to pull it from first "
                     "(hf://ORG/REPO[/FILE.gguf|:QUANT], ollama://NAME:TAG, https://.../FILE.gguf); default: the built-in test model."),
    ] = None,
    no_deps: Annotated[bool, typer.Option("--no-deps", help="Do not pip-install llama-cpp-python when it is missing.")] = False,
    no_start: Annotated[bool, typer.Option("--no-start", help="Only prepare dependencies, config and model; do not start the daemon.")] = False,
    timeout: Annotated[
        Optional[float],
        typer.Option("--timeout", min=0, metavar="S", help="Seconds to wait for the daemon and each check (default: startup_timeout_sec + 10)."),
    ] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print one JSON object to stdout (progress goes to stderr).")] = False,
) -> None:
    """Install and verify the local LLM service: deps, config, model, daemon, checks."""
    term = Terminal(json_)
    report: dict[str, Any] = {}
    names = ["dependencies", "config", "model"] if no_start else ["dependencies", "config", "model", "daemon", "checks"]
    steps = Steps(term, names, report)
    with term.failures(json_extra=report):
        try:
            summary = _install(term, steps, model, no_deps, no_start, timeout)
        except CommandError as exc:
            raise steps.failing(exc) from None
    report.update(summary)
    if json_:
        term.emit_json({"ok": True, **report})
    else:
        _print_summary(term, summary)


def _install(term: Terminal, steps: Steps, model: str | None, no_deps: bool, no_start: bool, timeout: float | None) -> dict[str, Any]:
    steps.begin("dependencies", "Python dependencies (llama-cpp-python)")
    steps.done(*_ensure_deps(term, no_deps))

    from msting.cli.manage import is_source

    source = model if model is not None and is_source(model) else None
    steps.begin("config", "configuration")
    env, detail = _write_config(None if source else model)
    steps.done(detail)

    steps.begin("model", "model file")
    if source is not None:
        env = _pull_model(term, env, source, no_start, timeout)
    model_path, detail = _check_model(env)
    steps.done(f"pulled {source}: {detail}" if source else detail)

    llm = env.config.llm
    summary: dict[str, Any] = {
        "model": {"name": llm.served_name, "path": str(model_path), "builtin": bool(llm.is_builtin)},
        "config_file": str(env.paths.config_file),
        "socket": str(env.socket_path),
        "url": env.url,
    }
    gpu = _gpu_backend(term, env)
    if gpu is not None:
        summary["gpu"] = gpu
    if llm.is_builtin:
        summary["note"] = BUILTIN_MODEL_NOTE
    if no_start:
        summary["daemon"] = None
        return summary

    from msting.cli.control import start_daemon, stop_daemon

    wait = env.startup_timeout if timeout is None else timeout
    steps.begin("daemon", "daemon")
    if env.is_running():
        term.info("a daemon is running; restarting it so that the current config applies")
        stop_daemon(term, env, env.stop_timeout)
    started = start_daemon(term, env, wait)
    steps.done(f"ready (pid {started['pid']}, {started['startup_sec']:.1f} s)")
    summary["pid"] = started["pid"]

    from msting.cli.health import checks_json, run_checks

    steps.begin("checks", "readiness checks")
    checks = run_checks(term, env, wait)
    result = checks_json(checks)
    summary["checks"] = result["checks"]
    if not result["ok"]:
        failed = next(c for c in checks if c.ok is False)
        raise CommandError(
            f"check '{failed.name}' failed: {failed.detail}",
            ExitCode.TIMEOUT if failed.timed_out else ExitCode.FAILED,
            logs=log_tails([("daemon log", env.log_file, 0)]),
            data={"checks": result["checks"]},
        )
    steps.done("all checks passed")
    load = next(c for c in checks if c.name == "load").data
    gen = next(c for c in checks if c.name == "generate").data
    backend = (load.get("info") or {}).get("backend")
    if not backend:
        backend = "gpu" if env.config.llm.n_gpu_layers else "cpu"
    summary["model"]["name"] = load.get("model") or llm.served_name
    summary["model"]["path"] = (load.get("info") or {}).get("path") or str(model_path)
    summary.update(backend=str(backend).upper(), load_ms=load.get("load_ms"), tokens_per_sec=gen.get("tokens_per_sec"))
    return summary


# ------------------------------------------------------------------------- steps


def _gpu_backend(term: Terminal, env: Any) -> dict[str, Any] | None:
    """The GPU backend a worker will use, from the hardware and what llama-cpp-python was
    built with (msting.hardware, in a child process); None without llama_cpp."""
    from msting import hardware

    llama = hardware.probe()
    if not llama.get("importable"):
        return None
    gpu = hardware.describe(llama, hardware.gpu_hardware(), int(env.config.llm.n_gpu_layers))
    term.info(f"  backend: {gpu['line']}")
    if gpu["hint"]:
        term.warn(gpu["hint"])
    return {k: gpu[k] for k in ("backend", "line", "compiled", "hardware", "gpu_devices", "hint")}


def _pull_model(term: Terminal, env: Any, source: str, no_start: bool, timeout: float | None) -> Any:
    """Download *source* through the daemon (`msting llm pull`'s job and progress; the
    daemon is started for it when it is not running, and stopped again after it with
    --no-start), then point llm.model at the installed file. The new Env."""
    from msting.cli.control import start_daemon, stop_daemon
    from msting.cli.manage import pull_for_install
    from msting.cli.status import connect, daemon_errors

    was_running = env.is_running()
    if not was_running:
        term.info("  starting the daemon to download the model")
        start_daemon(term, env, env.startup_timeout if timeout is None else timeout)
    try:
        with connect(env, timeout=30.0) as client, daemon_errors(env):
            result = pull_for_install(term, client, source)
    finally:
        if no_start and not was_running:
            stop_daemon(term, env, env.stop_timeout)
    if not result.get("path"):
        raise CommandError(f"the pull of {source} succeeded but the daemon did not say where the file is", ExitCode.FAILED)
    new_env, _ = _write_config(str(result["path"]))
    return new_env


def _ensure_deps(term: Terminal, no_deps: bool) -> tuple[str, bool]:
    """Returns (detail, skipped)."""
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is not None:
        return f"llama-cpp-python {_dist_version('llama-cpp-python')} is installed", False
    if no_deps:
        term.warn("llama-cpp-python is not installed and --no-deps was given: the worker cannot load a model until it is")
        return "llama-cpp-python is missing (not installed: --no-deps)", True

    import subprocess
    from collections import deque

    term.info(
        "llama-cpp-python is not installed. Installing it with pip builds llama.cpp from source, "
        "which takes several minutes (about 10 on 2 cores)."
    )
    cmd = [sys.executable, "-m", "pip", "install", PIP_PACKAGE]
    term.dim("$ " + " ".join(cmd))
    tail: deque[str] = deque(maxlen=PIP_TAIL_LINES)
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, errors="replace")
    except OSError as exc:
        raise CommandError(f"cannot run pip: {exc}", ExitCode.FAILED) from None
    assert proc.stdout is not None
    with proc.stdout:
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            term.stream_line(line)
    code = proc.wait()
    if code != 0:
        raise CommandError(
            f"`pip install {PIP_PACKAGE}` failed with exit code {code}",
            ExitCode.FAILED,
            hint="building llama.cpp needs a C/C++ compiler and cmake (e.g. `apt install build-essential cmake`)",
            logs={f"pip output: last {len(tail)} lines": list(tail)},
        )
    importlib.invalidate_caches()
    if importlib.util.find_spec("llama_cpp") is None:
        raise CommandError("pip succeeded but llama_cpp still cannot be found", ExitCode.FAILED)
    return f"installed llama-cpp-python {_dist_version('llama-cpp-python')}", False


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "(unknown version)"


def _write_config(model: str | None) -> tuple[Any, str]:
    from msting.cli.common import Env, config_error
    from msting.config.editor import write_user_config
    from msting.config.errors import ConfigError
    from msting.config.paths import check_home, resolve_paths
    from msting.config.schema import load_config

    try:
        check_home()
    except ConfigError as exc:
        raise config_error(exc) from None
    paths = resolve_paths()
    value = None
    if model is not None:
        if model.startswith("builtin:"):
            value = model
        else:
            path = Path(model).expanduser().absolute()
            _read_gguf(path, ExitCode.USAGE)
            value = str(path)
    try:
        paths.ensure()
        config_file = write_user_config(paths, model=value)
        config = load_config(paths)
    except ConfigError as exc:
        raise config_error(exc) from None
    except OSError as exc:
        raise CommandError(f"cannot write the config file {paths.config_file}: {exc}", ExitCode.FAILED) from None
    what = "set llm.model" if value else "llm.model is"
    return Env(paths, config), f"{config_file} ({what} {config.llm.model})"


def _read_gguf(path: Path, code: int) -> Any:
    from msting.models.gguf_file import ModelFileError, read_gguf_info

    try:
        return read_gguf_info(path)
    except ModelFileError as exc:
        raise CommandError(str(exc), code, hint="--model needs a .gguf model file") from None


def _check_model(env: Any) -> tuple[Path, str]:
    llm = env.config.llm
    if llm.is_builtin:
        from msting.models.builtin import ensure_builtin_model

        try:
            path = Path(ensure_builtin_model(env.paths.models_dir))
        except Exception as exc:  # any failure here is the step's failure, with its reason
            raise CommandError(f"cannot create the built-in model: {exc}", ExitCode.FAILED) from None
        return path, f"built-in test model {llm.served_name} at {path}"
    path = Path(llm.model_path or llm.model)
    info = _read_gguf(path, ExitCode.USAGE)
    size = f"{info.size_bytes / 1e6:.1f} MB" if info.size_bytes < 1e9 else f"{info.size_bytes / 1e9:.2f} GB"
    arch = f", {info.arch}" if info.arch else ""
    return path, f"{llm.served_name}: {path} ({size}{arch})"


# ------------------------------------------------------------------------ summary


def _print_summary(term: Terminal, s: dict[str, Any]) -> None:
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    grid.add_row("model", Text(str(s["model"]["name"])))
    grid.add_row("path", Text(str(s["model"]["path"])))
    if s.get("gpu"):
        grid.add_row("backend", Text(s["gpu"]["line"]))
    elif s.get("backend"):
        grid.add_row("backend", s["backend"])
    if "load_ms" in s:
        grid.add_row("load time", fmt_ms(s.get("load_ms")))
        grid.add_row("speed", fmt_rate(s.get("tokens_per_sec")))
    grid.add_row("socket", Text(s["socket"]))
    grid.add_row("url", Text(s["url"]))
    grid.add_row("config", Text(s["config_file"]))
    if s.get("daemon", True) is None:
        title = "msting: prepared (daemon not started: run `msting llm start`)"
    else:
        title = "msting is installed and ready"
    term.print(Panel(grid, title=title, title_align="left", border_style="green", expand=False))
    if s.get("note"):
        term.print(Text(f"note: {s['model']['name']} is the {s['note']}", style="yellow"))
