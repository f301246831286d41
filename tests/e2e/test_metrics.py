"""GET /metrics: the Prometheus text, parsed with prometheus_client's own parser, moves
with real requests (the daemon's workers, a remote stand-in service behind the retry
loop and the fallback chain); it is behind the API key on TCP unless
`llm_service.metrics_public` opens it; a real Prometheus scrapes it where one is
installed (Debian's `prometheus` package: scripts/test-deps.sh installs it)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import yaml
from central_service_kit import central_daemon, chat_body, read_stream, service, start_standins
from daemon_home import DaemonHome, free_port
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.e2e

KEY = "metrics-test-key-9f1c"


def scrape(client: httpx.Client) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics, by (name, sorted labels)."""
    r = client.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = s.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_counters_move_with_local_and_remote_requests():
    (up,) = start_standins(("openai", {"models": ["m1", "m2"]}))
    with up, central_daemon({"lan": service("openai", [up.url], default_model="m1")}, fallback_chain=["lan", "stub"]) as dh:
        with dh.client() as c:
            before = scrape(c)
            assert value(before, "msting_model_state", service="local", model="msting-tiny", state="ready") == 1
            assert value(before, "msting_upstream_state", service="lan", url=up.url, state="up") == 1
            assert value(before, "msting_upstream_circuit", service="lan", url=up.url, state="closed") == 1
            assert value(before, "msting_requests_total", service="local", model="msting-tiny", kind="generate", outcome="ok") == 0

            assert c.post("/generate", json={"prompt": "Once", "max_tokens": 5}).status_code == 200
            with c.stream("POST", "/generate", json={"prompt": "Once", "max_tokens": 5, "stream": True}) as r:
                assert r.status_code == 200
                r.read()
            assert c.post("/v1/chat/completions", json=chat_body("lan~m2")).status_code == 200
            assert read_stream(c, "/v1/chat/completions", chat_body("lan~m2")).outcome == "complete"
            up.fault("status", status=503, count=1)  # one failed attempt, then the retry answers
            assert c.post("/v1/chat/completions", json=chat_body("lan~m1")).status_code == 200
            up.fault("status", status=503, count=10)  # every attempt fails: the chain hands it to the stub
            fell = c.post("/v1/chat/completions", json=chat_body("lan~m1"))
            assert fell.status_code == 200 and fell.headers["x-msting-provider"] == "stub"
            up.clear()
            assert c.post("/generate", json={"prompt": "x", "model": "no-such-model"}).status_code == 404

            after = scrape(c)

    local = {"service": "local", "model": "msting-tiny"}
    assert value(after, "msting_requests_total", **local, kind="generate", outcome="ok") == 1
    assert value(after, "msting_requests_total", **local, kind="stream", outcome="ok") == 1
    assert value(after, "msting_completion_tokens_total", **local) == 10
    assert value(after, "msting_prompt_tokens_total", **local) > 0
    assert value(after, "msting_time_to_first_token_seconds_count", **local) == 1
    assert value(after, "msting_request_duration_seconds_count", **local) == 2
    assert value(after, "msting_request_duration_seconds_bucket", **local, le="+Inf") == 2

    remote = {"service": "lan", "model": "m2"}
    assert value(after, "msting_requests_total", **remote, kind="generate", outcome="ok") == 1
    assert value(after, "msting_requests_total", **remote, kind="stream", outcome="ok") == 1
    assert value(after, "msting_completion_tokens_total", **remote) > 0
    assert value(after, "msting_time_to_first_token_seconds_count", **remote) == 1
    assert value(after, "msting_requests_total", service="lan", model="m1", kind="generate", outcome="ok") == 1
    assert sum(v for (name, labels), v in after.items() if name == "msting_requests_total"
               and ("service", "stub") in labels and ("outcome", "ok") in labels) == 1
    assert value(after, "msting_retries_total", service="lan") >= 1 + 2  # the retried request, the chain's (3 attempts)
    assert value(after, "msting_fallbacks_total", service="lan", to="stub") == 1
    assert value(after, "msting_upstream_attempts_total", service="lan", url=up.url, outcome="ok") == 3
    assert value(after, "msting_upstream_attempts_total", service="lan", url=up.url, outcome="failed") >= 4
    # A made-up model name is counted, but never becomes a label of its own.
    assert value(after, "msting_requests_total", service="local", model="(unknown)", kind="generate", outcome="not_found") == 1
    assert not [k for k in after if ("model", "no-such-model") in k[1]]
    # The daemon's own process, through prometheus_client's collector in the daemon's registry.
    assert value(after, "process_resident_memory_bytes") > 10_000_000
    assert value(after, "msting_uptime_seconds") > value(before, "msting_uptime_seconds")


