"""`msting llm services`, `ping` and the services section of `status`, fed recorded
daemon bodies: services_body.json is a /llm/services answer of a daemon with one
openai service `lan` (a stand-in and a dead port), an ollama and an anthropic service
whose only URL is dead, and the fallback chain gone → gone2; ping_lan.json the
/llm/services/lan/ping answer of the same daemon."""

from __future__ import annotations

import copy
import io
import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from msting.cli import services_view as cli_services
from msting.cli.app import build_app
from msting.cli.output import Terminal
from msting.client import MstingClient

HERE = Path(__file__).resolve().parent
LIVE = "http://127.0.0.1:45315"
DEAD = "http://127.0.0.1:59411"


@pytest.fixture
def body() -> dict[str, Any]:
    return json.loads((HERE / "services_body.json").read_text())


@pytest.fixture
def ping_body() -> dict[str, Any]:
    return json.loads((HERE / "ping_lan.json").read_text())


def terminal(width: int = 160) -> tuple[Terminal, io.StringIO]:
    from rich.console import Console

    out = io.StringIO()
    term = Terminal()
    term._out = Console(file=out, width=width, color_system=None, highlight=False)
    return term, out


def lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.splitlines()]


def service(body: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in body["data"] if s["name"] == name)


# ----------------------------------------------------------------- services


def test_services_header_names_default_and_chain(body):
    term, out = terminal()
    cli_services.print_services(term, body)
    assert lines(out.getvalue())[0] == "default service: local · fallback chain: gone → gone2"


def test_services_each_service_with_format_status_and_models(body):
    term, out = terminal()
    cli_services.print_services(term, body)
    text = out.getvalue()
    assert "local (local)  ready  [default]" in text
    assert "stub (stub)  ready" in text
    assert "lan (openai)  degraded: 1 of 2 URLs are down" in text
    assert "default model a · 2 models: a, b" in text
    assert "gone (ollama)  ready  [fallback 1 of 2]" in text
    assert "gone2 (anthropic)  ready  [fallback 2 of 2]" in text
    assert "no default model · no models listed" in text
    assert "offline: its replies are not from a model" in text


def test_services_url_rows_show_state_latency_in_flight_and_counts(body):
    term, out = terminal()
    cli_services.print_services(term, body)
    rows = {line.split()[0]: line.split() for line in lines(out.getvalue()) if line.strip().startswith("http://")}
    assert rows[LIVE] == [LIVE, "up", "5.5", "ms", "0", "6", "0"]
    # the dead port: down after its health check (lan's block is the last one)
    lan_rows = [line.split() for line in lines(out.getvalue().split("lan (openai)")[1]) if line.strip().startswith("http://")]
    assert lan_rows[1] == [DEAD, "down", "-", "0", "0", "0"]


def test_services_last_error_below_the_table(body):
    term, out = terminal()
    cli_services.print_services(term, body)
    lan = out.getvalue().split("lan (openai)")[1]
    assert f"last error of {DEAD}: health check: cannot connect to lan at {DEAD}: All connection attempts failed" in lan
    assert f"last error of {LIVE}" not in lan


def test_services_old_error_of_an_up_url_says_how_old(body):
    body = copy.deepcopy(body)
    url = service(body, "lan")["urls"][0]
    url.update(last_error="lan answered HTTP 500: boom", last_error_at=1000.0)
    term, out = terminal()
    cli_services.print_services(term, body, now=1000.0 + 125)
    assert f"last error of {LIVE}: lan answered HTTP 500: boom (2m 5s ago)" in out.getvalue()


def test_services_narrow_terminal_keeps_every_url_on_one_row(body):
    term, out = terminal(width=80)
    cli_services.print_services(term, body)
    text = out.getvalue()
    assert re.search(rf"^\s*{re.escape(DEAD)}\s+down\s", text, re.M), text
    assert max(len(line) for line in lines(text)) <= 80


