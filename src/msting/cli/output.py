"""All CLI output goes through one :class:`Terminal`.

Human mode: results and progress go to stdout (rich), warnings and errors to stderr.
``--json`` mode: exactly one JSON object goes to stdout; progress and errors go to
stderr, so ``msting llm status --json | jq`` always sees valid JSON.

rich is imported only when something is printed for a human, which keeps
``status --json`` as fast as the plain Typer + httpx start-up.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from msting.cli.exit_codes import ExitCode

BUILTIN_MODEL_NOTE = (
    "built-in test model: proves the pipeline, its text is not meaningful; "
    "use `msting llm install --model PATH` for a real GGUF"
)
LOG_TAIL_LINES = 20


class CommandError(Exception):
    """A command failed in a way the operator should be told about.

    ``step`` names the failed step (install, health), ``logs`` maps a title to the
    lines to show (e.g. the tail of the daemon log), ``data`` is merged into the JSON
    error object.
    """

    def __init__(
        self,
        message: str,
        code: int = ExitCode.FAILED,
        *,
        step: str | None = None,
        hint: str | None = None,
        logs: dict[str, list[str]] | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = int(code)
        self.step = step
        self.hint = hint
        self.logs = logs or {}
        self.data = data or {}


class Terminal:
    """The one place where the CLI writes to the terminal."""

    def __init__(self, json_mode: bool = False) -> None:
        self.json_mode = json_mode
        self._out: Any = None
        self._err: Any = None

    # -- consoles (lazy: importing rich costs tens of milliseconds) ---------------

    @property
    def out(self) -> Any:
        """The console for human output: stdout, or stderr in --json mode."""
        if self.json_mode:
            return self.err
        if self._out is None:
            from rich.console import Console

            self._out = Console(highlight=False)
        return self._out

    @property
    def err(self) -> Any:
        if self._err is None:
            from rich.console import Console

            self._err = Console(stderr=True, highlight=False)
        return self._err

    # -- plain messages ------------------------------------------------------------

    def print(self, *objects: Any, **kwargs: Any) -> None:
        """Print rich renderables (tables, panels) or markup strings."""
        self.out.print(*objects, **kwargs)

    def info(self, message: str, style: str | None = None) -> None:
        self.out.print(message, style=style, markup=False)

    def success(self, message: str) -> None:
        self._marked("✓", "green", message)

    def warn(self, message: str) -> None:
        self.err.print(f"warning: {message}", style="yellow", markup=False)

    def error(self, message: str) -> None:
        self.err.print(f"error: {message}", style="bold red", markup=False)

    def dim(self, message: str) -> None:
        self.out.print(message, style="dim", markup=False)

    def _marked(self, mark: str, style: str, message: str, console: Any = None) -> None:
        from rich.text import Text

        text = Text()
        text.append(f"{mark} ", style=style)
        text.append(message)
        (console or self.out).print(text)

    # -- steps (install, health) ---------------------------------------------------

    def step(self, index: int, total: int, title: str) -> None:
        from rich.text import Text

        text = Text()
        text.append(f"[{index}/{total}] ", style="bold cyan")
        text.append(title, style="bold")
        self.out.print(text)

    def step_ok(self, message: str) -> None:
        self._marked("  ✓", "green", message)

    def step_fail(self, message: str) -> None:
        self._marked("  ✗", "red", message)

    def step_skip(self, message: str) -> None:
        self._marked("  -", "dim", message)

    def stream_line(self, line: str) -> None:
        """One line of a child's output (pip), shown dimmed and indented."""
        self.out.print(f"    {line}", style="dim", markup=False, soft_wrap=True)

    # -- JSON --------------------------------------------------------------------

    def emit_json(self, obj: Any) -> None:
        sys.stdout.write(json.dumps(obj, indent=2, default=_json_default) + "\n")
        sys.stdout.flush()

    # -- failures ----------------------------------------------------------------

    def report_failure(self, exc: CommandError, json_extra: dict[str, Any] | None = None) -> None:
        """Tell the operator what failed: to stderr, and as JSON on stdout in --json mode."""
        if self.json_mode:
            error: dict[str, Any] = {"message": exc.message, "exit_code": exc.code}
            if exc.step:
                error["step"] = exc.step
            if exc.hint:
                error["hint"] = exc.hint
            if exc.logs:
                error["logs"] = exc.logs
            obj: dict[str, Any] = {"ok": False}
            obj.update(json_extra or {})
            obj.update(exc.data)
            obj["error"] = error
            self.emit_json(obj)
            self.error((f"step '{exc.step}' failed: " if exc.step else "") + exc.message.splitlines()[0])
            return
        prefix = f"step '{exc.step}' failed: " if exc.step else ""
        self.error(prefix + exc.message)
        if exc.hint:
            self.err.print(f"hint: {exc.hint}", style="yellow", markup=False)
        for title, lines in exc.logs.items():
            self.show_lines(title, lines, console=self.err)

    def show_lines(self, title: str, lines: list[str], console: Any = None) -> None:
        console = console or self.out
        console.print(f"--- {title} ---", style="dim", markup=False)
        for line in lines:
            console.print(line, markup=False, highlight=False, soft_wrap=True)
        console.print("---", style="dim", markup=False)

    @contextmanager
    def failures(self, json_extra: dict[str, Any] | None = None) -> Iterator[None]:
        """Turn a :class:`CommandError` into its report and exit code."""
        import typer

        try:
            yield
        except CommandError as exc:
            self.report_failure(exc, json_extra)
            raise typer.Exit(exc.code) from None


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)


# -- small formatting helpers shared by the commands ---------------------------------


def tail_lines(path: Path, n: int = LOG_TAIL_LINES, start: int = 0) -> list[str]:
    """The last ``n`` lines of ``path`` (reading only from byte ``start``), or []."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            end = fh.tell()
            block = 8192
            pos = end
            data = b""
            while pos > start and data.count(b"\n") <= n:
                step = min(block, pos - start)
                pos -= step
                fh.seek(pos)
                data = fh.read(step) + data
    except OSError:
        return []
    lines = data.decode("utf-8", errors="replace").splitlines()
    return lines[-n:] if n > 0 else []


def log_tails(files: Iterable[tuple[str, Path, int]], n: int = LOG_TAIL_LINES) -> dict[str, list[str]]:
    """``{"last N lines of <path>": [...]}`` for each (label, path, start offset) that has lines."""
    out: dict[str, list[str]] = {}
    for label, path, start in files:
        lines = tail_lines(path, n, start)
        if lines:
            out[f"{label}: last {len(lines)} lines of {path}"] = lines
    return out


def fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "-"
    if ms >= 1000:
        return f"{ms / 1000:.2f} s"
    return f"{ms:.1f} ms"


def fmt_duration(sec: float | None) -> str:
    if sec is None:
        return "-"
    sec = int(sec)
    days, rest = divmod(sec, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m {seconds}s"
    if minutes:
        return f"{minutes}m {seconds}s"
    return f"{seconds}s"


def fmt_rate(tps: float | None) -> str:
    return "-" if tps is None else f"{tps:.1f} tok/s"
