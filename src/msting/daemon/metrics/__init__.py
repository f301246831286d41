"""The daemon's metrics, as `GET /metrics` serves them (the Prometheus text format).

One `DaemonMetrics` per daemon, nothing at module level:
- `requests` (msting.daemon.metrics.requests): the router's observer, counting every
  request per service and model (outcomes, tokens, time to first token, durations,
  retries, fallbacks);
- `events` (state.EventCounts): the store's events as they are recorded (restarts by
  cause, switches, every kind);
- `state` (state.StateCollector): gauges read from the daemon's snapshots at scrape time
  (models, workers and slots, services and their URLs, readiness, profile, jobs);
- `registry`: a prometheus_client CollectorRegistry of this daemon with
  prometheus_client's process, platform and GC collectors (`process_resident_memory_bytes`
  is the daemon's RSS), written by prometheus_client itself.
"""

from __future__ import annotations

from typing import Callable

from msting.daemon.jobs import Jobs
from msting.daemon.local.service import LocalService
from msting.daemon.metrics.requests import RequestMetrics
from msting.daemon.metrics.state import EventCounts, StateCollector
from msting.daemon.store import Store


class DaemonMetrics:
    def __init__(self, service: LocalService, jobs: Jobs, store: Store):
        from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
        from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

        self.content_type = CONTENT_TYPE_PLAIN_0_0_4
        self.registry = CollectorRegistry(auto_describe=False)
        for collector in (ProcessCollector, PlatformCollector, GCCollector):
            collector(registry=self.registry)
        self.requests = RequestMetrics()
        self.events = EventCounts()
        store.listeners.append(self.events.on_event)
        self._service = service
        self._jobs = jobs
        self.state: StateCollector | None = None
        self.usage: Callable[[], str] | None = None  # the usage log's cost counters (msting.policy.usage)

    def attach(self, services: Callable[[], list[dict]], readiness: Callable[[], tuple]) -> None:
        """The sources read at scrape time: the router's services() and the readiness."""
        self.state = StateCollector(self._service, self._jobs, services, readiness)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        families = [*self.events.families(), *(self.state.families() if self.state is not None else ())]
        state = "".join(f.text() for f in families).encode("utf-8")
        usage = self.usage().encode("utf-8") if self.usage is not None else b""
        return b"".join((self.requests.text(), usage, state, generate_latest(self.registry)))
