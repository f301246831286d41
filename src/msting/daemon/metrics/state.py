"""State metrics: gauges read from the daemon's own snapshots at scrape time, and the
counters of the events it records.

Nothing here is kept up to date between scrapes: a scrape reads the local models (state,
queue, requests in flight, workers and slots busy, load time, memory), the services'
status (each URL's health, circuit, latency, attempts), readiness, the active profile,
a switch in progress and the jobs. `EventCounts` listens to the store's events (the
supervisors', switches', unloads') and counts them: restarts by cause, switches by
outcome, every event by kind.
"""

from __future__ import annotations

import time
from types import MappingProxyType
from typing import Callable

from msting.daemon.jobs import Jobs
from msting.daemon.local.model import ModelState
from msting.daemon.local.service import LocalService
from msting.daemon.metrics.exposition import Family, label_text

READINESS = ("ready", "idle", "loading", "degraded", "failed", "stopping")
SERVICE_STATES = READINESS
URL_STATES = ("up", "down", "cooling_down", "probing")
CIRCUIT = MappingProxyType({"up": "closed", "probing": "half_open", "down": "open", "cooling_down": "open"})
CIRCUIT_STATES = ("closed", "open", "half_open")

# Why a worker restarted, from its `worker_crash` event's detail (the supervisor's words).
CAUSES = (("hung:", "hang"), ("did not report ready", "start_timeout"), ("verification", "verify_failed"),
          ("protocol error", "protocol_error"), ("supervision error", "supervision_error"))
RESTART_EVENTS = frozenset({"worker_crash", "worker_retry", "model_restart"})


def restart_cause(kind: str, detail: str | None) -> str:
    if kind == "worker_retry":
        return "fatal_retry"  # a FATAL worker tried again (its file changed, time passed, a load)
    if kind == "model_restart":
        return "operator"
    for start, cause in CAUSES:
        if detail and detail.startswith(start):
            return cause
    return "crash"  # the process exited or was killed


class EventCounts:
    """The store's events, counted as they are recorded (msting.daemon.store listeners)."""

    def __init__(self) -> None:
        self.by_kind: dict[str, int] = {}
        self.restarts: dict[tuple[str, str], int] = {}  # (model, cause)

    def on_event(self, kind: str, model: str | None, detail: str | None) -> None:
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1
        if kind in RESTART_EVENTS and model is not None:
            key = (model, restart_cause(kind, detail))
            self.restarts[key] = self.restarts.get(key, 0) + 1

    def families(self) -> list[Family]:
        events = Family("msting_events_total", "counter", "Events the daemon recorded (its event log), by kind.")
        for kind, n in sorted(self.by_kind.items()):
            events.add(label_text((("kind", kind),)), n)
        restarts = Family("msting_model_restarts_total", "counter",
                          "Worker restarts by cause: crash, hang, start_timeout, verify_failed, protocol_error, "
                          "supervision_error, fatal_retry (a failed worker tried again), operator (a restart asked for).")
        for (model, cause), n in sorted(self.restarts.items()):
            restarts.add(label_text((("service", "local"), ("model", model), ("cause", cause))), n)
        switches = Family("msting_profile_switches_total", "counter", "Profile switches that ended, by outcome.")
        for outcome, kind in (("ok", "profile_switched"), ("failed", "profile_switch_failed")):
            switches.add(label_text((("outcome", outcome),)), self.by_kind.get(kind, 0))
        return [events, restarts, switches]


def _slots(worker: dict) -> tuple[int, int]:
    """(slots, slots busy) of one worker's snapshot; a worker without slot counts
    serves one request at a time when it is ready or busy."""
    if worker.get("slots") is not None:
        return worker["slots"], worker.get("slots_busy") or 0
    if worker["state"] in ("ready", "busy"):
        return 1, int(worker["state"] == "busy")
    return 0, 0


