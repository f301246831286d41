"""Keep-alive end to end: a request's `keep_alive` (Ollama's) on an on-demand model, the
unload deadline in status, power saving under memory pressure, and the guarantee that an
always-ready model is never unloaded. Real daemon, real msting-tiny workers; waits are
"eventually", never a wall-clock bound."""

from __future__ import annotations

import json
import math

import psutil
import pytest
import yaml

pytestmark = pytest.mark.e2e

POOL = {
    "default_model": "main",
    "models": {
        "main": {"source": "builtin:tiny"},  # always ready
        "extra": {"source": "builtin:tiny", "n_ctx": 512, "always_ready": False, "keep_alive_sec": 3600},
    },
}


def start_on_pool(dh, config: dict | None = None, profile: dict = POOL) -> None:
    folder = dh.home / "config" / "profiles"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pool.yaml").write_text(yaml.safe_dump(profile))
    if config:
        dh.write_config(config)
    dh.start()
    dh.cli("llm", "switch-profile", "pool", check=True)


def model(dh, name: str) -> dict:
    return next(m for m in dh.status()["models"] if m["name"] == name and m["type"] == "llm")


def pid_of(m: dict) -> int:
    return next(w["pid"] for w in m["workers"] if w["pid"])


def status_text(dh) -> str:
    """`msting llm status` as one line: rich wraps to the terminal's width, in and out of its panel."""
    return " ".join(dh.cli("llm", "status").stdout.replace("│", " ").split())


def gone(pid: int) -> bool:
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_keep_alive_per_request_sets_the_unload_deadline_and_zero_unloads_at_once(daemon_home):
    start_on_pool(daemon_home)
    assert model(daemon_home, "extra")["unload"] == {"at": None, "in_sec": None, "reason": "not_loaded"}
    with daemon_home.client() as c:
        r = c.post("/v1/chat/completions", json={"model": "extra", "messages": [{"role": "user", "content": "Hi"}],
                                                  "max_tokens": 2, "keep_alive": "1h30m"})
        assert r.status_code == 200, r.text
        extra = model(daemon_home, "extra")
        assert extra["state"] == "ready"
        assert extra["keep_alive_sec"] == 5400 and extra["keep_alive_source"] == "request"
        assert extra["unload"]["reason"] == "keep_alive" and 3600 < extra["unload"]["in_sec"] <= 5400
        assert extra["unload"]["at"] > daemon_home.status()["started_at"]

        # a request without keep_alive goes back to the profile's keep_alive_sec (as Ollama)
        assert c.post("/generate", json={"model": "extra", "prompt": "Hi", "max_tokens": 2}).status_code == 200
        extra = model(daemon_home, "extra")
        assert extra["keep_alive_sec"] == 3600 and extra["keep_alive_source"] == "profile"
        assert extra["unload"]["in_sec"] <= 3600

        # a negative keep_alive keeps it loaded: no deadline
        assert c.post("/v1/completions", json={"model": "extra", "prompt": "Hi", "max_tokens": 2, "keep_alive": -1}).status_code == 200
        extra = model(daemon_home, "extra")
        assert extra["keep_alive_sec"] == -1 and extra["unload"] == {"at": None, "in_sec": None, "reason": "kept_loaded"}
        cli = status_text(daemon_home)
        assert "extra: kept loaded (a request's keep_alive)" in cli, cli

        # 0 unloads it as soon as its request is answered; the always-ready model, asked
        # for the same, keeps its worker (the reaper saw both in the same pass)
        pid, main_pid = pid_of(extra), pid_of(model(daemon_home, "main"))
        r = c.post("/v1/embeddings", json={"model": "extra", "input": "hello", "keep_alive": 0})
        assert r.status_code == 200, r.text
        assert c.post("/generate", json={"model": "main", "prompt": "Hi", "max_tokens": 2, "keep_alive": 0}).status_code == 200
        assert c.post("/generate", json={"model": "extra", "prompt": "Hi", "max_tokens": 2, "keep_alive": "0"}).status_code == 200
    daemon_home.wait_for(lambda: model(daemon_home, "extra")["state"] == "stopped", what="extra to unload after keep_alive 0")
    assert gone(pid)
    main = model(daemon_home, "main")
    assert main["state"] == "ready" and pid_of(main) == main_pid
    assert main["keep_alive_sec"] is None and main["unload"]["reason"] == "always_ready"
    event = next(e for e in daemon_home.status()["events"] if e["kind"] == "model_idle_unload")
    assert event["model"] == "extra" and "keep-alive of 0s" in event["detail"]


