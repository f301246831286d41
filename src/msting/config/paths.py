"""Where msting keeps its files.

Everything lives under ``$MSTING_HOME`` when that is set (``config/``, ``data/``,
``logs/``, ``run/``); otherwise the platform's usual per-user directories from
platformdirs are used.

This module is imported on the CLI's start-up path: keep it cheap (no yaml here, and
platformdirs is imported only when it is needed).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

APP_NAME = "msting"

#: Environment variable that moves every msting directory under one root.
HOME_ENV_VAR = "MSTING_HOME"


@dataclass(frozen=True)
class Paths:
    """The four base directories, and the well-known files inside them."""

    config_dir: Path
    data_dir: Path
    log_dir: Path
    runtime_dir: Path

    @property
    def config_file(self) -> Path:
        return self.config_dir / "config.yaml"

    @property
    def profiles_dir(self) -> Path:
        return self.config_dir / "profiles"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def state_db(self) -> Path:
        return self.data_dir / "state.db"

    @property
    def default_socket(self) -> Path:
        return self.runtime_dir / "msting.sock"

    @property
    def pidfile(self) -> Path:
        return self.runtime_dir / "msting.pid"

    @property
    def lockfile(self) -> Path:
        return self.runtime_dir / "msting.lock"

    @property
    def daemon_log(self) -> Path:
        return self.log_dir / "daemon.log"

    def ensure(self) -> Paths:
        """Create every directory (idempotent). The runtime directory is made 0700.

        Returns ``self`` so that ``resolve_paths().ensure()`` reads naturally.
        """
        for d in (self.config_dir, self.profiles_dir, self.data_dir, self.models_dir, self.log_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # mkdir's mode is masked by the umask and ignored when the directory already
        # exists; the socket, pidfile and lock live here, so insist on 0700.
        try:
            st = self.runtime_dir.stat()
            if st.st_mode & 0o777 != 0o700 and st.st_uid == os.getuid():
                os.chmod(self.runtime_dir, 0o700)
        except (OSError, AttributeError):  # AttributeError: no os.getuid on Windows
            pass
        return self


def resolve_paths(env: Mapping[str, str] | None = None) -> Paths:
    """Work out msting's directories.

    ``env`` (default ``os.environ``) is consulted for ``MSTING_HOME``. Without it the
    platformdirs locations are used; note that platformdirs itself reads ``XDG_*``
    from the process environment, not from ``env``.
    """
    if env is None:
        env = os.environ
    home = env.get(HOME_ENV_VAR, "")
    if home:
        root = Path(home).expanduser().absolute()
        return Paths(
            config_dir=root / "config",
            data_dir=root / "data",
            log_dir=root / "logs",
            runtime_dir=root / "run",
        )

    import platformdirs

    runtime = _runtime_dir(platformdirs)
    if runtime is None:
        # e.g. no XDG_RUNTIME_DIR and no /run/user/<uid> (containers, cron, su).
        runtime = Path(platformdirs.user_cache_dir(APP_NAME)) / "run"
    return Paths(
        config_dir=Path(platformdirs.user_config_dir(APP_NAME)),
        data_dir=Path(platformdirs.user_data_dir(APP_NAME)),
        log_dir=Path(platformdirs.user_log_dir(APP_NAME)),
        runtime_dir=runtime,
    )


def check_home(env: Mapping[str, str] | None = None) -> None:
    """A ConfigError when ``MSTING_HOME`` names something that is not a folder (every
    path under it would fail); a missing one is fine: it is created."""
    home = (os.environ if env is None else env).get(HOME_ENV_VAR, "")
    root = Path(home).expanduser().absolute() if home else None
    if root is not None and root.exists() and not root.is_dir():
        from msting.config.errors import ConfigError, ConfigProblem

        raise ConfigError([ConfigProblem(HOME_ENV_VAR, f"is not a directory ({root}): point it at a folder (a missing one is created)")])


def _runtime_dir(platformdirs: Any) -> Path | None:
    """platformdirs' runtime dir, or None when there is no proper one.

    Recent platformdirs releases check ``$XDG_RUNTIME_DIR`` themselves and, when it is
    unusable, warn and fall back to ``<tmp>/runtime-<uid>``. A daemon's socket and
    pidfile should not live where tmp cleaners reap them, so that fallback (and any
    error) counts as "no runtime dir" here, and the warning is not shown.
    """
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", getattr(platformdirs, "RuntimeDirWarning", UserWarning))
            runtime = Path(platformdirs.user_runtime_dir(APP_NAME))
    except OSError:
        return None
    geteuid = getattr(os, "geteuid", None)
    if geteuid is not None:
        import tempfile

        if runtime.parent == Path(tempfile.gettempdir()) / f"runtime-{geteuid()}":
            return None
    return runtime if _usable_dir(runtime) else None


def _usable_dir(p: Path) -> bool:
    """True if ``p`` is a writable directory, or is missing and could be made in a
    writable parent that already exists (we do not create the runtime base itself)."""
    try:
        if p.is_dir():
            return os.access(p, os.W_OK | os.X_OK)
        if p.exists() or p.is_symlink():
            return False
        parent = p.parent
        return parent.is_dir() and os.access(parent, os.W_OK | os.X_OK)
    except OSError:
        return False
