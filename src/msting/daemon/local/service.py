"""The local llama.cpp service: the active profile's models, started and stopped.

`LocalService` owns the models' life: starting the always-ready ones, on-demand
loads and idle unloads, explicit load and unload, the one drain routine, and
shutdown. Requests come in through its `Admission`; a profile switch moves routing
through the narrow API at the end (`begin_switch`, `commit_switch`, `end_switch`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import psutil

from msting.api.durations import format_duration
from msting.api.errors import Conflict, ServerError, Timeout, Unavailable
from msting.config import Config, Paths
from msting.daemon.local.admission import Admission, shutting_down
from msting.daemon.local.model import LocalModel, ModelState
from msting.daemon.local.pressure import memory_pressure
from msting.daemon.local.queue import LocalJob
from msting.daemon.local.routing import Routing
from msting.daemon.local.spares import WorkerLauncher
from msting.daemon.local.states import WorkerState
from msting.daemon.store import Store

log = logging.getLogger("msting.daemon.local")

REAPER_INTERVAL_SEC = 1.0


class LocalService:
    def __init__(self, config: Config, paths: Paths, routing: Routing, store: Store, launcher: WorkerLauncher | None = None):
        self.config = config
        self.paths = paths
        self.store = store
        self.launcher = launcher or WorkerLauncher(enabled=False)
        self.launcher.settled = self._settled
        routing.claim()
        self.admission = Admission(routing, store, unload=lambda m: self.spawn(m.stop(), name=f"evict {m.key}"),
                                   loaded=self.all_models)
        self.switch_job: str | None = None  # the id of the running switch's job
        self.pressure: str | None = None  # why memory is short (power_saving), as the reaper last saw it
        self.started_at = time.time()
        self._tasks: set[asyncio.Task] = set()  # asyncio keeps only weak references to tasks

    @property
    def routing(self) -> Routing:
        return self.admission.routing

    @property
    def stopping(self) -> bool:
        return self.admission.closed

    def start(self) -> None:
        self.activate(self.routing)
        self.spawn(self._reap_idle(), name="reaper")
        self.launcher.start()

    def _settled(self) -> bool:
        """No worker is starting or loading: the moment to start a spare (a switch that
        is past its load step, draining the old profile, counts as settled)."""
        if self.stopping:
            return False
        return not any(w.state in (WorkerState.STARTING, WorkerState.LOADING) for m in self.all_models() for w in m.workers)

    def spawn(self, coro: Any, name: str) -> asyncio.Task:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def activate(self, routing: Routing) -> None:
        """Start the always-ready models of `routing` (idempotent)."""
        if not self.config.llm_service.always_ready:
            return
        for m in routing.models.values():
            if m.spec.always_ready and not m.started:
                m.start()

    def all_models(self) -> list[LocalModel]:
        """Every model that may run: the active profile's, and a running switch's target's."""
        models = self.routing.all_models()
        incoming = self.admission.incoming
        if incoming is not None:
            models += [m for m in incoming.all_models() if m not in models]
        return models

    def shown_models(self) -> list[LocalModel]:
        """The models, plus each embeddings companion once something started it."""
        return [*self.routing.models.values(), *(m for m in self.routing.embedders.values() if m.started)]

    # ---- explicit load and unload ---------------------------------------------------

    async def load(self, name: str | None, timeout: float) -> dict:
        model = self.admission.find(name)
        already = model.state is ModelState.READY
        if not already:
            if self.stopping:
                raise shutting_down()
            if model.state in (ModelState.FAILED, ModelState.STOPPED):
                model.start()
            state = await model.wait_settled(timeout)
            if state is ModelState.FAILED:
                raise ServerError("model_load_failed", f"model '{model.name}' failed to load: {model.last_error}",
                                  stderr="\n".join(w.stderr_tail for w in model.workers)[-2000:])
            if state is not ModelState.READY:
                raise Timeout("load_timeout", f"model '{model.name}' was not ready within {timeout:g}s (state: {state.value})")
        return {"model": model.name, "state": model.state.value, "already_loaded": already, "load_ms": model.load_ms, "info": model.info or {}}

    async def unload(self, name: str | None) -> dict:
        """Stop a model's workers (after the requests in their slots) and check they are gone."""
        model = self.admission.find(name)
        if not model.on_demand:
            raise Conflict("model_always_ready",
                           f"model '{model.name}' is always_ready in profile '{self.routing.profile}'; switch profiles to unload it")
        pids: list[int] = []
        companion = self.routing.embedders.get(model.name)
        for part in (model, companion):
            if part is not None and part.started:
                pids += [w.pid for w in part.workers if w.pid]
                await part.stop()
        alive = [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
        self.store.record_event("model_unloaded", model=model.name, detail=f"workers {pids} gone" if not alive else f"still alive: {alive}")
        return {"model": model.name, "state": model.state.value, "stopped_pids": pids, "still_alive": alive}

    async def _reap_idle(self) -> None:
        """Unload on-demand models idle past their keep-alive, or past power_saving.idle_sec
        while memory is short (always-ready models never)."""
        while True:
            await asyncio.sleep(REAPER_INTERVAL_SEC)
            if self.switch_job is not None or self.stopping:
                continue
            loaded = [m for m in self.all_models() if m.started and m.state is not ModelState.FAILED]
            self.pressure = memory_pressure(self.config.llm_service.power_saving, loaded, budget=self.routing.budget_bytes,
                                            available=psutil.virtual_memory().available)
            now = time.monotonic()
            for m in self.routing.all_models():
                if not (m.on_demand and m.started and m.state in (ModelState.READY, ModelState.DEGRADED)):
                    continue
                at, why = m.unload_plan(now, self._pressure_idle_sec())
                if at is None or now < at:
                    continue
                idle = f"idle for {m.idle_for(now):.1f}s"
                detail = (f"{m.key} {idle}, memory is short: {self.pressure}" if why == "power_saving"
                          else f"{m.key} {idle}, past its keep-alive of {format_duration(m.keep_alive_sec or 0.0)}")
                log.info("unloading %s", detail)
                self.store.record_event("model_idle_unload", model=m.name, detail=detail)
                await m.stop()

    def _pressure_idle_sec(self) -> float | None:
        return self.config.llm_service.power_saving.idle_sec if self.pressure else None

    def unload_status(self, model: LocalModel) -> dict:
        """When the model will be unloaded, for status: `at` (a Unix time) and `in_sec`, or
        null for never; `reason`: keep_alive, power_saving, kept_loaded, always_ready,
        not_loaded or busy (the wait starts when its work ends)."""
        now = time.monotonic()
        at, why = model.unload_plan(now, self._pressure_idle_sec())
        if at is None:
            return {"at": None, "in_sec": None, "reason": why}
        return {"at": round(time.time() + at - now, 3), "in_sec": round(max(0.0, at - now), 1), "reason": why}

    # ---- a switch's narrow API (msting.daemon.local.switch) -------------------------

    def begin_switch(self, target: Routing, job_id: str, *, pause: bool) -> None:
        self.switch_job = job_id
        self.admission.expect(target, pause=pause)

    def commit_switch(self, target: Routing) -> None:
        """Route every request from now on to `target` (one assignment)."""
        self.admission.swap(target)

    def readmit(self, jobs: list[LocalJob]) -> None:
        """Jobs a retired model still held: admitted again on the routing in force."""
        for job in jobs:
            self.admission.readmit(job)

    def end_switch(self) -> None:
        """The switch is over, done or rolled back: held requests go to the routing in force."""
        self.admission.settle()
        self.switch_job = None

    # ---- draining and shutdown ------------------------------------------------------

    @staticmethod
    async def drain(models: list[LocalModel], grace: float) -> None:
        """Wait up to `grace` seconds until `models` have nothing queued or in flight
        (a failed or stopped model has nothing more to finish)."""
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(
                (len(m.queue) or m.in_flight) and m.state not in (ModelState.FAILED, ModelState.STOPPED) for m in models):
            await asyncio.sleep(0.02)

    async def shutdown(self, grace: float) -> None:
        """Refuse new work, let queued and in-flight requests finish within `grace`, stop workers."""
        held = self.admission.close()
        for task in list(self._tasks):
            task.cancel()
        models = self.all_models()
        await self.drain(models, grace)
        gone = "the daemon shut down before this request was served"
        for job in [*held, *(job for m in models for job in m.queue.drain_all())]:
            job.fail(Unavailable("shutting_down", gone, retry_after=5))
        results = await asyncio.gather(*(m.stop(retire=True) for m in models), self.launcher.close())
        for job in (job for leftover in results[:-1] for job in leftover):
            job.fail(Unavailable("shutting_down", gone, retry_after=5))

    def kill_workers(self) -> None:
        self.launcher.kill()
        for m in self.all_models():
            for w in m.workers:
                w.abort()