def test_the_cli_shows_the_unload_deadline(daemon_home):
    start_on_pool(daemon_home)
    with daemon_home.client() as c:
        assert c.post("/generate", json={"model": "extra", "prompt": "Hi", "max_tokens": 2, "keep_alive": "2h"}).status_code == 200
    out = status_text(daemon_home)
    assert "extra: unloads in 1h 59m" in out and "(past its keep-alive, set by a request)" in out, out
    data = json.loads(daemon_home.cli("llm", "status", "--json").stdout)
    extra = next(m for m in data["models"] if m["name"] == "extra" and m["type"] == "llm")
    assert extra["unload"]["reason"] == "keep_alive" and extra["keep_alive_sec"] == 7200


BAD = ["5x", "", "1h 2m", "m", " 5m", True, [], {"s": 1}, "1e3", 10 ** 12, "99999999h", "Infinity", "x" * 100]


def test_a_bad_keep_alive_is_a_400_naming_it(daemon_home):
    start_on_pool(daemon_home)
    routes = {"/generate": {"prompt": "Hi", "max_tokens": 1}, "/v1/completions": {"prompt": "Hi", "max_tokens": 1},
              "/v1/chat/completions": {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1},
              "/v1/embeddings": {"input": "hi"}, "/v1/execute": {"prompt": "Hi", "max_tokens": 1}}
    with daemon_home.client() as c:
        for path, body in routes.items():
            for value in BAD:
                r = c.post(path, json={**body, "model": "extra", "keep_alive": value})
                assert r.status_code == 400, (path, value, r.text)
                assert r.json()["error"]["param"] == "keep_alive", r.text
        r = c.post("/llm", json={"prompt": "Hi", "keep_alive": 0})  # the minimal form takes none
        assert r.status_code == 400 and r.json()["error"]["param"] == "keep_alive"
    assert model(daemon_home, "extra")["state"] == "stopped"  # nothing was admitted


def test_power_saving_unloads_an_idle_on_demand_model_under_memory_pressure(daemon_home):
    # min_available_mb far above any machine's memory: the pressure is real, always
    huge = 1024 * 1024 * 1024  # MiB: 1 PiB
    start_on_pool(daemon_home, {"llm_service": {"power_saving": {"enabled": True, "idle_sec": 0.5, "min_available_mb": huge}}})
    daemon_home.wait_for(lambda: daemon_home.status()["memory"]["pressure"], what="the reaper to see the pressure")
    assert "below power_saving.min_available_mb" in daemon_home.status()["memory"]["pressure"]
    main_pid = pid_of(model(daemon_home, "main"))
    with daemon_home.client() as c:  # kept loaded by the request, and 1 h by the profile: power saving wins
        assert c.post("/generate", json={"model": "extra", "prompt": "Hi", "max_tokens": 2, "keep_alive": -1}).status_code == 200
    daemon_home.wait_for(lambda: model(daemon_home, "extra")["state"] == "stopped", what="power saving to unload extra")
    event = next(e for e in daemon_home.status()["events"] if e["kind"] == "model_idle_unload")
    assert "memory is short" in event["detail"]
    main = model(daemon_home, "main")
    assert main["state"] == "ready" and pid_of(main) == main_pid  # never an always-ready model
    assert "power saving unloads idle on-demand models" in status_text(daemon_home)


def test_without_pressure_the_keep_alive_holds(daemon_home):
    # the same profile, power saving on, but no threshold that this machine is under
    start_on_pool(daemon_home, {"llm_service": {"power_saving": {"enabled": True, "idle_sec": 0, "min_available_mb": 0}}})
    with daemon_home.client() as c:
        assert c.post("/generate", json={"model": "extra", "prompt": "Hi", "max_tokens": 2}).status_code == 200
    st = daemon_home.status()
    assert st["memory"]["power_saving"] is True and st["memory"]["pressure"] is None
    extra = model(daemon_home, "extra")
    assert extra["unload"]["reason"] == "keep_alive" and extra["unload"]["in_sec"] > 3000
    assert not math.isnan(extra["unload"]["at"])


def test_a_budget_nearly_used_is_pressure(daemon_home):
    # the budget holds both models (msting-tiny ~97 MiB at n_ctx 2048, ~74 MiB at 512), at more than 1 % used
    profile = {**POOL, "memory_budget_mb": 400}
    start_on_pool(daemon_home, {"llm_service": {"power_saving": {"enabled": True, "idle_sec": 0.5, "min_available_mb": 0,
                                                                 "budget_used_percent": 1}}}, profile)
    with daemon_home.client() as c:
        assert c.post("/generate", json={"model": "extra", "prompt": "Hi", "max_tokens": 2}).status_code == 200
    daemon_home.wait_for(lambda: model(daemon_home, "extra")["state"] == "stopped", what="power saving to unload extra")
    event = next(e for e in daemon_home.status()["events"] if e["kind"] == "model_idle_unload")
    assert "of the budget" in event["detail"] and "memory is short" in event["detail"]
    assert model(daemon_home, "main")["state"] == "ready"
