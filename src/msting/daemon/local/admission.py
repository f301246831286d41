"""Admission: the front door of the local models.

A request is resolved against the routing in force, given its model's defaults,
and put in that model's queue; an on-demand model is started first (after the
eviction policy made room). While a drain-first switch runs, admission is paused:
requests are checked against the incoming profile and held until routing swaps.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import psutil

from msting.api.errors import MstingError, Unavailable
from msting.api.requests import EmbeddingRequest, Request
from msting.daemon.local.eviction import choose_victims
from msting.daemon.local.model import LocalModel, ModelState
from msting.daemon.local.queue import LocalJob, QueueFull
from msting.daemon.local.routing import Routing
from msting.daemon.store import Store

log = logging.getLogger("msting.daemon.admission")


def shutting_down() -> Unavailable:
    return Unavailable("shutting_down", "the daemon is shutting down", retry_after=5)


class Admission:
    def __init__(self, routing: Routing, store: Store, unload: Callable[[LocalModel], None], loaded: Callable[[], list[LocalModel]]):
        self.routing = routing
        self.store = store
        self._unload = unload  # stops a model in the background (an eviction)
        self._loaded = loaded  # every model that may hold memory, both profiles' during a switch
        self.incoming: Routing | None = None  # the profile a running switch moves to
        self.paused = False  # a drain-first switch: requests wait in `held` until routing swaps
        self.held: list[LocalJob] = []
        self.closed = False  # the daemon is shutting down

    # ---- resolving ------------------------------------------------------------------

    def find(self, name: str | None) -> LocalModel:
        return self.routing.find(name, also=self.incoming)

    def job(self, request: Request, *, stream: bool = False) -> LocalJob:
        """Admit `request`: a job in its model's queue (or held, during a paused switch).
        Raises what keeps it out: unknown model, failed model, full queue, no memory."""
        if self.closed:
            raise shutting_down()
        embed = isinstance(request, EmbeddingRequest)
        if self.paused and self.incoming is not None:
            # Admission is paused while the old profile drains: validate the name against
            # the incoming profile now, and queue the job once routing swaps.
            model = self.incoming.serving(request.model, embed=embed)
            job = LocalJob(request, model.name, stream=stream)
            self.held.append(job)
            return job
        model = self.routing.serving(request.model, embed=embed, also=self.incoming)
        job = LocalJob(request, model.name, stream=stream)
        self._enqueue(job, model)
        return job

    def _enqueue(self, job: LocalJob, model: LocalModel) -> None:
        job.model = model.name
        job.owner = model
        model.note_keep_alive(job.request.meta.keep_alive)
        if not job.embed:  # the model's own defaults for what the request left out
            sampling = job.request.sampling.with_defaults(model.spec.max_tokens, model.spec.temperature)
            if sampling is not job.request.sampling:
                from dataclasses import replace

                job.request = replace(job.request, sampling=sampling)
        if model.state is ModelState.FAILED:
            model.recheck()
        if model.state is ModelState.FAILED:
            fatal = model.fatal or {}
            raise Unavailable("model_failed", f"model '{model.name}' failed: {model.last_error}"
                              + (f"; it is {fatal['next']}" if fatal.get("next") else ""))
        if not model.started:
            self._make_room(model)
            model.start()  # on demand: the job waits in the queue while the model loads
        try:
            model.queue.put(job)
        except QueueFull:
            n = model.queue.maxsize
            waiting = f"{n} request{'s' if n != 1 else ''} waiting"
            slots = sum(w.slots for w in model.workers if w.verified)
            busy = f", and all {slots} slots of its workers busy" if slots and model.slots_busy >= slots else ""
            raise Unavailable("queue_full", f"the queue for model '{model.name}' is full ({waiting}{busy}); retry shortly",
                              retry_after=1) from None

    def _make_room(self, model: LocalModel) -> None:
        from msting.models.gguf_file import ModelFileError

        try:
            model.estimated_bytes
        except ModelFileError:
            return  # the worker reports the file's problem as a boot error, with the reason
        loaded = [m for m in self._loaded() if m.started and m.state is not ModelState.FAILED]  # a failed model holds no memory
        victims = choose_victims(model, loaded, budget=self.routing.budget_bytes,
                                 available=psutil.virtual_memory().available, now=time.monotonic())
        for victim in victims:
            log.info("unloading %s (idle, least recently used) to make room for %s", victim.key, model.key)
            self.store.record_event("model_evicted", model=victim.name, detail=f"{victim.key} unloaded to make room for {model.key}")
            self._unload(victim)

    # ---- a switch's narrow API ------------------------------------------------------

    def expect(self, incoming: Routing, *, pause: bool) -> None:
        """A switch to `incoming` began; `pause`: hold new requests until `swap`."""
        self.incoming = incoming
        self.paused = pause

    def swap(self, routing: Routing) -> None:
        """The atomic switch: resolve every request from now on against `routing`."""
        self.routing = routing
        routing.claim()
        self.settle()

    def settle(self) -> None:
        """The switch is over (done or rolled back): queue what was held, on the
        routing in force."""
        self.incoming = None
        self.paused = False
        held, self.held = self.held, []
        for job in held:
            if job.over:
                continue
            try:
                self._enqueue(job, self.routing.serving(job.request.model, embed=job.embed))
            except MstingError as err:
                job.fail(err)

    def readmit(self, job: LocalJob) -> None:
        """A queued job whose model left service: resolve it again, now."""
        if job.over:
            return
        if self.closed:
            return job.fail(shutting_down())
        try:
            self._enqueue(job, self.routing.serving(job.request.model, embed=job.embed, also=self.incoming))
        except MstingError as err:
            job.fail(err)

    def hold(self, jobs: list[LocalJob]) -> None:
        """Jobs taken back from models a rolled-back switch stops: they are queued
        again by `settle`."""
        self.held.extend(jobs)

    # ---- leaving --------------------------------------------------------------------

    def cancel(self, job: LocalJob) -> None:
        """The client went away: drop the job, or stop its generation."""
        if job.cancel() and job.owner is not None:
            job.owner.cancel_job(job)

    def close(self) -> list[LocalJob]:
        """Refuse new requests; returns the held ones, for the caller to answer."""
        self.closed = True
        held, self.held = self.held, []
        return held
