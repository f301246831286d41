"""The ``msting`` command: the Typer root and its ``llm`` group.

Start-up time matters (scripts poll ``msting llm status --json``), so this module and
the command modules import only Typer and the standard library at import time; each
command imports what it needs (httpx, rich, psutil, the config) when it runs. Nothing
on this path imports starlette, uvicorn, llama_cpp, gguf or numpy.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

from msting.cli import health, install, lifecycle, logs, models, profiles, status
from msting.cli.exit_codes import EXIT_CODES_EPILOG


class _LeanHelpMixin:
    """Give the --help flag a bool default.

    Typer coerces every option value through pydantic unless it is a bool flag that
    already holds a bool; its help flag defaults to None, so merely running a command
    would import pydantic (~150 ms). With a False default it is skipped.
    """

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)  # type: ignore[misc]
        if option is not None and option.default is None:
            option.default = False
        return option


class LeanGroup(_LeanHelpMixin, TyperGroup):
    pass


class LeanCommand(_LeanHelpMixin, TyperCommand):
    pass


app = typer.Typer(
    name="msting",
    cls=LeanGroup,
    help="msting keeps a local LLM service always ready.",
    epilog=EXIT_CODES_EPILOG,
    no_args_is_help=True,
    add_completion=False,  # static completions ship in completions/
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)

llm_app = typer.Typer(
    name="llm",
    cls=LeanGroup,
    help="Manage the local LLM service: install, start, stop, status, logs, profiles, models.",
    epilog=EXIT_CODES_EPILOG,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(llm_app, name="llm")

llm_app.command("install", cls=LeanCommand)(install.install)
llm_app.command("start", cls=LeanCommand)(lifecycle.start)
llm_app.command("stop", cls=LeanCommand)(lifecycle.stop)
llm_app.command("restart", cls=LeanCommand)(lifecycle.restart)
llm_app.command("status", cls=LeanCommand)(status.status)
llm_app.command("wait", cls=LeanCommand)(lifecycle.wait)
llm_app.command("logs", cls=LeanCommand)(logs.logs)
llm_app.command("health", cls=LeanCommand)(health.health)
llm_app.command("profiles", cls=LeanCommand)(profiles.profiles)
llm_app.command("switch-profile", cls=LeanCommand)(profiles.switch_profile)
llm_app.command("models", cls=LeanCommand)(models.models)
llm_app.command("load", cls=LeanCommand)(models.load)
llm_app.command("unload", cls=LeanCommand)(models.unload)


def _version(value: bool) -> None:
    if value:
        from msting import __version__

        typer.echo(f"msting {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    # A plain bool with a bool default: Typer then skips its pydantic-based coercion,
    # so every command (status --json above all) starts without importing pydantic.
    version: Annotated[
        bool,
        typer.Option("--version", "-V", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """msting keeps a local LLM service always ready."""


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point. Exits the process with the command's exit code."""
    return app(args=argv, prog_name="msting")