def test_services_json_prints_the_body_unchanged(body, monkeypatch):
    result = run_cli(monkeypatch, {"/llm/services": (200, body)}, "services", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == body


def test_services_text_through_the_command(body, monkeypatch):
    result = run_cli(monkeypatch, {"/llm/services": (200, body)}, "services")
    assert result.exit_code == 0, result.output
    assert "default service: local" in result.stdout
    assert DEAD in result.stdout and LIVE in result.stdout


def test_services_daemon_without_the_route(monkeypatch):
    missing = {"error": {"message": "no route GET /llm/services", "type": "not_found_error", "code": "route_not_found"}}
    result = run_cli(monkeypatch, {"/llm/services": (404, missing)}, "services")
    assert result.exit_code == 1
    assert "msting llm restart" in result.stderr


def test_services_not_running(monkeypatch):
    result = run_cli(monkeypatch, {}, "services", running=False)
    assert result.exit_code == 1
    assert "msting daemon is not running (start it with `msting llm start`)" in result.stderr


# ------------------------------------------------------------------ URL state


def test_url_states():
    assert cli_services.fmt_url_state({"state": "up"}) == "up"
    assert cli_services.fmt_url_state({"state": "down", "cooling_until": 2e9, "reason": "health check failed"}) == "down"
    assert cli_services.fmt_url_state({"state": "probing"}) == "probing"
    until = time.time() + 30
    clock = time.strftime("%H:%M:%S", time.localtime(until))
    cooling = {"state": "cooling_down", "cooling_until": until, "reason": "requests failed"}
    assert cli_services.fmt_url_state(cooling) == f"cooling down until {clock}"
    asked = {**cooling, "reason": "the upstream asked to wait (Retry-After)"}
    assert cli_services.fmt_url_state(asked) == f"cooling down until {clock} (the upstream asked to wait (Retry-After))"


def test_cooling_down_url_in_the_table(body):
    body = copy.deepcopy(body)
    until = time.time() + 42
    service(body, "lan")["urls"][0].update(state="cooling_down", cooling_until=until, reason="requests failed")
    term, out = terminal()
    cli_services.print_services(term, body)
    assert f"{LIVE}  cooling down until {time.strftime('%H:%M:%S', time.localtime(until))}" in re.sub(r" {2,}", "  ", out.getvalue())


def test_many_models_are_cut_short():
    many = {"models": [f"m{i}" for i in range(9)]}
    assert cli_services.fmt_models(many) == "9 models: m0, m1, m2, m3, m4, m5, … 3 more"
    assert cli_services.fmt_models(many, limit=None) == "9 models"
    assert cli_services.fmt_models({"models": ["x"]}) == "1 model: x"


# ----------------------------------------------------------------------- ping


def test_ping_verdicts(ping_body):
    assert cli_services.ping_verdict(ping_body) == "degraded"
    every = copy.deepcopy(ping_body)
    every["urls"][1].update(ok=True, error=None)
    assert cli_services.ping_verdict(every) == "ready"
    none = copy.deepcopy(ping_body)
    none["urls"][0].update(ok=False, error="boom")
    assert cli_services.ping_verdict(none) == "failed"
    assert cli_services.ping_verdict({"name": "local", "status": "ready", "urls": []}) == "ready"
    assert cli_services.ping_verdict({"name": "local", "status": "loading", "urls": []}) == "loading"


def test_ping_output(ping_body):
    term, out = terminal()
    cli_services.print_ping(term, ping_body, "degraded")
    assert lines(out.getvalue()) == [
        "lan: degraded (1 of 2 URLs answered)",
        f"  ✓ {LIVE}  ok  2.1 ms  2 models",
        f"  ✗ {DEAD}  failed  cannot connect to lan at {DEAD}: All connection attempts failed",
    ]


def test_ping_says_when_the_daemon_disagrees(ping_body):
    body = copy.deepcopy(ping_body)
    body["urls"] = body["urls"][1:]
    body["status"] = "ready"
    term, out = terminal()
    cli_services.print_ping(term, body, cli_services.ping_verdict(body))
    assert lines(out.getvalue())[0] == "lan: failed (0 of 1 URL answered); the daemon reports it ready"


def test_ping_exit_codes(ping_body, monkeypatch):
    path = "/llm/services/lan/ping"
    assert run_cli(monkeypatch, {path: (200, ping_body)}, "ping", "lan").exit_code == 0
    dead = copy.deepcopy(ping_body)
    dead["urls"] = dead["urls"][1:]
    dead.update(status="failed", reason="every URL is down")
    result = run_cli(monkeypatch, {path: (503, dead)}, "ping", "lan")
    assert result.exit_code == 1
    assert "lan: failed (0 of 1 URL answered)" in result.stdout


def test_ping_json(ping_body, monkeypatch):
    result = run_cli(monkeypatch, {"/llm/services/lan/ping": (200, ping_body)}, "ping", "lan", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {"ok": True, **ping_body, "verdict": "degraded"}


def test_ping_unknown_service(monkeypatch):
    unknown = {"error": {"message": "unknown service 'nosuch'; the services are: local, stub, lan", "type": "not_found_error",
                         "param": None, "code": "service_not_found"}}
    result = run_cli(monkeypatch, {"/llm/services/nosuch/ping": (404, unknown)}, "ping", "nosuch")
    assert result.exit_code == 2
    assert "error: unknown service 'nosuch'; the services are: local, stub, lan" in result.stderr
    as_json = run_cli(monkeypatch, {"/llm/services/nosuch/ping": (404, unknown)}, "ping", "nosuch", "--json")
    assert as_json.exit_code == 2
    assert json.loads(as_json.stdout)["error_code"] == "service_not_found"


def test_ping_quotes_the_name(monkeypatch):
    unknown = {"error": {"message": "unknown service 'a/b'", "type": "not_found_error", "code": "service_not_found"}}
    result = run_cli(monkeypatch, {"/llm/services/a%2Fb/ping": (404, unknown)}, "ping", "a/b")
    assert result.exit_code == 2, result.output


# ------------------------------------------------------------- status section


def test_status_section_is_compact(body):
    term, out = terminal()
    cli_services.print_services_section(term, body["data"], body["fallback_chain"], body["default_service"])
    assert lines(out.getvalue()) == [
        "services  default local · fallback gone → gone2",
        "  gone   ready  ollama · no models listed",
        f"           {DEAD}  probing  health check: cannot connect to gone at {DEAD}: All connection attempts failed",
        "  gone2  ready  anthropic · no models listed",
        "           http://localhost:59411  probing  health check: cannot connect to gone2 at http://localhost:59411: All "
        "connection attempts failed",
        "  lan    degraded: 1 of 2 URLs are down  openai · 2 models",
        f"           {LIVE}  up  5.5 ms",
        f"           {DEAD}  down  health check: cannot connect to lan at {DEAD}: All connection attempts failed",
    ]


def test_status_section_without_remote_services(body):
    builtin = [s for s in body["data"] if s["builtin"]]
    for s in builtin:
        s["in_fallback_chain"] = False
    term, out = terminal()
    cli_services.print_services_section(term, builtin)
    assert out.getvalue() == ""
    # the stub as the default service is worth a line
    for s in builtin:
        s["is_default"] = s["name"] == "stub"
    cli_services.print_services_section(term, builtin)
    assert lines(out.getvalue()) == ["services  default stub · fallback none", "  stub  ready"]


def test_status_section_without_the_chain_order(body):
    """/v1/status alone: the chain from in_fallback_chain, in the listing's order."""
    term, out = terminal()
    cli_services.print_services_section(term, body["data"])
    assert lines(out.getvalue())[0] == "services  default local · fallback gone → gone2"


def test_status_text_and_json_include_services(body, monkeypatch):
    status = {"version": "0.1.0", "pid": 4242, "ready": True, "readiness": {"status": "ready", "reason": None},
              "profile": "default", "default_model": "msting-tiny", "models": [], "events": [],
              "services": body["data"]}
    routes = {"/v1/status": (200, status), "/llm/services": (200, body)}
    text = run_cli(monkeypatch, routes, "status")
    assert text.exit_code == 0, text.output
    assert "services  default local · fallback gone → gone2" in text.stdout
    assert re.search(rf"{re.escape(DEAD)}\s+down", text.stdout)
    as_json = run_cli(monkeypatch, routes, "status", "--json")
    assert as_json.exit_code == 0
    info = json.loads(as_json.stdout)
    assert info["services"] == body["data"]
    assert info["running"] is True


# --------------------------------------------------------------- the harness


class FakeClient(MstingClient):
    """The real MstingClient's methods over canned answers (its `_send` replaced):
    path -> (status, body)."""

    def __init__(self, routes: dict[str, tuple[int, dict[str, Any]]]):
        self.routes = routes
        self.asked: list[str] = []

    def _send(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> httpx.Response:
        self.asked.append(path)
        if path not in self.routes:
            return httpx.Response(404, json={"error": {"message": f"no route GET {path}", "type": "not_found_error",
                                                       "code": "route_not_found"}})
        status, answer = self.routes[path]
        return httpx.Response(status, json=answer)

    def status(self, timeout: float | None = None) -> dict[str, Any]:
        return self.routes["/v1/status"][1]

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class FakeEnv:
    def __init__(self, client: FakeClient, running: bool):
        self._client = client
        self.running = running
        self.socket_path = Path("/nonexistent/msting.sock")
        self.url = "http://127.0.0.1:8086"

    def is_running(self) -> bool:
        return self.running

    def running_pid(self) -> int | None:
        return 4242 if self.running else None

    def client(self, timeout: float = 5.0) -> FakeClient:
        return self._client


def run_cli(monkeypatch, routes: dict[str, tuple[int, dict[str, Any]]], *args: str, running: bool = True):
    import msting.cli.common

    env = FakeEnv(FakeClient(routes), running)
    monkeypatch.setattr(msting.cli.common, "load_env", lambda step=None: env)
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("NO_COLOR", "1")
    runner = CliRunner()
    return runner.invoke(build_app(args[0]), ["llm", *args], prog_name="msting")


# ------------------------------------------------------- the real CLI, no daemon


def run_real(*args: str, flags: tuple[str, ...] = ()) -> Any:
    import os
    import shutil
    import subprocess
    import sys
    import tempfile

    from child_env import child_env

    home = tempfile.mkdtemp(prefix="ms")
    try:
        env = child_env(MSTING_HOME=home, PYTHONPATH=str(HERE.parents[2] / "src"), COLUMNS="200", NO_COLOR="1", TERM="dumb")
        return subprocess.run([sys.executable, *flags, "-m", "msting", *args], env=env, capture_output=True, text=True,
                              timeout=60, stdin=subprocess.DEVNULL, cwd=os.getcwd())
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_llm_help_lists_services_and_ping():
    result = run_real("llm", "--help")
    assert result.returncode == 0, result.stderr
    assert re.search(r"services\s+List the services behind the daemon", result.stdout)
    assert re.search(r"ping\s+Check each URL of a service now", result.stdout)


@pytest.mark.parametrize("args", [("llm", "services", "--json"), ("llm", "ping", "lan", "--json")])
def test_not_running_and_lean(args):
    result = run_real(*args, flags=("-X", "importtime"))
    assert result.returncode == 1
    assert json.loads(result.stdout)["running"] is False
    imported = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines()
                if line.startswith("import time:") and "|" in line}
    assert imported and not imported & {"starlette", "uvicorn", "llama_cpp", "numpy", "gguf"}
