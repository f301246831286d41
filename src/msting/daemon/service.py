"""The daemon's model table: which models exist, their workers, queues and readiness.

`Service` is what the HTTP layer talks to. It knows nothing of HTTP; it raises
`ApiError`s that the HTTP layer renders.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

from msting import __version__
from msting.config import Config, Paths
from msting.daemon.requests import ApiError, GenerationRequest, ModelQueue, QueueFull, bad_request, server_error, unavailable, unknown_model
from msting.daemon.states import WorkerState
from msting.daemon.store import Store
from msting.daemon.worker import WorkerSupervisor

log = logging.getLogger("msting.daemon.service")

DEFAULT_ALIASES = frozenset({"default", ""})


@dataclass(frozen=True)
class ModelSpec:
    name: str
    source: str
    path: Path
    builtin: bool
    n_ctx: int
    n_threads: int
    n_gpu_layers: int
    replicas: int = 1
    always_ready: bool = True
    type: str = "llm"  # "llm" | "embeddings"
    chat_format: str | None = None


def default_threads() -> int:
    # On a small machine the daemon and its clients compete with llama.cpp for cores:
    # measured on 2 cores, 1 thread served more tokens/s than 2 (see docs/architecture.md).
    return max(1, (os.cpu_count() or 2) // 2)


def specs_from_config(config: Config, paths: Paths) -> list[ModelSpec]:
    llm = config.llm
    if llm.is_builtin:
        from msting.models.builtin import ensure_builtin_model

        path = ensure_builtin_model(paths.models_dir)
    else:
        path = Path(llm.model).expanduser()
    return [ModelSpec(
        name=llm.served_name,
        source=llm.model,
        path=path,
        builtin=llm.is_builtin,
        n_ctx=llm.n_ctx,
        n_threads=llm.n_threads or default_threads(),
        n_gpu_layers=llm.n_gpu_layers,
        replicas=llm.replicas,
        chat_format=llm.chat_format,
    )]


def embeddings_spec(spec: ModelSpec) -> ModelSpec:
    """An LLM is served for embeddings by a separate, embedding-enabled worker on the
    same file (mmap shares the weights); it starts on the first embeddings request."""
    return replace(spec, type="embeddings", replicas=1, always_ready=False)


class ModelRuntime:
    """One model: its replicas (workers), its bounded queue, and its counters."""

    def __init__(self, spec: ModelSpec, config: Config, store: Store):
        self.spec = spec
        self.store = store
        self.settings = config.llm_service
        self.queue = ModelQueue(self.settings.queue_size)
        # Worker ids must be unique in the daemon; an embeddings companion shares its model's name.
        self.key = spec.name if spec.type == "llm" else f"{spec.name}:embed"
        self.workers = [WorkerSupervisor(self, i) for i in range(spec.replicas)]
        self.requests_served = 0
        self.tokens_per_sec: float | None = None
        self.last_used = time.monotonic()
        self._changed = asyncio.Event()

    @property
    def name(self) -> str:
        return self.spec.name

    def worker_spec(self) -> dict:
        s = self.spec
        return {"name": s.name, "path": str(s.path), "n_ctx": s.n_ctx, "n_threads": s.n_threads, "n_gpu_layers": s.n_gpu_layers,
                "seed": 0, "embedding": s.type == "embeddings", "chat_format": s.chat_format}

    # ---- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        for w in self.workers:
            w.start()

    async def stop(self) -> None:
        await asyncio.gather(*(w.stop() for w in self.workers))

    @property
    def started(self) -> bool:
        return any(w.state is not WorkerState.STOPPED for w in self.workers)

    # ---- state ----------------------------------------------------------------------

    @property
    def state(self) -> str:
        states = [w.state for w in self.workers]
        if any(w.state.serving and w.verified for w in self.workers):
            return "ready"
        if all(s is WorkerState.FATAL for s in states):
            return "failed"
        if any(s is WorkerState.BACKOFF for s in states):
            return "degraded"
        if any(s.alive for s in states):
            return "loading"
        return "stopped"

    @property
    def last_error(self) -> str | None:
        errors = [w.last_error for w in self.workers if w.last_error]
        return errors[-1] if errors else None

    def record_event(self, kind: str, worker: WorkerSupervisor, detail: str | None = None) -> None:
        self.store.record_event(kind, model=self.name, worker=worker.id, detail=detail)

    def on_worker_state(self, worker: WorkerSupervisor) -> None:
        self._changed.set()
        if self.state == "failed":
            reason = self.last_error or "the model failed to load"
            for req in self.queue.drain_all():
                req.fail(unavailable("model_failed", f"model '{self.name}' failed: {reason}"))

    async def wait_settled(self, timeout: float) -> str:
        """Wait until the model is ready or failed; returns the state (or the current one on timeout)."""
        deadline = time.monotonic() + timeout
        while self.state not in ("ready", "failed"):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=remaining)
            except asyncio.TimeoutError:
                break
        return self.state

    @property
    def in_flight(self) -> int:
        return sum(1 for w in self.workers if w.current is not None and not w.current.internal)

    def on_request_finished(self, worker: WorkerSupervisor, req: GenerationRequest) -> None:
        self.requests_served += 1
        self.last_used = time.monotonic()
        self._changed.set()

    def record_speed(self, tokens_per_sec: float) -> None:
        # An exponentially weighted average: recent speed, without keeping a history.
        prev = self.tokens_per_sec
        self.tokens_per_sec = tokens_per_sec if prev is None else 0.8 * prev + 0.2 * tokens_per_sec

    @property
    def info(self) -> dict | None:
        for w in self.workers:
            if w.info:
                return w.info
        return None

    @property
    def load_ms(self) -> float | None:
        loads = [w.load_ms for w in self.workers if w.load_ms is not None]
        return loads[-1] if loads else None

    def snapshot(self) -> dict:
        info = self.info or {}
        return {
            "name": self.name,
            "type": self.spec.type,
            "source": self.spec.source,
            "path": str(self.spec.path),
            "builtin": self.spec.builtin,
            "always_ready": self.spec.always_ready,
            "state": self.state,
            "verified": any(w.verified for w in self.workers),
            "load_ms": self.load_ms,
            "backend": info.get("backend"),
            "n_ctx": self.spec.n_ctx,
            "n_threads": self.spec.n_threads,
            "replicas": len(self.workers),
            "queue_depth": len(self.queue),
            "in_flight": self.in_flight,
            "requests_served": self.requests_served,
            "tokens_per_sec": round(self.tokens_per_sec, 1) if self.tokens_per_sec else None,
            "restarts": sum(w.restarts for w in self.workers),
            "last_error": self.last_error,
            "workers": [w.snapshot() for w in self.workers],
        }


class Service:
    def __init__(self, config: Config, paths: Paths, specs: list[ModelSpec], store: Store):
        self.config = config
        self.paths = paths
        self.store = store
        self.models = {spec.name: ModelRuntime(spec, config, store) for spec in specs}
        self.embedders = {
            spec.name: ModelRuntime(embeddings_spec(spec), config, store) for spec in specs if spec.type == "llm"
        }
        self.default_model = specs[0].name
        self.started_at = time.time()
        self.stopping = False
        self._idle = asyncio.Event()

    def start(self) -> None:
        if not self.config.llm_service.always_ready:
            return
        for rt in self.models.values():
            if rt.spec.always_ready:
                rt.start()

    # ---- requests -------------------------------------------------------------------

    def resolve(self, name: str | None) -> ModelRuntime:
        """A model by name: plain (`msting-tiny`), `service~model` (`local~msting-tiny`),
        or `default`/omitted for the default model. Never a silent substitute."""
        if name is None or name in DEFAULT_ALIASES:
            return self.models[self.default_model]
        service, sep, model = name.partition("~")
        if sep:
            if service != "local":
                raise unknown_model(name, sorted(self.models), f"unknown service '{service}'; the services are: local")
            name = model
            if name in DEFAULT_ALIASES:
                return self.models[self.default_model]
        rt = self.models.get(name)
        if rt is None:
            raise unknown_model(name, sorted(self.models))
        return rt

    def runtime_for(self, req: GenerationRequest) -> ModelRuntime:
        rt = self.resolve(req.model)
        if req.kind == "embed" and rt.spec.type != "embeddings":
            return self.embedders[rt.name]
        if req.kind == "generate" and rt.spec.type == "embeddings":
            raise bad_request(f"model '{rt.name}' is an embeddings model; it does not generate text", "model_not_generative")
        return rt

    def all_runtimes(self) -> list[ModelRuntime]:
        return [*self.models.values(), *self.embedders.values()]

    def shown_runtimes(self) -> list[ModelRuntime]:
        """The models, plus each embeddings companion once something started it."""
        return [*self.models.values(), *(rt for rt in self.embedders.values() if rt.started)]

    def submit(self, req: GenerationRequest) -> None:
        if self.stopping:
            raise unavailable("shutting_down", "the daemon is shutting down", retry_after=5)
        rt = self.runtime_for(req)
        req.model = rt.name
        req.runtime = rt
        if rt.state == "failed":
            raise unavailable("model_failed", f"model '{rt.name}' failed: {rt.last_error}")
        if not rt.started:
            rt.start()  # on demand: the request waits in the queue while the model loads
        try:
            rt.queue.put(req)
        except QueueFull:
            raise unavailable("queue_full", f"the queue for model '{rt.name}' is full ({rt.queue.maxsize} requests); retry shortly", retry_after=1) from None

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

    # ---- readiness and status -------------------------------------------------------

    def readiness(self) -> tuple[str, str | None]:
        if self.stopping:
            return "stopping", "the daemon is shutting down"
        active = [rt for rt in self.models.values() if rt.started or (self.config.llm_service.always_ready and rt.spec.always_ready)]
        if not active:
            return "idle", "no model is loaded; POST /models/load to load one"
        for state, reason in (
            ("failed", "model '{name}' failed: {error}"),
            ("degraded", "model '{name}' is restarting after a crash: {error}"),
            ("loading", "model '{name}' is loading"),
            ("stopped", "model '{name}' is not loaded"),
        ):
            for rt in active:
                if rt.state == state:
                    return ("loading" if state == "stopped" else state), reason.format(name=rt.name, error=rt.last_error)
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
            "profile": "default",
            "config_file": str(self.paths.config_file) if self.paths.config_file.exists() else None,
            "log_file": str(cfg.log_file(self.paths)),
            "ready": status == "ready",
            "readiness": {"status": status, "reason": reason},
            "default_model": self.default_model,
            "models": [rt.snapshot() for rt in self.shown_runtimes()],
            "events": self.store.recent_events(10),
        }

    # ---- shutdown -------------------------------------------------------------------

    async def shutdown(self, grace: float) -> None:
        """Refuse new work, let queued and in-flight requests finish within `grace`, stop workers."""
        self.stopping = True
        deadline = time.monotonic() + grace
        runtimes = self.all_runtimes()
        while time.monotonic() < deadline and any(
            (len(rt.queue) or rt.in_flight) and rt.state not in ("failed", "stopped") for rt in runtimes
        ):
            await asyncio.sleep(0.05)
        for rt in runtimes:
            for req in rt.queue.drain_all():
                req.fail(unavailable("shutting_down", "the daemon shut down before this request was served", retry_after=5))
        await asyncio.gather(*(rt.stop() for rt in runtimes))

    def kill_workers(self) -> None:
        for rt in self.all_runtimes():
            for w in rt.workers:
                w.kill_now("forced shutdown")
