"""A CI-sized chaos run (bench/chaos.py's "ci" plan, the same code as the full run):
worker kill -9s and SIGSTOP hangs under mixed load, a profile switch, a daemon kill -9,
and a thousand fuzzed requests from schemathesis plus hypothesis-drawn hostile JSON.

It asserts behaviour only, never wall time: no reply truncated yet presented as a
success, none lost, no 5xx and no worker restart caused by input, and the model serving
again on its own after every fault. The fuzz is drawn with a fixed seed, so every run
sends the same requests.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import chaos  # noqa: E402 - bench/chaos.py

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def result(_stories_ok):
    if not _stories_ok:
        pytest.skip(f"{chaos.h.STORIES} is absent or does not match its sha256")
    try:
        res = chaos.run_chaos(chaos.PLANS["ci"], log=print)
    finally:
        chaos.h.cleanup_all()
    chaos.print_report(res)
    return res


def test_no_phase_failed(result):
    assert result["errors"] == []


def test_must_be_zero_counts_are_zero(result):
    t = result["totals"]
    examples = {k: (result.get("fuzz") or {}).get(k) for k in ("examples_5xx", "examples_lost", "examples_truncated")}
    loads = {p: (result.get(p) or {}).get("load", {}).get("bad_examples") for p in ("worker_kills", "hangs", "switches", "daemon_kills")}
    assert t["truncated"] == 0, (examples, loads)
    assert t["lost"] == 0, (examples, loads)
    assert t["fuzz_5xx"] == 0, examples["examples_5xx"]
    assert t["input_restarts"] == 0, (result["fuzz"]["restarts_before"], result["fuzz"]["restarts_after"])
    assert t["sent"] > 0 and t["ok"] > 0


def test_served_again_after_every_worker_kill(result):
    wk = result["worker_kills"]
    assert wk["n"] == chaos.PLANS["ci"].worker_kills
    for f in wk["faults"]:
        assert f["ms"] is not None and not f.get("fatal"), f  # served again on its own, never FATAL
        assert f["new_pid"] != f["pid"]
    assert wk["load"]["ok"] > 0


def test_every_hang_is_found_and_restarted_once(result):
    hg = result["hangs"]
    assert hg["n"] == chaos.PLANS["ci"].hangs
    for f in hg["faults"]:
        assert f["ms"] is not None and not f.get("fatal"), f
        assert not f.get("not_killed_by_daemon"), f
        assert f["restarts_delta"] == 1, f


def test_switches_and_daemon_kills(result):
    sw = result["switches"]
    assert sw["succeeded"] == sw["n"] > 0, sw["switches"]
    dk = result["daemon_kills"]
    assert dk["n"] > 0
    for k in dk["kills"]:
        assert k["start_exit"] == 0, k
        assert k["restored_ok"], k  # came back on the chaos profile with both models
        assert k["orphans"] == [], k
        assert k["ms"] is not None, k


def test_fuzz_was_rejected_cleanly(result):
    fz = result["fuzz"]
    assert fz["sent"] >= chaos.PLANS["ci"].fuzz
    statuses = {int(s) for s in fz["status"] if s != "None"}
    assert statuses and max(statuses) < 500
    assert fz["by_source"].get("schemathesis-positive", {}).get("ok", 0) > 0  # valid-shaped cases were served
