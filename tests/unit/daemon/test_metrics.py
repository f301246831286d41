"""msting.daemon.metrics: the text it writes is what prometheus_client's parser reads
back (escaping, histograms, label sets), and the request observer counts what the real
router (with the real stub provider) sees: outcomes, tokens, time to first token, a
stream left early, unknown names kept out of the labels, the cap on model labels."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client.parser import text_string_to_metric_families

from msting.api.errors import NotFound
from msting.api.requests import CompletionRequest, SamplingParams
from msting.daemon.metrics import requests as request_metrics
from msting.daemon.metrics.exposition import INF, Family, Histogram, bucket_labels, histogram_lines, label_text
from msting.daemon.metrics.requests import RequestMetrics
from msting.daemon.metrics.state import EventCounts, restart_cause
from msting.providers.router import RequestEnded, Router
from msting.providers.stub import StubProvider


def parsed(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_label_values_are_escaped_and_read_back():
    hostile = 'a "quoted"\\ name\nwith a newline ~ {} ,='
    fam = Family("msting_x", "gauge", "help with a \\ and a\nnewline")
    fam.add(label_text((("model", hostile), ("service", "s"))), 2.5)
    fam.add("", 3)
    got = parsed(fam.text())
    assert got[("msting_x", (("model", hostile), ("service", "s")))] == 2.5
    assert got[("msting_x", ())] == 3


def test_a_histogram_is_cumulative_with_sum_and_count():
    bounds = (0.1, 1.0, INF)
    h = Histogram(bounds)
    for v in (0.05, 0.1, 0.5, 5.0):
        h.observe(v)
    inner = label_text((("service", "local"),))
    families = list(text_string_to_metric_families("# TYPE t histogram\n" + histogram_lines("t", inner, bucket_labels(inner, bounds), h)))
    samples = {(s.name, s.labels.get("le")): s.value for s in families[0].samples}
    assert samples[("t_bucket", "0.1")] == 2  # le is inclusive
    assert samples[("t_bucket", "1")] == 3
    assert samples[("t_bucket", "+Inf")] == 4 == samples[("t_count", None)]
    assert samples[("t_sum", None)] == pytest.approx(5.65)


def request(model: str | None = None, tokens: int = 4) -> CompletionRequest:
    return CompletionRequest("Once upon a time", model, SamplingParams(max_tokens=tokens))


def test_the_router_tells_the_observer_how_each_request_ended():
    metrics = RequestMetrics()
    router = Router([StubProvider()], observer=metrics)

    async def scenario() -> None:
        await router.generate(request())
        async with router.stream(request(tokens=6)) as stream:
            async for _ in stream:
                pass
        async with router.stream(request(tokens=50)) as stream:  # left after its first token
            async for _ in stream:
                break
        with pytest.raises(NotFound):
            router.stream(request("nope~m"))  # an unknown service: refused before any event
        with pytest.raises(NotFound):
            await router.generate(request("nope~m"))

    asyncio.run(scenario())
    got = parsed(metrics.text().decode())

    def requests(**labels: str) -> float:
        return got.get(("msting_requests_total", tuple(sorted(labels.items()))), 0)

    stub = {"service": "stub", "model": "stub"}
    assert requests(**stub, kind="generate", outcome="ok") == 1
    assert requests(**stub, kind="stream", outcome="ok") == 1
    assert requests(**stub, kind="stream", outcome="cancelled") == 1
    unknown = {"service": "(none)", "model": "(unknown)"}
    assert requests(**unknown, kind="stream", outcome="not_found") == 1
    assert requests(**unknown, kind="generate", outcome="not_found") == 1
    assert {dict(labels).get("model") for (_, labels) in got} <= {None, "stub", "(unknown)"}  # never 'nope~m'
    assert got[("msting_time_to_first_token_seconds_count", (("model", "stub"), ("service", "stub")))] == 2
    assert got[("msting_request_duration_seconds_count", (("model", "stub"), ("service", "stub")))] == 2  # the answered ones
    assert got[("msting_completion_tokens_total", (("model", "stub"), ("service", "stub")))] >= 4 + 6


def test_model_labels_are_capped_per_service(monkeypatch):
    monkeypatch.setattr(request_metrics, "MAX_MODELS_PER_SERVICE", 3)
    metrics = RequestMetrics()
    for i in range(10):
        metrics.request_ended(RequestEnded("generate", "lan", f"m{i}", 0.01))
    got = parsed(metrics.text().decode())
    models = sorted({dict(labels)["model"] for (name, labels) in got if name == "msting_requests_total"})
    assert models == ["(other)", "m0", "m1", "m2"]
    assert got[("msting_requests_total", (("kind", "generate"), ("model", "(other)"), ("outcome", "ok"), ("service", "lan")))] == 7


def test_retries_and_fallbacks_come_from_the_attempts():
    from msting.api.events import Attempt

    metrics = RequestMetrics()
    attempts = (Attempt("lan", "u1", "503"), Attempt("lan", "u2", "503"), Attempt("lan", "u1", "503"), Attempt("stub"))
    metrics.request_ended(RequestEnded("generate", "stub", "m", 0.2, attempts=attempts))
    got = parsed(metrics.text().decode())
    assert got[("msting_retries_total", (("service", "lan"),))] == 2
    assert got[("msting_fallbacks_total", (("service", "lan"), ("to", "stub")))] == 1


def test_restart_causes_from_the_supervisors_words():
    assert restart_cause("worker_crash", "hung: no token progress for 3.0s (llm_service.hang_timeout_sec=3)") == "hang"
    assert restart_cause("worker_crash", "worker killed by SIGKILL") == "crash"
    assert restart_cause("worker_crash", "did not report ready within 60s (llm_service.startup_timeout_sec)") == "start_timeout"
    assert restart_cause("worker_retry", "an explicit load") == "fatal_retry"
    counts = EventCounts()
    counts.on_event("worker_crash", "m", "worker killed by SIGKILL")
    counts.on_event("profile_switched", None, "a -> b")
    got = parsed("".join(f.text() for f in counts.families()))
    assert got[("msting_model_restarts_total", (("cause", "crash"), ("model", "m"), ("service", "local")))] == 1
    assert got[("msting_profile_switches_total", (("outcome", "ok"),))] == 1
    assert got[("msting_events_total", (("kind", "worker_crash"),))] == 1
