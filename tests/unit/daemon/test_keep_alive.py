"""Keep-alive and power saving, the pure parts: a model's keep-alive in force
(LocalModel.note_keep_alive, keep_alive_sec, unload_plan), eviction's order with a model
a request keeps loaded, and memory_pressure. Real LocalModels on the real stories260K
GGUF, not started (tests/e2e/test_keep_alive.py runs them)."""

from __future__ import annotations

import math
import time
from pathlib import Path

from msting.config.schema import PowerSaving
from msting.daemon.local.eviction import choose_victims
from msting.daemon.local.model import LocalModel
from msting.daemon.local.pressure import MIB, memory_pressure
from msting.daemon.store import Store
from msting.models.memory import GiB

from local_testing import make_config, spec


def model(store: Store, stories: Path, name: str, **kw) -> LocalModel:
    m = LocalModel(spec(name, stories, **kw), make_config(), store)
    time.sleep(0.001)  # distinct last_used stamps
    return m


def test_a_request_keep_alive_holds_until_a_request_without_one(store: Store, stories: Path) -> None:
    m = model(store, stories, "m", always_ready=False, keep_alive_sec=300)
    assert m.keep_alive_sec == 300
    m.note_keep_alive(5400.0)
    assert m.keep_alive_sec == 5400
    m.note_keep_alive(math.inf)
    assert m.keep_alive_sec == math.inf and m.snapshot()["keep_alive_sec"] == -1
    assert m.snapshot()["keep_alive_source"] == "request"
    m.note_keep_alive(None)  # as Ollama: back to the default
    assert m.keep_alive_sec == 300 and m.snapshot()["keep_alive_source"] == "profile"


def test_an_always_ready_model_keeps_no_keep_alive(store: Store, stories: Path) -> None:
    m = model(store, stories, "core", always_ready=True)
    m.note_keep_alive(0.0)
    assert m.keep_alive_sec is None and m.snapshot()["keep_alive_sec"] is None
    assert m.unload_plan(time.monotonic(), pressure_idle_sec=0.0) == (None, "always_ready")


def test_a_model_not_loaded_has_no_deadline(store: Store, stories: Path) -> None:
    m = model(store, stories, "m", always_ready=False)
    assert m.unload_plan(time.monotonic()) == (None, "not_loaded")


def test_eviction_takes_a_model_kept_loaded_last(store: Store, stories: Path) -> None:
    kept = model(store, stories, "kept", always_ready=False)  # the least recently used
    a = model(store, stories, "a", always_ready=False)
    b = model(store, stories, "b", always_ready=False)
    new = model(store, stories, "new", always_ready=False)
    kept.note_keep_alive(math.inf)
    e, later = new.estimated_bytes, time.monotonic() + 60
    assert [m.name for m in choose_victims(new, [kept, a, b], budget=3 * e, available=64 * GiB, now=later)] == ["a"]
    assert [m.name for m in choose_victims(new, [kept, a, b], budget=e, available=64 * GiB, now=later)] == ["a", "b", "kept"]


def test_memory_pressure(store: Store, stories: Path) -> None:
    loaded = [model(store, stories, "a", always_ready=False), model(store, stories, "b")]
    used = sum(m.estimated_bytes for m in loaded)
    on = PowerSaving(enabled=True, min_available_mb=100, budget_used_percent=50)
    assert memory_pressure(PowerSaving(enabled=False, min_available_mb=10 ** 9), loaded, budget=1, available=0) is None
    assert memory_pressure(on, loaded, budget=None, available=100 * MIB) is None
    assert "below power_saving.min_available_mb (100 MiB)" in memory_pressure(on, loaded, budget=None, available=100 * MIB - 1)
    assert memory_pressure(on, loaded, budget=2 * used + 1, available=GiB) is None  # under half the budget
    assert "power_saving.budget_used_percent (50 %)" in memory_pressure(on, loaded, budget=2 * used, available=GiB)
