"""The daemon's operator surface, as the HTTP layer's `Control` asks for it: health and
status, load and unload, profiles and switches, jobs."""

from __future__ import annotations

import asyncio
import os
import time

import psutil

from msting import __version__
from msting.api.errors import NotFound
from msting.daemon.jobs import Jobs
from msting.daemon.local import switch
from msting.providers.local import LocalProvider


class DaemonControl:
    def __init__(self, local: LocalProvider, jobs: Jobs):
        self.local = local
        self.service = local.service
        self._jobs = jobs
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
            "models": [m.snapshot() for m in s.shown_models()],
            "events": s.store.recent_events(10),
        }

    def _memory(self) -> dict:
        s = self.service
        return {
            "daemon_rss_bytes": psutil.Process().memory_info().rss,
            "workers_rss_bytes": sum(rss for m in s.all_models() for rss in m.worker_rss().values()),
            "available_bytes": psutil.virtual_memory().available,
            "budget_bytes": s.routing.budget_bytes,
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

    def jobs(self) -> list[dict]:
        return self.service.store.recent_jobs(20)

    def job(self, job_id: str) -> dict:
        found = self._jobs.get(job_id)
        if found is None:
            raise NotFound("job_not_found", f"no job {job_id}")
        return found
