"""msting.config.paths: the MSTING_HOME layout and the platformdirs one."""

from __future__ import annotations

import os
import stat
import sys
import warnings
from pathlib import Path

import pytest

from msting.config.paths import resolve_paths


def test_msting_home_layout(tmp_path: Path) -> None:
    home = tmp_path / "home"
    p = resolve_paths({"MSTING_HOME": str(home)})
    assert p.config_dir == home / "config"
    assert p.data_dir == home / "data"
    assert p.log_dir == home / "logs"
    assert p.runtime_dir == home / "run"
    assert p.config_file == home / "config" / "config.yaml"
    assert p.profiles_dir == home / "config" / "profiles"
    assert p.models_dir == home / "data" / "models"
    assert p.state_db == home / "data" / "state.db"
    assert p.default_socket == home / "run" / "msting.sock"
    assert p.pidfile == home / "run" / "msting.pid"
    assert p.lockfile == home / "run" / "msting.lock"
    assert p.daemon_log == home / "logs" / "daemon.log"

    assert p.ensure() is p
    p.ensure()  # idempotent
    for d in (p.config_dir, p.profiles_dir, p.data_dir, p.models_dir, p.log_dir, p.runtime_dir):
        assert d.is_dir()
    assert stat.S_IMODE(p.runtime_dir.stat().st_mode) == 0o700


def test_ensure_tightens_existing_runtime_dir(tmp_path: Path) -> None:
    p = resolve_paths({"MSTING_HOME": str(tmp_path)})
    p.runtime_dir.mkdir(mode=0o755)
    os.chmod(p.runtime_dir, 0o755)
    p.ensure()
    assert stat.S_IMODE(p.runtime_dir.stat().st_mode) == 0o700


def test_relative_msting_home_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    p = resolve_paths({"MSTING_HOME": "rel"})
    assert p.config_dir == tmp_path / "rel" / "config"
    assert p.config_dir.is_absolute()


def test_msting_home_from_process_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSTING_HOME", str(tmp_path))
    assert resolve_paths().config_dir == tmp_path / "config"


def _xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, runtime: Path) -> None:
    for var in ("CONFIG", "DATA", "STATE", "CACHE"):
        monkeypatch.setenv(f"XDG_{var}_HOME", str(tmp_path / var.lower()))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))


@pytest.mark.skipif(sys.platform != "linux", reason="XDG layout")
def test_platformdirs_layout_without_msting_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    platformdirs = pytest.importorskip("platformdirs")
    runtime = tmp_path / "xdg-run"
    runtime.mkdir(mode=0o700)
    os.chmod(runtime, 0o700)  # platformdirs insists on 0700 (umask may have cleared nothing, but be sure)
    _xdg(tmp_path, monkeypatch, runtime)
    p = resolve_paths({})
    assert p.config_dir == Path(platformdirs.user_config_dir("msting")) == tmp_path / "config" / "msting"
    assert p.data_dir == Path(platformdirs.user_data_dir("msting"))
    assert p.log_dir == Path(platformdirs.user_log_dir("msting"))
    assert p.runtime_dir == runtime / "msting"


@pytest.mark.skipif(sys.platform != "linux", reason="XDG layout")
@pytest.mark.parametrize("problem", ["missing", "mode"])
def test_unusable_runtime_dir_falls_back_to_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, problem: str
) -> None:
    pytest.importorskip("platformdirs")
    if problem == "missing":
        runtime = tmp_path / "does" / "not" / "exist"
    else:
        runtime = tmp_path / "xdg-run"
        runtime.mkdir()
        os.chmod(runtime, 0o755)
    _xdg(tmp_path, monkeypatch, runtime)
    # Whatever platformdirs makes of it (older releases return it as it is, newer ones
    # warn and fall back to /run/user/<uid> or <tmp>/runtime-<uid>), msting never uses a
    # runtime dir whose parent is missing nor the tmp fallback, and shows no warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = resolve_paths({})
    allowed = {tmp_path / "cache" / "msting" / "run", Path(f"/run/user/{os.geteuid()}/msting")}
    if problem == "mode":
        allowed.add(runtime / "msting")
    assert p.runtime_dir in allowed
