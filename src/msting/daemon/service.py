"""The daemon's model table: the active profile's models, their queues and readiness.

`Service` is what the HTTP layer talks to. It knows nothing of HTTP; it raises
`ApiError`s that the HTTP layer renders.

Routing is one immutable `Routing` value (profile, models, default model) that a
profile switch replaces in a single assignment, so a request is resolved against
either the old profile or the new one, never a mix.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field

import psutil

from msting import __version__
from msting.config import Config, Paths
from msting.daemon.jobs import Jobs
from msting.daemon.model_runtime import ModelRuntime, ModelSpec, embeddings_spec
from msting.daemon.requests import ApiError, GenerationRequest, QueueFull, bad_request, server_error, unavailable, unknown_model
from msting.daemon.spares import WorkerLauncher
from msting.daemon.states import WorkerState
from msting.daemon.store import Store

log = logging.getLogger("msting.daemon.service")

DEFAULT_ALIASES = frozenset({"default", ""})
REAPER_INTERVAL_SEC = 1.0


@dataclass(frozen=True)
class Routing:
    profile: str
    models: dict[str, ModelRuntime]
    embedders: dict[str, ModelRuntime]  # embedding-enabled companions of the llm models
    default_model: str
    budget_bytes: int | None = None

    @classmethod
    def build(cls, profile: str, specs: list[ModelSpec], config: Config, store: Store, budget_bytes: int | None = None,
              reuse: dict[str, ModelRuntime] | None = None, launcher: WorkerLauncher | None = None) -> Routing:
        """Runtimes for `specs`; a runtime in `reuse` with an identical spec is kept, not reloaded."""
        reuse = reuse or {}

        def runtime(spec: ModelSpec) -> ModelRuntime:
            old = reuse.get(f"{spec.type}:{spec.name}")
            return old if old is not None and old.spec == spec else ModelRuntime(spec, config, store, launcher)

        models = {s.name: runtime(s) for s in specs}
        embedders = {s.name: runtime(embeddings_spec(s)) for s in specs if s.type == "llm"}
        return cls(profile, models, embedders, specs[0].name, budget_bytes)

    def claim(self) -> None:
        """Mark the runtimes as this profile's (their state records in the store say so)."""
        for rt in self.runtimes():
            rt.profile = self.profile

    def runtimes(self) -> list[ModelRuntime]:
        return [*self.models.values(), *self.embedders.values()]

    def by_key(self) -> dict[str, ModelRuntime]:
        return {f"{rt.spec.type}:{rt.name}": rt for rt in self.runtimes()}


@dataclass
class SwitchProgress:
    """What the service must know while a switch runs (see daemon/switch.py)."""

    target: Routing
    job_id: str
    hold: bool = False  # admission paused: new requests wait here until routing swaps
    held: list[GenerationRequest] = field(default_factory=list)


