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


# The `llm` commands: name -> (module in msting.cli, function). A run builds its app
# with just the command it names (see `build_app`), so it imports only that module.
COMMANDS: dict[str, tuple[str, str]] = {
    "install": ("install", "install"),
    "start": ("lifecycle", "start"),
    "stop": ("lifecycle", "stop"),
    "restart": ("lifecycle", "restart"),
    "status": ("status", "status"),
    "wait": ("lifecycle", "wait"),
    "logs": ("logs", "logs"),
    "health": ("health", "health"),
    "profiles": ("profiles", "profiles"),
    "switch-profile": ("profiles", "switch_profile"),
    "models": ("models", "models"),
    "load": ("models", "load"),
    "unload": ("models", "unload"),
    "services": ("services", "services"),
    "ping": ("services", "ping"),
    "doctor": ("doctor", "doctor"),
    "pull": ("manage", "pull"),
    "import": ("manage", "import_model"),
    "rm": ("manage", "rm"),
    "search": ("manage", "search"),
    "usage": ("usage", "usage"),
    "route": ("route", "route"),
}
# The `llm` command groups: name -> (module in msting.cli, help, its commands; each a
# function of that name in the module).
GROUPS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "service": ("init_service", "Run the daemon as a service of the init system (systemd, launchd): install, uninstall, status.",
                ("install", "uninstall", "status")),
    "jobs": ("jobs", "List the daemon's jobs (installs, imports, deletes, loads, profile switches); cancel one.", ("cancel",)),
}
# Groups that do something without a subcommand: group -> the function of its module
# that runs then (`msting llm jobs` lists the jobs; its options come before a subcommand).
GROUP_DEFAULTS: dict[str, str] = {"jobs": "jobs"}


def _version(value: bool) -> None:
    if value:
        from msting import __version__

        typer.echo(f"msting {__version__}")
        raise typer.Exit()


def _root(
    # A plain bool with a bool default: Typer then skips its pydantic-based coercion,
    # so every command (status --json above all) starts without importing pydantic.
    version: Annotated[
        bool,
        typer.Option("--version", "-V", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """msting keeps a local LLM service always ready."""


def build_app(only: str | None = None) -> typer.Typer:
    """The Typer app with every `llm` command, or with just `only`: Typer inspects the
    signature of every registered command on each run, and each command module has
    its own imports, so a run that names its command registers that one alone
    (``msting llm status --json`` is polled by scripts; start-up time matters)."""
    import importlib

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
        help="Manage the local LLM service: install, start, stop, status, logs, profiles, models (pull, import, rm, search, jobs), services, doctor, service.",
        epilog=EXIT_CODES_EPILOG,
        no_args_is_help=True,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    app.add_typer(llm_app, name="llm")
    for name, (module, function) in COMMANDS.items():
        if only is None or name == only:
            command = getattr(importlib.import_module(f"msting.cli.{module}"), function)
            llm_app.command(name, cls=LeanCommand)(command)
    for name, (module, help_text, functions) in GROUPS.items():
        if only is None or name == only:
            default = GROUP_DEFAULTS.get(name)
            group = typer.Typer(name=name, cls=LeanGroup, help=help_text, epilog=EXIT_CODES_EPILOG, no_args_is_help=default is None,
                                invoke_without_command=default is not None, context_settings={"help_option_names": ["-h", "--help"]})
            loaded = importlib.import_module(f"msting.cli.{module}")
            if default is not None:
                group.callback()(getattr(loaded, default))
            for function in functions:
                group.command(function, cls=LeanCommand)(getattr(loaded, function))
            llm_app.add_typer(group, name=name)
    app.callback()(_root)
    return app


def _named_command(args: list[str]) -> str | None:
    """The `llm` command these arguments run, when they name one unambiguously."""
    if len(args) >= 2 and args[0] == "llm" and (args[1] in COMMANDS or args[1] in GROUPS):
        return args[1]
    return None


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point. Exits the process with the command's exit code."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    return build_app(_named_command(args))(args=args, prog_name="msting")
