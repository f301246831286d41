"""Helpers shared by the command modules: the environment a command runs in."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from msting.cli.exit_codes import ExitCode
from msting.cli.output import CommandError

if TYPE_CHECKING:
    from msting.client import MstingClient


@dataclass
class Env:
    """Resolved paths and validated config for one CLI invocation."""

    paths: Any
    config: Any

    @property
    def socket_path(self) -> Path:
        return self.config.socket_path(self.paths)

    @property
    def url(self) -> str:
        return self.config.url

    @property
    def log_file(self) -> Path:
        return self.config.log_file(self.paths)

    @property
    def boot_log(self) -> Path:
        """Where the detached daemon's own stdout/stderr go (boot-time tracebacks)."""
        return self.paths.log_dir / "daemon.out"

    @property
    def startup_timeout(self) -> float:
        return float(self.config.llm_service.startup_timeout_sec) + 10.0

    @property
    def stop_timeout(self) -> float:
        svc = self.config.llm_service
        return float(svc.stop_timeout_sec) + float(svc.drain_grace_sec) + 5.0

    def running_pid(self) -> int | None:
        from msting.daemon.instance import running_daemon_pid

        return running_daemon_pid(self.paths.pidfile, self.paths.lockfile)

    def is_running(self) -> bool:
        from msting.daemon.instance import lock_is_held

        return lock_is_held(self.paths.lockfile)

    def client(self, timeout: float = 5.0) -> MstingClient:
        from msting.client import MstingClient

        return MstingClient.from_env(self.paths, self.config, timeout=timeout)


def load_env(step: str | None = None) -> Env:
    """Resolve the paths and load the config; a bad config is a CommandError (exit 2)
    listing every problem."""
    from msting.config.errors import ConfigError
    from msting.config.paths import check_home, resolve_paths
    from msting.config.schema import load_config

    paths = resolve_paths()
    try:
        check_home()
        config = load_config(paths)
    except ConfigError as exc:
        raise config_error(exc, step) from None
    return Env(paths, config)


def config_error(exc: Exception, step: str | None = None) -> CommandError:
    problems = [str(p) for p in getattr(exc, "problems", [])] or [str(exc)]
    source = getattr(exc, "source", None)
    where = f" in {source}" if source else ""
    message = f"invalid configuration{where}:\n" + "\n".join(f"  - {p}" for p in problems)
    return CommandError(
        message,
        ExitCode.USAGE,
        step=step,
        data={"config_problems": problems, "config_file": str(source) if source else None},
    )
