"""What the HTTP layer needs from the daemon beyond serving requests: health, status,
loading, unloading and restarting models, profiles and switches, jobs, the metrics,
the readiness checks, the log's tail, restarting the daemon.

Declared here, where it is used; the daemon's `msting.daemon.control.DaemonControl`
provides it. The routes see only this and the provider router, never the daemon's
internals.
"""

from __future__ import annotations

from typing import AsyncIterator, Protocol


class Control(Protocol):
    default_load_timeout: float  # /models/load's timeout when the body gives none

    def health(self) -> dict: ...

    def readiness(self) -> tuple[str, str | None, dict[str, str]]:
        """(status, reason, {model: state}) of the active profile."""
        ...

    def model_summaries(self) -> list[dict]:
        """name, type, state, queue_depth and in_flight of each shown model."""
        ...

    def status(self) -> dict: ...

    async def load(self, model: str | None, timeout: float) -> dict: ...

    async def unload(self, model: str) -> dict: ...

    async def profiles(self) -> dict: ...

    async def switch(self, profile: str, *, dry_run: bool) -> dict: ...

    def jobs(self, type: str | None = None, state: str | None = None) -> list[dict]:
        """Every job type (switches, installs ...), newest first."""
        ...

    def job(self, job_id: str) -> dict: ...

    def create_job(self, type: object, params: object) -> dict:
        """A model job (install, import, load, unload, update, delete), started; the
        running job of the same install if one runs."""
        ...

    def cancel_job(self, job_id: str) -> dict: ...

    def job_events(self, job_id: str) -> AsyncIterator[dict]:
        """The job now, then after each change, until its terminal state."""
        ...

    def installed_models(self) -> list[dict]: ...

    async def registry_search(self, query: str, limit: int) -> list[dict]: ...

    def metrics(self) -> tuple[bytes, str]:
        """The Prometheus text of /metrics, and its content type."""
        ...

    async def run_checks(self) -> dict:
        """The readiness checks now (`msting llm health`'s): ok, failed_step, checks."""
        ...

    async def restart_model(self, model: str | None) -> dict: ...

    def restart_daemon(self) -> dict:
        """Ask the daemon to drain and start again; returns at once."""
        ...

    async def wait_stopping(self, timeout: float) -> bool:
        """Wait up to `timeout` s for the daemon to begin stopping; True once it has."""
        ...

    def log_tail(self, lines: int) -> list[str]: ...

    async def usage(self, group_by: str, since: str | None, until: str | None) -> dict:
        """GET /v1/usage: the usage rows grouped (service, model, day, client), with totals."""
        ...