class StateCollector:
    def __init__(self, service: LocalService, jobs: Jobs, services: Callable[[], list[dict]], readiness: Callable[[], tuple]):
        self.service = service
        self.jobs = jobs
        self.services = services  # the router's services(): each one's status
        self.readiness = readiness  # (status, reason, ...) as /health/ready gives it

    def families(self) -> list[Family]:
        return [*self._daemon(), *self._models(), *self._services()]

    def _daemon(self) -> list[Family]:
        s = self.service
        from msting import __version__

        info = Family("msting_build_info", "gauge", "The daemon's version (always 1).")
        info.add(label_text((("version", __version__),)), 1)
        uptime = Family("msting_uptime_seconds", "gauge", "Seconds since the daemon started.")
        uptime.add("", round(time.time() - s.started_at, 3))
        status = self.readiness()[0]
        ready = Family("msting_readiness", "gauge", "The daemon's readiness (1 for the current state).")
        for state in READINESS:
            ready.add(label_text((("state", state),)), int(state == status))
        profile = Family("msting_active_profile", "gauge", "The active profile (always 1).")
        profile.add(label_text((("profile", s.routing.profile),)), 1)
        switching = Family("msting_switch_in_progress", "gauge", "1 while a profile switch runs.")
        switching.add("", int(self.jobs.running("switch") is not None))
        jobs = Family("msting_jobs", "gauge", "This daemon's jobs (model installs, imports, updates, deletes, loads and unloads, profile switches), by kind and state.")
        for (kind, state), n in sorted(self.jobs.counts().items()):
            jobs.add(label_text((("kind", kind), ("state", state))), n)
        return [info, uptime, ready, profile, switching, jobs]

    def _models(self) -> list[Family]:
        state = Family("msting_model_state", "gauge", "Each local model's state (1 for the current one).")
        queue = Family("msting_model_queue_depth", "gauge", "Requests waiting in the model's queue.")
        in_flight = Family("msting_model_in_flight", "gauge", "Requests the model's workers are serving.")
        workers = Family("msting_model_workers", "gauge", "The model's workers (replicas).")
        busy = Family("msting_model_workers_busy", "gauge", "Workers serving at least one request.")
        slots = Family("msting_model_slots", "gauge", "Sequences the model's ready workers can serve at once.")
        slots_busy = Family("msting_model_slots_busy", "gauge", "Sequences the model's workers are serving.")
        load = Family("msting_model_load_seconds", "gauge", "How long the model's last worker load took.")
        memory = Family("msting_model_memory_bytes", "gauge", "Resident memory of the model's worker processes.")
        for m in self.service.shown_models():
            inner = label_text((("service", "local"), ("model", m.key)))
            current = m.state
            for st in ModelState:
                state.add(f'{inner},state="{st.value}"', int(st is current))
            queue.add(inner, len(m.queue))
            in_flight.add(inner, m.in_flight)
            held = [_slots(w.snapshot()) for w in m.workers]
            workers.add(inner, len(held))
            busy.add(inner, sum(1 for _, b in held if b))
            slots.add(inner, sum(t for t, _ in held))
            slots_busy.add(inner, sum(b for _, b in held))
            if m.load_ms is not None:
                load.add(inner, round(m.load_ms / 1000, 4))
            memory.add(inner, sum(m.worker_rss().values()))
        return [state, queue, in_flight, workers, busy, slots, slots_busy, load, memory]

    def _services(self) -> list[Family]:
        status = Family("msting_service_state", "gauge", "Each service's state (1 for the current one).")
        models = Family("msting_service_models", "gauge", "Models each service lists (configured and discovered).")
        url_state = Family("msting_upstream_state", "gauge", "Each remote URL's state: up, down (its health check failed), "
                           "cooling_down (its circuit is open after failures), probing (1 for the current one).")
        circuit = Family("msting_upstream_circuit", "gauge", "Each remote URL's circuit breaker (1 for the current state).")
        healthy = Family("msting_upstream_healthy", "gauge", "1 unless the URL's last health check failed.")
        latency = Family("msting_upstream_latency_seconds", "gauge", "Each remote URL's smoothed latency (first content or health check).")
        flying = Family("msting_upstream_in_flight", "gauge", "Requests in flight to each remote URL.")
        attempts = Family("msting_upstream_attempts_total", "counter", "Attempts sent to each remote URL, by outcome.")
        for svc in self.services():
            name = svc["name"]
            own = label_text((("service", name),))
            for st in SERVICE_STATES:
                status.add(f'{own},state="{st}"', int(svc.get("status") == st))
            models.add(own, len(svc.get("models") or ()))
            for url in svc.get("urls") or ():
                inner = label_text((("service", name), ("url", url["url"])))
                now = url["state"]
                for st in URL_STATES:
                    url_state.add(f'{inner},state="{st}"', int(now == st))
                for st in CIRCUIT_STATES:
                    circuit.add(f'{inner},state="{st}"', int(CIRCUIT.get(now) == st))
                healthy.add(inner, int(now != "down"))
                if url.get("latency_ms") is not None:
                    latency.add(inner, round(url["latency_ms"] / 1000, 6))
                flying.add(inner, url.get("in_flight") or 0)
                attempts.add(f'{inner},outcome="ok"', url.get("served") or 0)
                attempts.add(f'{inner},outcome="failed"', url.get("failed") or 0)
        return [status, models, url_state, circuit, healthy, latency, flying, attempts]
