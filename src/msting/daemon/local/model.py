"""One local model: its spec, its replicas (supervised workers), its queue, its state
and its counters.

A model's state is derived from its workers' states (`ModelState`, one function). The
model is its workers' events sink: they report state changes, events for the store,
and the end of each request, and the model keeps the counts.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path

import psutil


from msting.api import limits
from msting.api.errors import Unavailable
from msting.config import Config
from msting.daemon.local.queue import LocalJob, ModelQueue
from msting.daemon.local.spares import WorkerLauncher
from msting.daemon.local.states import WorkerState
from msting.daemon.local.supervisor import WorkerSupervisor
from msting.daemon.store import Store


log = logging.getLogger("msting.daemon.local")


class ModelState(str, Enum):
    READY = "ready"  # a worker has verified it can generate and takes requests
    LOADING = "loading"
    DEGRADED = "degraded"  # a worker is backing off after a crash, none is ready
    FAILED = "failed"  # every worker is FATAL
    STOPPED = "stopped"

    def __str__(self) -> str:
        return self.value


def model_state(workers: list[WorkerState]) -> ModelState:
    """A model's state from its workers' states."""
    if any(s.serving for s in workers):
        return ModelState.READY
    if all(s is WorkerState.FATAL for s in workers):
        return ModelState.FAILED
    if any(s is WorkerState.BACKOFF for s in workers):
        return ModelState.DEGRADED
    if any(s.alive for s in workers):
        return ModelState.LOADING
    return ModelState.STOPPED


@dataclass(frozen=True)
class ModelSpec:
    name: str
    source: str
    path: Path
    builtin: bool
    n_ctx: int  # of each slot
    n_threads: int | None  # None: the worker measures which count decodes fastest
    n_gpu_layers: int
    replicas: int = 1
    parallel: int | None = None  # slots per worker; None: automatic (LocalModel.parallel)
    always_ready: bool = True
    type: str = "llm"  # "llm" | "embeddings"
    chat_format: str | None = None
    temperature: float = limits.DEFAULT_TEMPERATURE  # request defaults
    max_tokens: int = limits.DEFAULT_MAX_TOKENS
    keep_alive_sec: float = 300.0  # an on-demand model unloads after this long idle


def specs_from_profile(profile, models_dir: Path) -> list[ModelSpec]:
    """The model specs of a validated profile, default model first; writes the built-in
    model file if the profile uses it."""
    specs = []
    for name, pm in profile.models.items():
        builtin = pm.is_builtin
        if builtin:
            from msting.models.builtin import ensure_builtin_model

            path = ensure_builtin_model(models_dir)
        elif pm.installed is not None:
            from msting.models.installed import installed_path

            path = installed_path(models_dir, pm.installed)
        else:
            path = pm.path  # resolved against the profile file's folder
        p = pm.params
        specs.append(ModelSpec(
            name=name, source=pm.source, path=path, builtin=builtin, n_ctx=pm.n_ctx,
            n_threads=p.n_threads, n_gpu_layers=p.n_gpu_layers, replicas=pm.replicas, parallel=pm.parallel,
            always_ready=pm.always_ready, type=pm.type, chat_format=p.chat_format,
            temperature=p.temperature, max_tokens=p.max_tokens, keep_alive_sec=pm.keep_alive_sec,
        ))
    specs.sort(key=lambda spec: spec.name != profile.default_model)
    return specs


def embeddings_spec(spec: ModelSpec) -> ModelSpec:
    """An LLM is served for embeddings by a separate, embedding-enabled worker on the
    same file (mmap shares the weights); it starts on the first embeddings request."""
    return replace(spec, type="embeddings", replicas=1, always_ready=False)


class LocalModel:
    """One model: its replicas (workers), its bounded queue, and its counters."""

    def __init__(self, spec: ModelSpec, config: Config, store: Store, launcher: WorkerLauncher | None = None,
                 budget_bytes: int | None = None):
        self.spec = spec
        self.budget_bytes = budget_bytes  # the profile's memory budget: what an automatic `parallel` must fit
        self._parallel: int | None = spec.parallel
        self.launcher = launcher or WorkerLauncher(enabled=False)  # starts its worker processes
        self.store = store
        self.settings = config.llm_service
        self.queue = ModelQueue(self.settings.queue_size)
        # Worker ids must be unique in the daemon; an embeddings companion shares its model's name.
        self.key = spec.name if spec.type == "llm" else f"{spec.name}:embed"
        self.workers = [WorkerSupervisor(f"{self.key}#{i}", spec.name, self.worker_spec, self.settings, self.launcher, self.queue, self)
                        for i in range(spec.replicas)]
        self.profile: str | None = None  # set by the routing that serves it, for the store's model records
        self.requests_served = 0
        self.requests_cancelled = 0  # stopped mid-generation because the client went away
        self.cached_tokens = 0  # prompt tokens the workers reused from a slot's KV cache instead of recomputing
        self._estimate: int | None = None
        self.tokens_per_sec: float | None = None
        self.last_used = time.monotonic()
        self.requested_keep_alive: float | None = None  # the last request's keep_alive (None: the spec's)
        self._changed = asyncio.Event()
        self._saved: tuple | None = None  # (profile, state, last_error) last written to the store

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def on_demand(self) -> bool:
        """Loaded when first asked for and unloaded when idle past its keep-alive."""
        return not (self.spec.always_ready and self.settings.always_ready)

    def worker_spec(self) -> dict:
        s = self.spec
        return {"name": s.name, "path": str(s.path), "n_ctx": s.n_ctx, "parallel": self.parallel, "n_threads": s.n_threads,
                "n_gpu_layers": s.n_gpu_layers, "seed": 0, "embedding": s.type == "embeddings", "chat_format": s.chat_format}

    @property
    def parallel(self) -> int:
        """Slots per worker: the profile's `parallel`, or the automatic choice, made
        once the model file can be read (until then 1: the worker reports the file's
        problem): the largest of 8, 4, 2, 1 whose memory estimate fits the budget and
        the memory available (msting.models.memory.choose_parallel)."""
        if self._parallel is None:
            from msting.models.gguf_file import ModelFileError, read_gguf_info
            from msting.models.memory import choose_parallel

            try:
                info = read_gguf_info(self.spec.path)
            except ModelFileError:
                return 1
            self._parallel = choose_parallel(info, self.spec.n_ctx, self.spec.replicas, budget_bytes=self.budget_bytes,
                                             embedding=self.spec.type == "embeddings")
        return self._parallel

    # ---- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        self.last_used = time.monotonic()
        for w in self.workers:
            w.start()

    async def stop(self, *, retire: bool = False) -> list[LocalJob]:
        """Stop the workers; each finishes the request in hand first. Requests admitted
        while they stopped are never left in a queue no worker reads: the model starts
        again for them, or with `retire` (the model leaves service: a switch retired it,
        or the daemon shuts down) they are returned, for the caller to send elsewhere or
        answer."""
        await asyncio.gather(*(w.stop() for w in self.workers))
        if not len(self.queue):
            return []
        if retire:
            return self.queue.drain_all()
        log.info("%s: %d request(s) arrived while it stopped: starting it again", self.key, len(self.queue))
        self.start()
        return []

    def recheck(self) -> None:
        """A failed model whose file was fixed: try again now (see WorkerSupervisor.recheck)."""
        for w in self.workers:
            w.recheck()

    @property
    def estimated_bytes(self) -> int:
        """Memory this model needs when loaded (weights once, KV cache per slot, and
        overhead, per replica)."""
        if self._estimate is None:
            from msting.models.gguf_file import read_gguf_info
            from msting.models.memory import estimate_model

            info = read_gguf_info(self.spec.path)
            self._estimate = estimate_model(info, self.spec.n_ctx, self.spec.replicas, parallel=self.parallel,
                                            embedding=self.spec.type == "embeddings").total_bytes
        return self._estimate

    def idle_for(self, now: float) -> float:
        """Seconds since the model last did anything (0 while it has work)."""
        if len(self.queue) or self.in_flight:
            return 0.0
        return now - self.last_used

    def note_keep_alive(self, seconds: float | None) -> None:
        """A request for this model was admitted: its keep_alive holds from now on, as in
        Ollama (a request without one goes back to the profile's). An always-ready model
        keeps no keep-alive: it is never unloaded."""
        if self.on_demand:
            self.requested_keep_alive = seconds

    @property
    def keep_alive_sec(self) -> float | None:
        """How long the model stays loaded once idle: the last request's keep_alive, else
        the profile's keep_alive_sec; math.inf: kept loaded; None: always ready."""
        if not self.on_demand:
            return None
        return self.spec.keep_alive_sec if self.requested_keep_alive is None else self.requested_keep_alive

    def unload_plan(self, now: float, pressure_idle_sec: float | None = None) -> tuple[float | None, str]:
        """(when the reaper unloads the model, on the monotonic clock, or None; why, in a
        word: keep_alive, power_saving (memory pressure shortens the wait to
        `pressure_idle_sec`), kept_loaded, always_ready, not_loaded, busy)."""
        keep = self.keep_alive_sec
        if keep is None:
            return None, "always_ready"
        if not self.started:
            return None, "not_loaded"
        if len(self.queue) or self.in_flight:
            return None, "busy"
        if pressure_idle_sec is not None and pressure_idle_sec < keep:
            return self.last_used + pressure_idle_sec, "power_saving"
        if math.isinf(keep):
            return None, "kept_loaded"
        return self.last_used + keep, "keep_alive"

    @property
    def started(self) -> bool:
        return any(w.state is not WorkerState.STOPPED for w in self.workers)

    # ---- state ----------------------------------------------------------------------

    @property
    def state(self) -> ModelState:
        return model_state([w.state for w in self.workers])

    @property
    def fatal(self) -> dict | None:
        """Why the model is failed and what will bring it back (its FATAL workers' word)."""
        if self.state is not ModelState.FAILED:
            return None
        for w in self.workers:
            snap = w.fatal.to_dict() if w.fatal is not None else None
            if snap is not None:
                return snap
        return None

    @property
    def last_error(self) -> str | None:
        errors = [w.last_error for w in self.workers if w.last_error]
        return errors[-1] if errors else None

    # ---- the workers' events sink (msting.daemon.local.supervisor.SupervisorEvents) ----

    def on_event(self, kind: str, worker: WorkerSupervisor, detail: str | None = None) -> None:
        self.store.record_event(kind, model=self.name, worker=worker.id, detail=detail)

    def on_state(self, worker: WorkerSupervisor) -> None:
        self._changed.set()
        state = self.state
        record = (self.profile, state, self.last_error)
        # READY <-> BUSY twice per request leaves the model's state as it was: write the
        # store only on a real change (a SQLite commit costs more than the request's own
        # bookkeeping)
        if self.profile is not None and record != self._saved:
            self.store.save_model_state(self.profile, self.key, state.value, self.last_error)
            self._saved = record
        if state is ModelState.FAILED:
            reason = self.last_error or "the model failed to load"
            for job in self.queue.drain_all():
                job.fail(Unavailable("model_failed", f"model '{self.name}' failed: {reason}"))

    def on_answer(self, worker: WorkerSupervisor, job: LocalJob, frame: dict) -> None:
        """A worker answered `job` (its done frame)."""
        cached = (frame.get("usage") or {}).get("cached_tokens")
        if isinstance(cached, int) and not isinstance(cached, bool) and cached > 0:
            self.cached_tokens += cached
        speed = (frame.get("timings") or {}).get("predicted_per_second")
        tokens_per_sec = float(speed) if isinstance(speed, (int, float)) and speed else None
        if frame.get("finish_reason") == "cancelled":
            self.requests_cancelled += 1
        elif tokens_per_sec and not job.internal:
            # An exponentially weighted average: recent speed, without keeping a history.
            prev = self.tokens_per_sec
            self.tokens_per_sec = tokens_per_sec if prev is None else 0.8 * prev + 0.2 * tokens_per_sec

    def cancel_job(self, job: LocalJob) -> None:
        for w in self.workers:
            w.cancel(job)

    def on_finished(self, worker: WorkerSupervisor, job: LocalJob) -> None:
        """A worker is done with `job` and free again."""
        self.requests_served += 1
        self.last_used = time.monotonic()
        self._changed.set()

    async def wait_settled(self, timeout: float) -> ModelState:
        """Wait until the model is ready or failed; returns the state (or the current one on timeout)."""
        deadline = time.monotonic() + timeout
        while self.state not in (ModelState.READY, ModelState.FAILED):
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
    def slots_busy(self) -> int:
        return sum(w.slots_busy for w in self.workers)

    @property
    def in_flight(self) -> int:
        return sum(w.in_flight for w in self.workers)

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

    def worker_rss(self) -> dict[int, int]:
        """Resident memory of each live worker process, by pid."""
        rss = {}
        for w in self.workers:
            if w.pid:
                try:
                    rss[w.pid] = psutil.Process(w.pid).memory_info().rss
                except psutil.Error:
                    pass
        return rss

    def snapshot(self) -> dict:
        info = self.info or {}
        rss = self.worker_rss()
        return {
            "name": self.name,
            "type": self.spec.type,
            "source": self.spec.source,
            "path": str(self.spec.path),
            "builtin": self.spec.builtin,
            "always_ready": self.spec.always_ready,
            "state": self.state.value,
            "verified": any(w.verified for w in self.workers),
            "load_ms": self.load_ms,
            "backend": info.get("backend"),
            "n_ctx": self.spec.n_ctx,
            "n_threads": self.spec.n_threads,  # as configured; None = measured by each worker (see workers)
            "replicas": len(self.workers),
            "parallel": self.parallel,
            "slots": sum(w.slots for w in self.workers if w.verified),
            "slots_busy": self.slots_busy,
            "cached_tokens": self.cached_tokens,
            "queue_depth": len(self.queue),
            "in_flight": self.in_flight,
            "requests_served": self.requests_served,
            "requests_cancelled": self.requests_cancelled,
            "tokens_per_sec": round(self.tokens_per_sec, 1) if self.tokens_per_sec else None,
            "restarts": sum(w.restarts for w in self.workers),
            "last_error": self.last_error,
            "fatal": self.fatal,
            "keep_alive_sec": -1 if self.keep_alive_sec == math.inf else self.keep_alive_sec,  # -1: kept loaded
            "keep_alive_source": None if self.keep_alive_sec is None else "profile" if self.requested_keep_alive is None else "request",
            "rss_bytes": sum(rss.values()),
            "workers": [{**w.snapshot(), "rss_bytes": rss.get(w.pid)} for w in self.workers],
        }
