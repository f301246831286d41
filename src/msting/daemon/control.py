"""The daemon's operator surface, as the HTTP layer's `Control` asks for it: health and
status, load, unload and restart, profiles and switches, jobs, the metrics, the
readiness checks, the log's tail, and restarting the daemon itself."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import TYPE_CHECKING, AsyncIterator, Callable

import psutil

from msting import __version__
from msting.api.errors import Conflict, NotAllowed, NotFound
from msting.daemon.jobs import Jobs
from msting.daemon.local import switch
from msting.daemon.local.admission import shutting_down
from msting.daemon.metrics import DaemonMetrics
from msting.providers.local import LocalProvider

if TYPE_CHECKING:
    from msting.daemon.model_jobs import ModelJobs
    from msting.policy.usage import UsageLog

LOG_TAIL_BYTES = 64 * 1024  # the most of the log file read for its tail


class DaemonControl:
    def __init__(self, local: LocalProvider, jobs: Jobs, *, metrics: DaemonMetrics | None = None,
                 restart: Callable[[], None] | None = None, model_jobs: ModelJobs | None = None, usage: UsageLog | None = None):
        """`restart`: asks the daemon to drain, stop and start again in the same process
        (msting.daemon.main); None where nothing can (then restart_daemon refuses)."""
        self.local = local
        self.service = local.service
        self._jobs = jobs
        self._metrics = metrics
        self._restart = restart
        self._model_jobs = model_jobs
        self._usage = usage
        self._stop_begun = asyncio.Event()
        self.default_load_timeout = self.service.config.llm_service.startup_timeout_sec

    def _readiness(self) -> tuple[str, str | None]:
        health = self.local.health()
        return health.status, health.reason

    def readiness(self) -> tuple[str, str | None, dict[str, str]]:
        status, reason = self._readiness()
        return status, reason, {name: m.state.value for name, m in self.service.routing.models.items()}

    def health(self) -> dict:
        s = self.service
        status, _, models = self.readiness()
        return {
            "status": "ok",
            "version": __version__,
            "pid": os.getpid(),
            "uptime_sec": round(time.time() - s.started_at, 3),
            "ready": status == "ready",
            "readiness": status,
            "profile": s.routing.profile,
            "default_model": s.routing.default_model,
            "models": models,
        }

    def model_summaries(self) -> list[dict]:
        return [{"name": m.name, "type": m.spec.type, "state": m.state.value, "queue_depth": len(m.queue), "in_flight": m.in_flight}
                for m in self.service.shown_models()]

    def status(self) -> dict:
        s = self.service
        status, reason = self._readiness()
        cfg = s.config
        return {
            "version": __version__,
            "pid": os.getpid(),
            "started_at": s.started_at,
            "uptime_sec": round(time.time() - s.started_at, 3),
            "socket": str(cfg.socket_path(s.paths)),
            "url": cfg.url,
            "profile": s.routing.profile,
            "switch": running.to_dict() if (running := self._jobs.running("switch")) else None,
            "config_file": str(s.paths.config_file) if s.paths.config_file.exists() else None,
            "log_file": str(cfg.log_file(s.paths)),
            "ready": status == "ready",
            "readiness": {"status": status, "reason": reason},
            "default_model": s.routing.default_model,
            "memory": self._memory(),
            "spare": self._spare(),
            "models": [{**m.snapshot(), "unload": s.unload_status(m)} for m in s.shown_models()],
            "events": s.store.recent_events(10),
        }

    def _memory(self) -> dict:
        s = self.service
        return {
            "daemon_rss_bytes": psutil.Process().memory_info().rss,
            "workers_rss_bytes": sum(rss for m in s.all_models() for rss in m.worker_rss().values()),
            "available_bytes": psutil.virtual_memory().available,
            "budget_bytes": s.routing.budget_bytes,
            "power_saving": s.config.llm_service.power_saving.enabled,
            "pressure": s.pressure,  # why memory is short (power_saving), else null
        }

    def _spare(self) -> dict:
        """The warm spare worker: its pid and RSS, and how many worker starts it served."""
        snap = self.service.launcher.snapshot()
        snap["rss_bytes"] = None
        if snap["pid"] is not None:
            try:
                snap["rss_bytes"] = psutil.Process(snap["pid"]).memory_info().rss
            except psutil.Error:
                pass
        return snap

    async def load(self, model: str | None, timeout: float) -> dict:
        return await self.service.load(model, timeout)

    async def unload(self, model: str) -> dict:
        return await self.service.unload(model)

    async def profiles(self) -> dict:
        """Each profile with its models, estimated memory and capabilities; the active one marked."""
        from msting.config.profiles import describe_profiles

        s = self.service
        listed = await asyncio.to_thread(describe_profiles, s.paths, s.config)
        for entry in listed:
            entry["active"] = entry["name"] == s.routing.profile
        return {"object": "list", "active": s.routing.profile, "data": listed}

    async def switch(self, profile: str, *, dry_run: bool) -> dict:
        if dry_run:
            return await switch.dry_run(self.service, profile)
        return switch.start_switch(self.service, self._jobs, profile)

    def jobs(self, type: str | None = None, state: str | None = None) -> list[dict]:
        return self._jobs.list(type=type, state=state)

    def job(self, job_id: str) -> dict:
        found = self._jobs.get(job_id)
        if found is None:
            raise NotFound("job_not_found", f"no job {job_id}")
        return found

    def _models(self) -> ModelJobs:
        if self._model_jobs is None:
            raise NotFound("model_jobs_off", "this daemon does not manage models")
        return self._model_jobs

    def create_job(self, type: object, params: object) -> dict:
        return self._models().submit(type, params)

    def cancel_job(self, job_id: str) -> dict:
        live = self._jobs.live(job_id)
        if live is not None and live.type == "switch" and not live.state.terminal:
            raise Conflict("not_cancellable", f"job {job_id} is a profile switch; it cannot be cancelled (it rolls back on failure)")
        found = self._jobs.cancel(job_id)
        if found is None:
            raise NotFound("job_not_found", f"no job {job_id}")
        return found

    async def job_events(self, job_id: str) -> AsyncIterator[dict]:
        self.job(job_id)  # a 404 before the stream starts
        async for body in self._jobs.follow(job_id):
            yield body

    def installed_models(self) -> list[dict]:
        return self._models().installed()

    async def registry_search(self, query: str, limit: int) -> list[dict]:
        return await self._models().search(query, limit)

    # ---- operations (the debug page's buttons; the CLI can use them too) -----------

    async def usage(self, group_by: str, since: str | None, until: str | None) -> dict:
        if self._usage is None:
            raise NotFound("usage_off", "this daemon keeps no usage rows")
        return await self._usage.totals(group_by, since, until)

    def metrics(self) -> tuple[bytes, str]:
        if self._metrics is None:
            raise NotFound("metrics_off", "this daemon keeps no metrics")
        return self._metrics.render(), self._metrics.content_type

    async def run_checks(self) -> dict:
        """The readiness checks of `msting llm health` (the same code,
        msting.cli.health.run_checks), run now from the daemon through its own socket:
        /health answers, the default model loads, a 10-token generate returns text;
        each with its result and timing."""
        from msting.cli.health import checks_json, run_checks
        from msting.client import MstingClient

        socket_path = self.service.config.socket_path(self.service.paths)

        class OwnSocket:
            def client(self, timeout: float) -> MstingClient:
                return MstingClient(socket_path=socket_path, timeout=timeout)

        checks = await asyncio.to_thread(run_checks, _Silent(), OwnSocket(), self.default_load_timeout)
        return checks_json(checks)

    async def restart_model(self, name: str | None) -> dict:
        """Stop a model's workers (each finishes the request in hand; requests that
        arrive meanwhile wait in its queue) and start them again."""
        if self.service.stopping:
            raise shutting_down()
        model = self.service.admission.find(name)
        pids = [w.pid for w in model.workers if w.pid]
        self.service.store.record_event("model_restart", model=model.name, detail=f"asked for; workers {pids}")
        await model.stop()
        model.start()
        return {"model": model.name, "state": model.state.value, "stopped_pids": pids}

    def restart_daemon(self) -> dict:
        if self._restart is None:
            raise NotAllowed("restart_unavailable", "this daemon cannot restart itself; use `msting llm restart`")
        if self.service.stopping:
            raise shutting_down()
        self._restart()
        return {"restarting": True, "pid": os.getpid(),
                "detail": "the daemon drains, stops its workers and starts again in the same process (same pid)"}

    def begin_stop(self) -> None:
        """The daemon begins to stop (a signal, or a restart asked for): live feeds end
        now, so that none holds the HTTP server's shutdown."""
        self._stop_begun.set()

    async def wait_stopping(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the daemon to begin stopping; True once it has."""
        if not self._stop_begun.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop_begun.wait(), timeout)
        return self._stop_begun.is_set() or self.service.stopping

    def log_tail(self, lines: int) -> list[str]:
        """The last `lines` lines of the daemon's log file."""
        path = self.service.config.log_file(self.service.paths)
        try:
            with open(path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - LOG_TAIL_BYTES))
                text = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return []
        if size > LOG_TAIL_BYTES:
            text = text[1:]  # the first line read is only a part of one
        return text[-lines:]


class _Silent:
    """The checks' progress goes nowhere: the caller gets the results."""

    def _quiet(self, message: str) -> None:
        pass

    step_ok = step_fail = step_skip = _quiet
