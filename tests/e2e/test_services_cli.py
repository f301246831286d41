"""`msting llm services`, `ping` and the services section of `status` against a real
daemon fronting a real upstream: the remote openai service `lan` has two URLs, an
OpenAI stand-in (tests/upstreams) and a port nothing listens on; the service `dead`
has only a dead port. One daemon and one stand-in serve the module's tests; none of
them changes what another sees (a ping of a dead URL keeps it down: the breakers'
cooldown is longer than the module)."""

from __future__ import annotations

import json
import re

import pytest
from daemon_home import DaemonHome, free_port
from upstreams.plugin import standin_module  # noqa: F401  (pytest fixture)

pytestmark = pytest.mark.e2e

COOLDOWN_SEC = 600  # a URL whose health check failed stays down for the whole module


@pytest.fixture(scope="module")
def central(standin_module):  # noqa: F811  (the fixture imported above)
    up = standin_module("openai", models=["a", "b"])
    ports = {free_port()}
    while len(ports) < 2:
        ports.add(free_port())
    dead, alone = (f"http://127.0.0.1:{p}" for p in sorted(ports))
    upstream = {"breaker_cooldown_sec": COOLDOWN_SEC, "short_timeout_sec": 2}
    dh = DaemonHome(label="services-cli")
    dh.env["COLUMNS"] = "200"  # one line per URL, whatever the terminal running the tests
    dh.write_config({"llm": {"fallback_chain": ["lan", "local"], "services": {
        "lan": {"api_format": "openai", "urls": [up.url, dead], "default_model": "a", "upstream": upstream},
        "dead": {"api_format": "openai", "urls": [alone], "default_model": "a", "upstream": upstream},
    }}})
    try:
        dh.start()

        def checked() -> bool:  # the first health checks are in
            with dh.client() as c:
                body = c.get("/llm/services").json()
            states = {u["url"]: u["state"] for s in body["data"] for u in s["urls"]}
            return states.get(up.url) == "up" and states.get(dead) == "down" and states.get(alone) == "down"

        dh.wait_for(checked, timeout=30, what="the first health checks of lan and dead")
        yield dh, up.url, dead, alone
    finally:
        dh.cleanup()


def squeeze(text: str) -> str:
    return re.sub(r"[ \t]+", " ", text)


def test_services_shows_both_urls_the_dead_one_down(central):
    dh, live, dead, alone = central
    proc = dh.cli("llm", "services")
    assert proc.returncode == 0, proc.stderr
    out = squeeze(proc.stdout)
    assert "default service: local · fallback chain: lan → local" in out
    assert "lan (openai) degraded: 1 of 2 URLs are down [fallback 1 of 2]" in out
    assert "default model a · 2 models: a, b" in out
    lan = out.split("lan (openai)")[1].split("dead (openai)")[0]
    assert re.search(rf"^ *{re.escape(live)} up \d+\.\d ms 0 \d+ \d+$", lan, re.M), lan
    assert re.search(rf"^ *{re.escape(dead)} down - 0 0 0$", lan, re.M), lan
    assert f"last error of {dead}: health check: cannot connect to lan at {dead}" in lan
    assert "dead (openai) failed: every URL is down" in out
    assert "local (local) ready [default, fallback 2 of 2]" in out
    assert "stub (stub) ready" in out


def test_services_json_is_the_route_body(central):
    dh, live, dead, alone = central
    body, _ = dh.cli_json("llm", "services", "--json")
    assert body["object"] == "list" and body["default_service"] == "local" and body["fallback_chain"] == ["lan", "local"]
    by_name = {s["name"]: s for s in body["data"]}
    assert set(by_name) == {"local", "stub", "lan", "dead"}
    assert [(u["url"], u["state"]) for u in by_name["lan"]["urls"]] == [(live, "up"), (dead, "down")]
    assert by_name["lan"]["status"] == "degraded" and by_name["lan"]["models"] == ["a", "b"]


def test_ping_lan_answers_and_reports_the_dead_url(central):
    dh, live, dead, alone = central
    proc = dh.cli("llm", "ping", "lan")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = squeeze(proc.stdout)
    assert out.startswith("lan: degraded (1 of 2 URLs answered)"), out
    assert re.search(rf"✓ {re.escape(live)} ok \d+\.\d ms 2 models", out), out
    assert f"✗ {dead} failed cannot connect to lan at {dead}" in out
    body = json.loads(dh.cli("llm", "ping", "lan", "--json").stdout)
    assert body["ok"] is True and body["verdict"] == "degraded"
    assert [(u["url"], u["ok"]) for u in body["urls"]] == [(live, True), (dead, False)]


def test_ping_a_service_whose_only_url_is_dead_exits_1(central):
    dh, live, dead, alone = central
    proc = dh.cli("llm", "ping", "dead")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = squeeze(proc.stdout)
    assert out.startswith("dead: failed (0 of 1 URL answered)"), out
    assert f"✗ {alone} failed cannot connect to dead at {alone}" in out
    as_json = dh.cli("llm", "ping", "dead", "--json")
    assert as_json.returncode == 1 and json.loads(as_json.stdout)["ok"] is False


def test_ping_an_unknown_service_is_a_clear_error(central):
    dh, *_ = central
    proc = dh.cli("llm", "ping", "nosuch")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == ""
    assert "error: unknown service 'nosuch'; the services are: local, stub, lan, dead" in squeeze(proc.stderr)


def test_status_has_the_services_section(central):
    dh, live, dead, alone = central
    proc = dh.cli("llm", "status")
    assert proc.returncode == 0, proc.stderr
    out = squeeze(proc.stdout)
    assert "services default local · fallback lan → local" in out
    assert "lan degraded: 1 of 2 URLs are down openai · 2 models" in out
    assert re.search(rf"^ *{re.escape(live)} up \d+\.\d ms$", out, re.M), out
    assert re.search(rf"^ *{re.escape(dead)} down health check: cannot connect to lan", out, re.M), out
    assert "dead failed: every URL is down openai" in out
    status = dh.status()
    assert {s["name"] for s in status["services"]} == {"local", "stub", "lan", "dead"}
    assert "readiness" in status and "models" in status  # /v1/status as it is, services included


def test_not_running_is_a_clear_error():
    dh = DaemonHome(label="services-cli-stopped")
    try:
        dh.write_config()
        for args in (("llm", "services"), ("llm", "ping", "lan")):
            proc = dh.cli(*args)
            assert proc.returncode == 1
            assert "msting daemon is not running (start it with `msting llm start`)" in proc.stderr
    finally:
        dh.cleanup()