class Service:
    def __init__(self, config: Config, paths: Paths, routing: Routing, store: Store, launcher: WorkerLauncher | None = None):
        self.config = config
        self.launcher = launcher or WorkerLauncher(enabled=False)
        self.launcher.settled = self._settled
        self.paths = paths
        self.store = store
        self.routing = routing
        routing.claim()
        self.jobs = Jobs(store)
        self.switching: SwitchProgress | None = None
        self.started_at = time.time()
        self.stopping = False
        self._tasks: set[asyncio.Task] = set()  # asyncio keeps only weak references to tasks

    def start(self) -> None:
        self.activate(self.routing)
        self.spawn(self._reap_idle(), name="reaper")
        self.launcher.start()

    def _settled(self) -> bool:
        """No worker is starting or loading: the moment to start a spare (a switch that
        is past its load step, draining the old profile, counts as settled)."""
        if self.stopping:
            return False
        return not any(w.state in (WorkerState.STARTING, WorkerState.LOADING) for rt in self.all_runtimes() for w in rt.workers)

    def spawn(self, coro, name: str) -> asyncio.Task:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def activate(self, routing: Routing) -> None:
        """Start the always-ready models of `routing` (idempotent)."""
        if not self.config.llm_service.always_ready:
            return
        for rt in routing.models.values():
            if rt.spec.always_ready and not rt.started:
                rt.start()

    # ---- compatibility views --------------------------------------------------------

    @property
    def models(self) -> dict[str, ModelRuntime]:
        return self.routing.models

    @property
    def default_model(self) -> str:
        return self.routing.default_model

    def all_runtimes(self) -> list[ModelRuntime]:
        runtimes = self.routing.runtimes()
        if self.switching is not None:
            runtimes += [rt for rt in self.switching.target.runtimes() if rt not in runtimes]
        return runtimes

    def shown_runtimes(self) -> list[ModelRuntime]:
        """The models, plus each embeddings companion once something started it."""
        return [*self.routing.models.values(), *(rt for rt in self.routing.embedders.values() if rt.started)]

    # ---- requests -------------------------------------------------------------------

    def resolve(self, name: str | None, routing: Routing | None = None) -> ModelRuntime:
        """A model by name: plain (`msting-tiny`), `service~model` (`local~msting-tiny`),
        or `default`/omitted for the default model. Never a silent substitute.

        During a switch, a model that only the incoming profile has is found there: its
        requests wait in its queue while it loads."""
        routing = routing or self.routing
        if name is not None:
            service, sep, model = name.partition("~")
            if sep:
                if service != "local":
                    raise unknown_model(name, sorted(routing.models), f"unknown service '{service}'; the services are: local")
                name = model
        if name is None or name in DEFAULT_ALIASES:
            return routing.models[routing.default_model]
        rt = routing.models.get(name)
        if rt is None and self.switching is not None and routing is self.routing:
            rt = self.switching.target.models.get(name)
        if rt is None:
            raise unknown_model(name, sorted(routing.models))
        return rt

    def runtime_for(self, req: GenerationRequest, routing: Routing | None = None) -> ModelRuntime:
        rt = self.resolve(req.model, routing)
        if req.kind == "embed" and rt.spec.type != "embeddings":
            owner = routing or self.routing
            return owner.embedders.get(rt.name) or self.switching.target.embedders[rt.name]
        if req.kind == "generate" and rt.spec.type == "embeddings":
            raise bad_request(f"model '{rt.name}' is an embeddings model; it does not generate text", "model_not_generative")
        return rt

    def submit(self, req: GenerationRequest) -> None:
        if self.stopping:
            raise unavailable("shutting_down", "the daemon is shutting down", retry_after=5)
        if self.switching is not None and self.switching.hold:
            # Admission is paused while the old profile drains: validate the name against
            # the incoming profile now, and queue the request once routing swaps.
            self.runtime_for(req, self.switching.target)
            self.switching.held.append(req)
            return
        self._enqueue(req, self.runtime_for(req))

    def _enqueue(self, req: GenerationRequest, rt: ModelRuntime) -> None:
        req.model = rt.name
        req.runtime = rt
        if req.kind == "generate":  # the model's own defaults for what the request left out
            for key, default in (("max_tokens", rt.spec.max_tokens), ("temperature", rt.spec.temperature)):
                if req.params.get(key) is None:
                    req.params[key] = default
        if rt.state == "failed":
            rt.recheck()
        if rt.state == "failed":
            fatal = rt.fatal or {}
            raise unavailable("model_failed", f"model '{rt.name}' failed: {rt.last_error}"
                              + (f"; it is {fatal['next']}" if fatal.get("next") else ""))
        if not rt.started:
            self._make_room(rt)
            rt.start()  # on demand: the request waits in the queue while the model loads
        try:
            rt.queue.put(req)
        except QueueFull:
            raise unavailable("queue_full", f"the queue for model '{rt.name}' is full ({rt.queue.maxsize} requests); retry shortly", retry_after=1) from None

    def _make_room(self, rt: ModelRuntime) -> None:
        """Before an on-demand load: check memory (available, and the profile's budget),
        unloading idle on-demand models, least recently used first, to make room.
        Refuse clearly rather than risk an out-of-memory kill."""
        from msting.models.gguf_file import ModelFileError
        from msting.models.memory import format_bytes

        try:
            need = rt.estimated_bytes
        except ModelFileError:
            return  # the worker reports the file's problem as a boot error, with the reason
        loaded = [r for r in self.all_runtimes() if r.started and r is not rt]
        used = sum(r.estimated_bytes for r in loaded)
        budget = self.routing.budget_bytes
        available = psutil.virtual_memory().available
        now = time.monotonic()
        idle = sorted((r for r in loaded if r.on_demand and r.idle_for(now) > 0), key=lambda r: r.last_used)
        evict: list[ModelRuntime] = []

        def fits() -> bool:
            freed = sum(r.estimated_bytes for r in evict)
            return need <= available + freed and (budget is None or used - freed + need <= budget)

        while not fits() and idle:
            evict.append(idle.pop(0))
        if not fits():
            limit = f"the budget of {format_bytes(budget)} ({format_bytes(used)} in use)" if budget is not None and used + need > budget \
                else f"{format_bytes(available)} available"
            raise unavailable("insufficient_memory", f"model '{rt.name}' needs about {format_bytes(need)} but there is only {limit}, "
                              "and no idle on-demand model to unload", retry_after=5)
        for victim in evict:
            log.info("unloading %s (idle, least recently used) to make room for %s", victim.key, rt.key)
            self.store.record_event("model_evicted", model=victim.name, detail=f"{victim.key} unloaded to make room for {rt.key}")
            self.spawn(victim.stop(), name=f"evict {victim.key}")

    def release_held(self) -> None:
        """After a paused switch swapped routing: queue what waited, on the new profile."""
        held, self.switching.held = self.switching.held, []
        for req in held:
            if req.cancelled:
                continue
            try:
                self._enqueue(req, self.runtime_for(req))
            except ApiError as err:
                req.fail(err)

    def cancel(self, req: GenerationRequest) -> None:
        """The client went away: drop the request, or stop its generation."""
        req.cancelled = True
        rt = req.runtime
        if rt is None:
            return
        for w in rt.workers:
            if w.current is req:
                w.cancel(req)

    async def load(self, name: str | None, timeout: float) -> dict:
        rt = self.resolve(name)
        already = rt.state == "ready"
        if not already:
            if self.stopping:
                raise unavailable("shutting_down", "the daemon is shutting down", retry_after=5)
            if rt.state in ("failed", "stopped"):
                rt.start()
            state = await rt.wait_settled(timeout)
            if state == "failed":
                raise server_error("model_load_failed", f"model '{rt.name}' failed to load: {rt.last_error}",
                                   stderr="\n".join(w.stderr_tail for w in rt.workers)[-2000:])
            if state != "ready":
                raise ApiError(504, "timeout_error", "load_timeout", f"model '{rt.name}' was not ready within {timeout:g}s (state: {state})")
        return {"model": rt.name, "state": rt.state, "already_loaded": already, "load_ms": rt.load_ms, "info": rt.info or {}}

    async def unload(self, name: str | None) -> dict:
        """Stop a model's workers (after their current request) and check they are gone."""
        rt = self.resolve(name)
        if not rt.on_demand:
            raise ApiError(409, "invalid_request_error", "model_always_ready",
                           f"model '{rt.name}' is always_ready in profile '{self.routing.profile}'; switch profiles to unload it")
        pids: list[int] = []
        companion = self.routing.embedders.get(rt.name)
        for part in (rt, companion):
            if part is not None and part.started:
                pids += [w.pid for w in part.workers if w.pid]
                await part.stop()
        alive = [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
        self.store.record_event("model_unloaded", model=rt.name, detail=f"workers {pids} gone" if not alive else f"still alive: {alive}")
        return {"model": rt.name, "state": rt.state, "stopped_pids": pids, "still_alive": alive}

    async def _reap_idle(self) -> None:
        """Unload on-demand models idle past their keep-alive (always-ready ones never)."""
        while True:
            await asyncio.sleep(REAPER_INTERVAL_SEC)
            if self.switching is not None or self.stopping:
                continue
            now = time.monotonic()
            for rt in self.routing.runtimes():
                if rt.on_demand and rt.started and rt.state in ("ready", "degraded") and rt.idle_for(now) > rt.spec.keep_alive_sec:
                    log.info("unloading %s: idle for %.0fs (keep_alive_sec=%g)", rt.key, rt.idle_for(now), rt.spec.keep_alive_sec)
                    self.store.record_event("model_idle_unload", model=rt.name, detail=f"{rt.key} idle past keep_alive_sec={rt.spec.keep_alive_sec:g}")
                    await rt.stop()

    # ---- readiness and status -------------------------------------------------------

    def readiness(self) -> tuple[str, str | None]:
        if self.stopping:
            return "stopping", "the daemon is shutting down"
        active = [rt for rt in self.routing.models.values()
                  if rt.started or (self.config.llm_service.always_ready and rt.spec.always_ready)]
        if not active:
            return "idle", "no model is loaded; POST /models/load to load one"
        for rt in active:
            if rt.state == "failed":
                rt.recheck()
        for state, reason in (
            ("failed", "model '{name}' failed (FATAL): {error}; {next}"),
            ("degraded", "model '{name}' is restarting after a crash: {error}"),
            ("loading", "model '{name}' is loading"),
            ("stopped", "model '{name}' is not loaded"),
        ):
            for rt in active:
                if rt.state == state:
                    fatal = rt.fatal or {}
                    return ("loading" if state == "stopped" else state), reason.format(
                        name=rt.name, error=rt.last_error, next=fatal.get("next") or "it is not retried automatically")
        return "ready", None

    def health(self) -> dict:
        status, _ = self.readiness()
        return {
            "status": "ok",
            "version": __version__,
            "pid": os.getpid(),
            "uptime_sec": round(time.time() - self.started_at, 3),
            "ready": status == "ready",
            "readiness": status,
            "profile": self.routing.profile,
            "default_model": self.default_model,
            "models": {name: rt.state for name, rt in self.models.items()},
        }

    def status(self) -> dict:
        status, reason = self.readiness()
        cfg = self.config
        return {
            "version": __version__,
            "pid": os.getpid(),
            "started_at": self.started_at,
            "uptime_sec": round(time.time() - self.started_at, 3),
            "socket": str(cfg.socket_path(self.paths)),
            "url": cfg.url,
            "profile": self.routing.profile,
            "switch": running.to_dict() if (running := self.jobs.running("switch")) else None,
            "config_file": str(self.paths.config_file) if self.paths.config_file.exists() else None,
            "log_file": str(cfg.log_file(self.paths)),
            "ready": status == "ready",
            "readiness": {"status": status, "reason": reason},
            "default_model": self.default_model,
            "memory": self.memory(),
            "spare": self.spare_snapshot(),
            "models": [rt.snapshot() for rt in self.shown_runtimes()],
            "events": self.store.recent_events(10),
        }

    def memory(self) -> dict:
        workers_rss = sum(w_rss for rt in self.all_runtimes() for w_rss in rt.worker_rss().values())
        return {
            "daemon_rss_bytes": psutil.Process().memory_info().rss,
            "workers_rss_bytes": workers_rss,
            "available_bytes": psutil.virtual_memory().available,
            "budget_bytes": self.routing.budget_bytes,
        }

    def spare_snapshot(self) -> dict:
        """The warm spare worker: its pid and RSS, and how many worker starts it served."""
        snap = self.launcher.snapshot()
        snap["rss_bytes"] = None
        if snap["pid"] is not None:
            try:
                snap["rss_bytes"] = psutil.Process(snap["pid"]).memory_info().rss
            except psutil.Error:
                pass
        return snap

    # ---- shutdown -------------------------------------------------------------------

    async def shutdown(self, grace: float) -> None:
        """Refuse new work, let queued and in-flight requests finish within `grace`, stop workers."""
        self.stopping = True
        for task in list(self._tasks):
            task.cancel()
        deadline = time.monotonic() + grace
        runtimes = self.all_runtimes()
        while time.monotonic() < deadline and any(
            (len(rt.queue) or rt.in_flight) and rt.state not in ("failed", "stopped") for rt in runtimes
        ):
            await asyncio.sleep(0.05)
        for rt in runtimes:
            for req in rt.queue.drain_all():
                req.fail(unavailable("shutting_down", "the daemon shut down before this request was served", retry_after=5))
        if self.switching is not None:
            for req in self.switching.held:
                req.fail(unavailable("shutting_down", "the daemon shut down before this request was served", retry_after=5))
        await asyncio.gather(*(rt.stop() for rt in runtimes), self.launcher.close())

    def kill_workers(self) -> None:
        self.launcher.kill()
        for rt in self.all_runtimes():
            for w in rt.workers:
                w.abort()