def test_restarts_are_counted_by_cause(daemon_home: DaemonHome):
    daemon_home.start()
    with daemon_home.client() as c:
        pid = daemon_home.worker_pids()[0]
        assert c.post("/models/restart", json={"model": "msting-tiny"}).status_code == 200
        daemon_home.wait_for(lambda: c.get("/health/ready").status_code == 200 and daemon_home.worker_pids()[0] != pid,
                             what="the restarted model ready with a new worker")
        import os
        import signal

        os.kill(daemon_home.worker_pids()[0], signal.SIGKILL)
        daemon_home.wait_for(lambda: value(scrape(c), "msting_model_restarts_total", service="local", model="msting-tiny",
                                           cause="crash") == 1, what="the crash counted")
        samples = scrape(c)
    assert value(samples, "msting_model_restarts_total", service="local", model="msting-tiny", cause="operator") == 1
    assert value(samples, "msting_events_total", kind="model_restart") == 1
    assert value(samples, "msting_events_total", kind="worker_crash") == 1


def test_metrics_need_the_key_on_tcp_unless_opened():
    for public in (False, True):
        dh = DaemonHome()
        dh.write_config({"llm_service": {"metrics_public": public}})
        dh.env["LLM_API_KEY"] = KEY
        try:
            dh.start()
            with dh.tcp_client() as c:
                anonymous = c.get("/metrics")
                keyed = c.get("/metrics", headers={"Authorization": f"Bearer {KEY}"})
                wrong = c.get("/metrics", headers={"Authorization": "Bearer nope"})
                status = c.get("/v1/status")
                evil = c.get("/metrics", headers={"Host": "evil.example", "Authorization": f"Bearer {KEY}"})
            with dh.client() as c:  # the Unix socket needs no key
                assert c.get("/metrics").status_code == 200
        finally:
            dh.cleanup()
        assert keyed.status_code == 200 and "msting_requests_total" in keyed.text
        assert status.status_code == 401  # the rest of the API keeps its key either way
        assert evil.status_code == 403  # the Host check applies to an open /metrics too
        if public:
            assert anonymous.status_code == 200 and wrong.status_code == 200
        else:
            assert anonymous.status_code == 401 and wrong.status_code == 401
            assert KEY not in anonymous.text


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="no prometheus binary (Debian's prometheus package)")
def test_a_real_prometheus_scrapes_it():
    dh = DaemonHome()
    dh.write_config()
    dh.env["LLM_API_KEY"] = KEY
    work = Path(tempfile.mkdtemp(prefix="prom-"))
    port = free_port()
    config = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
              "scrape_configs": [{"job_name": "msting", "static_configs": [{"targets": [f"127.0.0.1:{dh.port}"]}],
                                  "authorization": {"type": "Bearer", "credentials": KEY}}]}
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    prom = None
    try:
        dh.start()
        with dh.tcp_client() as c:
            auth = {"Authorization": f"Bearer {KEY}"}
            for _ in range(3):
                assert c.post("/generate", json={"prompt": "Once", "max_tokens": 4}, headers=auth).status_code == 200
        log = open(work / "prometheus.log", "wb")
        prom = subprocess.Popen([shutil.which("prometheus"), f"--config.file={work / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={work / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=log, stderr=subprocess.STDOUT, cwd=work)
        api = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5, trust_env=False)

        def query(expr: str) -> list:
            r = api.get("/api/v1/query", params={"query": expr})
            r.raise_for_status()
            return r.json()["data"]["result"]

        deadline = time.monotonic() + 60
        found: list = []
        while time.monotonic() < deadline and prom.poll() is None:
            try:
                found = query('msting_requests_total{service="local",model="msting-tiny",kind="generate",outcome="ok"}')
            except httpx.HTTPError:
                found = []
            if found:
                break
            time.sleep(0.5)
        assert found, f"prometheus never stored the counter; its log:\n{(work / 'prometheus.log').read_text()[-3000:]}"
        assert float(found[0]["value"][1]) == 3
        targets = api.get("/api/v1/targets").json()["data"]["activeTargets"]
        assert [t["health"] for t in targets] == ["up"], targets
        assert query("up{job='msting'}")[0]["value"][1] == "1"
        assert float(query('msting_model_state{model="msting-tiny",state="ready"}')[0]["value"][1]) == 1
        api.close()
    finally:
        if prom is not None:
            prom.terminate()
            try:
                prom.wait(timeout=10)
            except subprocess.TimeoutExpired:
                prom.kill()
        dh.cleanup()
        shutil.rmtree(work, ignore_errors=True)
