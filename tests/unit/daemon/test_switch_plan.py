"""msting.daemon.local.plan (restore_routing, load_target, build_plan) and the phases of
msting.daemon.local.switch, on real profile files in a temporary MSTING_HOME whose
models are the real stories260K GGUF.

Only the tests of what unloads start worker processes (real ones, stopped before the
test ends): a plan unloads only models that run."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import psutil
import pytest
import yaml

from msting.api.errors import InvalidRequest
from msting.config import Config, ConfigError, Paths, resolve_paths
from msting.daemon.local.model import ModelState
from msting.daemon.local.plan import build_plan, load_target, restore_routing
from msting.daemon.local.service import LocalService
from msting.daemon.local.switch import STEPS, Phase, advance, dry_run
from msting.transitions import IllegalTransition
from msting.daemon.store import Store
from msting.models.gguf_file import read_gguf_info
from msting.models.memory import MiB, estimate_model, preflight

from local_testing import make_config, stop_all

TIMEOUT = 60
PLAN_KEYS = {"profile", "from_profile", "mode", "load", "keep", "unload", "on_demand", "default_model", "memory"}
MEMORY_KEYS = {"needed_bytes", "available_bytes", "freed_by_unload_bytes", "budget_bytes", "message"}


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    return resolve_paths({"MSTING_HOME": str(tmp_path / "home")}).ensure()


@pytest.fixture
def config() -> Config:
    return make_config()


def model(source: Path | str, **fields: object) -> dict:
    return {"source": str(source), "n_ctx": 256, **fields}


def write_profile(paths: Paths, name: str, models: dict[str, dict], default: str | None = None,
                  budget_mb: float | None = None) -> Path:
    path = paths.profiles_dir / f"{name}.yaml"
    body = {"description": f"test profile {name}", "default_model": default or next(iter(models)), "models": models}
    if budget_mb is not None:
        body["memory_budget_mb"] = budget_mb
    path.write_text(yaml.safe_dump(body, sort_keys=False), encoding="utf-8")
    return path


def service_on(paths: Paths, config: Config, store: Store, profile: str) -> LocalService:
    """A LocalService (not started) on `profile`, as the daemon restores it at start."""
    store.set_meta("active_profile", profile)
    return LocalService(config, paths, restore_routing(config, paths, store), store)


def events(store: Store, kind: str) -> list[str | None]:
    return [e["detail"] for e in store.recent_events(100) if e["kind"] == kind]


@pytest.fixture
def one(paths: Paths, stories: Path) -> Path:
    """The profile the tests switch from: story (default) and extra, both always ready."""
    return write_profile(paths, "one", {"story": model(stories), "extra": model(stories, n_ctx=320)})


# ---- restore_routing ---------------------------------------------------------------------


def test_with_nothing_stored_the_daemon_starts_on_the_implicit_default_profile(paths: Paths, config: Config, store: Store) -> None:
    r = restore_routing(config, paths, store)
    assert r.profile == "default" and r.default_model == "msting-tiny" and list(r.models) == ["msting-tiny"]
    tiny = r.models["msting-tiny"].spec
    assert tiny.builtin and tiny.path == paths.models_dir / "msting-tiny.gguf" and tiny.path.is_file()  # written on the way
    assert r.budget_bytes is None and events(store, "profile_restored") == []


def test_the_stored_profile_is_restored_with_its_budget(paths: Paths, config: Config, store: Store, stories: Path) -> None:
    write_profile(paths, "two", {"chat": model(stories, always_ready=False), "story": model(stories)}, default="story",
                  budget_mb=512)
    store.set_meta("active_profile", "two")
    r = restore_routing(config, paths, store)
    assert r.profile == "two" and r.default_model == "story"
    assert list(r.models) == ["story", "chat"]  # the default model first
    assert r.budget_bytes == 512 * MiB
    assert not r.models["chat"].spec.always_ready and r.models["story"].spec.path == stories
    assert set(r.embedders) == {"story", "chat"}
    assert events(store, "profile_restored") == ["two"]


@pytest.mark.parametrize("damage", ["missing model file", "profile deleted", "invalid profile"])
def test_a_stored_profile_that_became_unusable_falls_back_to_default_loudly(
        paths: Paths, config: Config, store: Store, stories: Path, tmp_path: Path, damage: str) -> None:
    path = write_profile(paths, "two", {"story": model(tmp_path / "moved.gguf" if damage == "missing model file" else stories)})
    if damage == "profile deleted":
        path.unlink()
    elif damage == "invalid profile":
        path.write_text("default_model: story\nmodels:\n  story:\n    source: x.gguf\n    n_ctx: 1\n", encoding="utf-8")
    store.set_meta("active_profile", "two")
    r = restore_routing(config, paths, store)
    assert r.profile == "default" and list(r.models) == ["msting-tiny"]
    assert store.get_meta("active_profile") == "default"
    [detail] = events(store, "profile_restore_failed")
    assert detail.startswith("two: ") and detail.endswith("; started 'default'")


def test_the_default_profile_starts_even_with_a_broken_model_file(paths: Paths, config: Config, store: Store, tmp_path: Path) -> None:
    write_profile(paths, "default", {"story": model(tmp_path / "not-there.gguf")})
    r = restore_routing(config, paths, store)  # the worker will report the missing file; /health keeps answering
    assert r.profile == "default" and r.models["story"].spec.path == tmp_path / "not-there.gguf"
    assert events(store, "profile_restore_failed") == []


def test_an_invalid_default_profile_is_a_config_error(paths: Paths, config: Config, store: Store) -> None:
    (paths.profiles_dir / "default.yaml").write_text("default_model: nope\nmodels: {}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="models"):
        restore_routing(config, paths, store)


# ---- load_target -------------------------------------------------------------------------


def test_load_target_reads_and_checks_a_profile(paths: Paths, config: Config, store: Store, one: Path, stories: Path) -> None:
    service = service_on(paths, config, store, "default")
    profile = load_target(service, "one")
    assert profile.name == "one" and profile.source == one and profile.default_model == "story"
    assert {n: (m.path, m.n_ctx) for n, m in profile.models.items()} == {"story": (stories, 256), "extra": (stories, 320)}


def test_load_target_refuses_missing_and_non_gguf_files_listing_every_problem(
        paths: Paths, config: Config, store: Store, tmp_path: Path) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a model at all" * 100)
    write_profile(paths, "bad", {"gone": model(tmp_path / "gone.gguf"), "junk": model(junk)})
    service = service_on(paths, config, store, "default")
    with pytest.raises(ConfigError) as exc:
        load_target(service, "bad")
    text = str(exc.value)
    assert "models.gone.source" in text and "download the model, or set models.gone.source" in text
    assert "models.junk.source" in text and str(junk) in text


def test_load_target_of_an_unknown_profile_names_the_available_ones(paths: Paths, config: Config, store: Store, one: Path) -> None:
    service = service_on(paths, config, store, "default")
    with pytest.raises(ConfigError, match=r"no profile named 'onw' \(did you mean 'one'\? available: .*one"):
        load_target(service, "onw")


# ---- build_plan --------------------------------------------------------------------------


def test_identical_specs_are_kept_new_ones_load_and_the_plan_says_so(
        paths: Paths, config: Config, store: Store, one: Path, stories: Path) -> None:
    service = service_on(paths, config, store, "one")
    current = service.routing
    write_profile(paths, "two", {"story": model(stories), "fresh": model(stories, n_ctx=384),
                                 "lazy": model(stories, n_ctx=448, always_ready=False)})
    target, plan = build_plan(service, load_target(service, "two"))

    assert target.models["story"] is current.models["story"]  # the same LocalModel: nothing reloads
    assert target.embedders["story"] is current.embedders["story"]
    assert target.models["fresh"] not in current.all_models()
    assert set(plan) == PLAN_KEYS and set(plan["memory"]) == MEMORY_KEYS
    assert (plan["profile"], plan["from_profile"], plan["default_model"], plan["mode"]) == ("two", "one", "story", "parallel")
    assert plan["load"] == ["fresh"]  # an on-demand model loads when asked for, not now
    assert sorted(plan["keep"]) == ["story", "story:embed"]
    assert plan["unload"] == []  # extra is dropped but never ran: nothing to stop
    assert plan["on_demand"] == ["lazy"]
    fresh = target.models["fresh"]
    assert fresh.parallel == 8  # automatic: the largest slot count, since 8 slots of a tiny model fit
    expected = preflight([estimate_model(read_gguf_info(stories), 384, 1, parallel=8)])
    mem = plan["memory"]
    assert mem["needed_bytes"] == expected.needed and mem["budget_bytes"] is None and mem["freed_by_unload_bytes"] == 0
    assert mem["message"].startswith("needs ") and "is available" in mem["message"]
    assert service.routing is current  # planning changes nothing


def test_a_changed_spec_loads_a_new_model_under_the_same_name(
        paths: Paths, config: Config, store: Store, one: Path, stories: Path) -> None:
    service = service_on(paths, config, store, "one")
    write_profile(paths, "wider", {"story": model(stories, n_ctx=512), "extra": model(stories, n_ctx=320)})
    target, plan = build_plan(service, load_target(service, "wider"))
    assert target.models["story"] is not service.routing.models["story"]
    assert target.models["story"].spec.n_ctx == 512
    assert target.models["extra"] is service.routing.models["extra"]
    assert plan["load"] == ["story"] and sorted(plan["keep"]) == ["extra", "extra:embed"]
    assert target.models["story"].parallel == 8  # automatic, with memory to spare
    assert plan["memory"]["needed_bytes"] == preflight([estimate_model(read_gguf_info(stories), 512, 1, parallel=8)]).needed


def test_models_of_one_file_count_its_weights_once(paths: Paths, config: Config, store: Store, one: Path, stories: Path) -> None:
    service = service_on(paths, config, store, "one")
    write_profile(paths, "pair", {"a": model(stories, n_ctx=384), "b": model(stories, n_ctx=448)})
    _, plan = build_plan(service, load_target(service, "pair"))
    info = read_gguf_info(stories)
    a, b = estimate_model(info, 384, parallel=8), estimate_model(info, 448, parallel=8)  # automatic parallel, memory to spare
    assert plan["load"] == ["a", "b"]
    assert plan["memory"]["needed_bytes"] == a.total_bytes + b.total_bytes - info.size_bytes


def test_a_plan_with_nothing_to_load_says_so(paths: Paths, config: Config, store: Store, one: Path, stories: Path) -> None:
    service = service_on(paths, config, store, "one")
    write_profile(paths, "same", {"story": model(stories), "extra": model(stories, n_ctx=320)})
    target, plan = build_plan(service, load_target(service, "same"))
    assert plan["load"] == [] and plan["mode"] == "parallel" and plan["unload"] == []
    assert sorted(plan["keep"]) == ["extra", "extra:embed", "story", "story:embed"]
    assert plan["memory"]["message"] == "nothing to load: every always-ready model is kept"
    assert plan["memory"]["needed_bytes"] == 0
    assert target.by_key() == service.routing.by_key()


def test_a_profile_over_its_memory_budget_is_refused(paths: Paths, config: Config, store: Store, one: Path, stories: Path) -> None:
    service = service_on(paths, config, store, "one")
    write_profile(paths, "tight", {"fresh": model(stories, n_ctx=384)}, budget_mb=1)
    _, plan = build_plan(service, load_target(service, "tight"))
    assert plan["mode"] == "refused"
    assert plan["memory"]["budget_bytes"] == 1 * MiB
    assert plan["memory"]["message"].endswith("but the memory budget is 1.0 MiB")


def test_with_always_ready_off_every_model_is_on_demand_and_nothing_loads(paths: Paths, store: Store, one: Path, stories: Path) -> None:
    """llm_service.always_ready: false makes every model on demand: the switch starts
    none of them, so the plan loads nothing and cannot be refused for memory."""
    config = make_config(always_ready=False)
    service = service_on(paths, config, store, "one")
    write_profile(paths, "tight", {"big": model(stories, n_ctx=384)}, budget_mb=1)
    target, plan = build_plan(service, load_target(service, "tight"))
    assert [m.on_demand for m in target.models.values()] == [True]
    assert plan["load"] == [] and plan["on_demand"] == ["big"]
    assert plan["mode"] == "parallel"


def test_a_profile_within_a_generous_budget_is_parallel(paths: Paths, config: Config, store: Store, one: Path, stories: Path) -> None:
    service = service_on(paths, config, store, "one")
    write_profile(paths, "roomy", {"fresh": model(stories, n_ctx=384)}, budget_mb=1024)
    _, plan = build_plan(service, load_target(service, "roomy"))
    assert plan["mode"] == "parallel" and plan["memory"]["budget_bytes"] == 1024 * MiB
    assert plan["memory"]["message"].endswith("and the memory budget is 1.0 GiB")


def _n_ctx_needing(stories: Path, target_bytes: int) -> int:
    """An n_ctx at which one model on `stories` needs about `target_bytes` (the
    estimate grows linearly with the padded context)."""
    info = read_gguf_info(stories)
    lo, hi = estimate_model(info, 256 * 1000).total_bytes, estimate_model(info, 256 * 2000).total_bytes
    per_256 = (hi - lo) / 1000
    return max(256, int(1000 + (target_bytes - lo) / per_256) * 256)


def test_a_profile_bigger_than_the_memory_is_refused(paths: Paths, config: Config, store: Store, one: Path, stories: Path) -> None:
    service = service_on(paths, config, store, "one")
    n_ctx = _n_ctx_needing(stories, 4 * psutil.virtual_memory().available)
    write_profile(paths, "huge", {"huge": model(stories, n_ctx=n_ctx)})
    _, plan = build_plan(service, load_target(service, "huge"))
    mem = plan["memory"]
    assert plan["mode"] == "refused" and mem["needed_bytes"] > mem["available_bytes"] + mem["freed_by_unload_bytes"]
    assert "is available" in mem["message"] and mem["message"].startswith("needs ")


def test_running_models_that_the_target_drops_are_unloaded_and_free_their_memory(
        paths: Paths, config: Config, store: Store, one: Path, stories: Path) -> None:
    service = service_on(paths, config, store, "one")
    write_profile(paths, "two", {"story": model(stories), "fresh": model(stories, n_ctx=384)})

    async def main() -> None:
        try:
            service.activate(service.routing)  # the always-ready story and extra start
            for m in service.routing.models.values():
                assert await m.wait_settled(TIMEOUT) is ModelState.READY
            target, plan = await asyncio.to_thread(build_plan, service, load_target(service, "two"))
            assert plan["unload"] == ["extra"]  # its embeddings companion never ran
            assert plan["load"] == ["fresh"] and sorted(plan["keep"]) == ["story", "story:embed"]
            assert plan["memory"]["freed_by_unload_bytes"] > 0  # the RSS of extra's worker
            assert target.models["story"].started  # kept running
        finally:
            await stop_all(service.routing)

    asyncio.run(main())


def test_a_profile_that_fits_only_once_the_old_models_stop_is_drain_first(
        paths: Paths, config: Config, store: Store, one: Path, stories: Path) -> None:
    """needed > available, but needed <= available + what the models to unload free.
    The memory available moves with everything else on the machine, so the profile is
    sized for the middle of that window right before each plan, and a plan taken while
    the memory moved out of the window is taken again (a few times at most)."""
    service = service_on(paths, config, store, "one")

    async def main() -> None:
        try:
            service.activate(service.routing)
            for m in service.routing.models.values():
                assert await m.wait_settled(TIMEOUT) is ModelState.READY
            for attempt in range(5):
                freed = sum(sum(m.worker_rss().values()) for m in service.routing.models.values())
                target_bytes = psutil.virtual_memory().available + freed // 2
                write_profile(paths, "big", {"big": model(stories, n_ctx=_n_ctx_needing(stories, target_bytes))})
                _, plan = build_plan(service, load_target(service, "big"))
                mem = plan["memory"]
                assert sorted(plan["unload"]) == ["extra", "story"] and mem["freed_by_unload_bytes"] > 0
                if mem["available_bytes"] < mem["needed_bytes"] <= mem["available_bytes"] + mem["freed_by_unload_bytes"]:
                    assert plan["mode"] == "drain-first", plan
                    return
            pytest.fail("the available memory moved out of the window on every attempt")
        finally:
            await stop_all(service.routing)

    asyncio.run(main())


def test_dry_run_returns_the_plan_and_changes_nothing(paths: Paths, config: Config, store: Store, one: Path, stories: Path) -> None:
    service = service_on(paths, config, store, "one")
    write_profile(paths, "two", {"story": model(stories), "fresh": model(stories, n_ctx=384)})
    before = service.routing
    plan = asyncio.run(dry_run(service, "two"))
    assert plan["dry_run"] is True and set(plan) == PLAN_KEYS | {"dry_run"}
    assert plan["load"] == ["fresh"] and plan["profile"] == "two"
    assert service.routing is before and not any(m.started for m in before.all_models())
    assert store.get_meta("active_profile") == "one"


def test_dry_run_of_an_invalid_profile_is_an_invalid_request(paths: Paths, config: Config, store: Store, one: Path, tmp_path: Path) -> None:
    write_profile(paths, "bad", {"gone": model(tmp_path / "gone.gguf")})
    service = service_on(paths, config, store, "one")
    with pytest.raises(InvalidRequest) as exc:
        asyncio.run(dry_run(service, "bad"))
    assert exc.value.code == "invalid_profile"
    assert exc.value.message.startswith("profile 'bad' is invalid:\n") and "models.gone.source" in exc.value.message


# ---- the switch's phases -----------------------------------------------------------------

P = Phase
LEGAL = {
    (P.VALIDATE, P.PREFLIGHT), (P.VALIDATE, P.FAILED),
    (P.PREFLIGHT, P.LOAD), (P.PREFLIGHT, P.FAILED),
    (P.LOAD, P.VERIFY), (P.LOAD, P.ROLLBACK),
    (P.VERIFY, P.ROUTE), (P.VERIFY, P.ROLLBACK),
    (P.ROUTE, P.DRAIN),
    (P.DRAIN, P.DONE),
    (P.ROLLBACK, P.FAILED),
}


@pytest.mark.parametrize(("current", "target"), sorted(LEGAL), ids=lambda p: p.value)
def test_legal_switch_phase_transitions(current: Phase, target: Phase) -> None:
    assert advance(current, target) is target


@pytest.mark.parametrize(("current", "target"), [p for p in itertools.product(Phase, Phase) if p not in LEGAL],
                         ids=lambda p: p.value)
def test_illegal_switch_phase_transitions_raise(current: Phase, target: Phase) -> None:
    allowed = ", ".join(sorted(t.value for c, t in LEGAL if c is current)) or "nothing"
    with pytest.raises(IllegalTransition) as exc:
        advance(current, target)
    assert str(exc.value) == f"illegal switch transition {current.value} -> {target.value} (allowed from {current.value}: {allowed})"
    assert (exc.value.current, exc.value.target) == (current, target)


def test_the_happy_path_walks_the_job_steps_in_order() -> None:
    phase, walked = Phase.VALIDATE, [Phase.VALIDATE.value]
    for nxt in (P.PREFLIGHT, P.LOAD, P.VERIFY, P.ROUTE, P.DRAIN):
        phase = advance(phase, nxt)
        walked.append(phase.value)
    assert walked == STEPS  # the job's step names are the phases'
    assert advance(phase, P.DONE) is P.DONE
