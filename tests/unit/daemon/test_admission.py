"""msting.daemon.local.admission: a request resolved against real routings (models on the
real stories260K GGUF), given its model's defaults, and queued in its model's queue.

Admitting a job for a model that is not running starts it: that spawns a real worker
process (about 0.2 s here). Tests look at the queues right after `job()` returns (no
await in between, so no worker has taken anything yet), and stop every started model
before they end."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from msting.api import limits
from msting.api.errors import InvalidRequest, NotFound, Unavailable
from msting.api.events import Done, Embeddings, Failed
from msting.api.requests import ChatRequest, CompletionRequest, EmbeddingRequest, Message, SamplingParams
from msting.config import Config
from msting.daemon.local.admission import Admission
from msting.daemon.local.model import LocalModel, ModelState
from msting.daemon.local.queue import JobStatus, LocalJob
from msting.daemon.local.routing import Routing
from msting.daemon.local.states import WorkerState
from msting.daemon.store import Store
from msting.models.memory import format_bytes

from local_testing import build, make_config, spec, stop_all

TIMEOUT = 60  # a bound on waits for real workers, never an expectation


def admit(routing: Routing, store: Store, unloaded: list[LocalModel] | None = None) -> Admission:
    """Admission as LocalService builds it: evictions stop the model in the background, and
    the models that may hold memory are the routing's and a running switch's target's."""
    tasks: set[asyncio.Task] = set()

    def unload(m: LocalModel) -> None:
        if unloaded is not None:
            unloaded.append(m)
        task = asyncio.get_running_loop().create_task(m.stop())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def all_loaded() -> list[LocalModel]:
        seen: dict[int, LocalModel] = {}
        for r in [admission.routing, *([admission.incoming] if admission.incoming else [])]:
            for m in r.all_models():
                seen.setdefault(id(m), m)
        return list(seen.values())

    admission = Admission(routing, store, unload=unload, loaded=all_loaded)
    return admission


def queued(model: LocalModel) -> list[LocalJob]:
    """The live jobs waiting in the model's queue, in order (drained and put back: call it
    only before any await since the model started, when no worker waits in take())."""
    jobs = model.queue.drain_all()
    for j in jobs:
        model.queue.put(j)
    return jobs


async def until(condition, timeout: float = TIMEOUT, interval: float = 0.01) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(interval)

    await asyncio.wait_for(poll(), timeout)


def run(main, *routings: Routing) -> object:
    """Run `main()` on a fresh event loop; stop whatever it started, even on failure."""

    async def wrapper():
        try:
            return await main()
        finally:
            await stop_all(*routings)

    return asyncio.run(wrapper())


@pytest.fixture
def config() -> Config:
    return make_config()


# ---- resolving and refusing ------------------------------------------------------------


def test_a_job_is_queued_in_its_models_queue_and_starts_it(store: Store, config: Config, stories: Path) -> None:
    r = build(store, config, spec("story", stories), spec("other", stories, n_ctx=512))

    async def main() -> None:
        a = admit(r, store)
        j = a.job(CompletionRequest("Once", "story"), stream=True)
        story = r.models["story"]
        assert j.owner is story and j.model == "story" and j.stream
        assert j.status is JobStatus.QUEUED
        assert story.started  # on demand: the job waits in the queue while the model loads
        # no name, "default" and "" are the default model (the profile's first)
        defaults = [a.job(CompletionRequest("Once", name)) for name in (None, "default", "")]
        assert all(d.model == "story" and d.owner is story for d in defaults)
        assert queued(story) == [j, *defaults]
        assert not r.models["other"].started and len(r.models["other"].queue) == 0

    run(main, r)


def test_an_unknown_model_is_not_found_and_starts_nothing(store: Store, config: Config, stories: Path) -> None:
    r = build(store, config, spec("story", stories), spec("vec", stories, type="embeddings"))

    async def main() -> None:
        a = admit(r, store)
        with pytest.raises(NotFound) as exc:
            a.job(CompletionRequest("Once", "nope"))
        assert exc.value.code == "model_not_found"
        assert exc.value.message == "model 'nope' is not known; known models: story, vec"
        with pytest.raises(NotFound):
            a.job(EmbeddingRequest(("x",), "nope"))
        assert not any(m.started or len(m.queue) for m in r.all_models())

    run(main, r)


def test_a_generate_on_an_embeddings_model_is_refused(store: Store, config: Config, stories: Path) -> None:
    r = build(store, config, spec("story", stories), spec("vec", stories, type="embeddings"))

    async def main() -> None:
        a = admit(r, store)
        for request in (CompletionRequest("Once", "vec"), ChatRequest((Message("user", "hi"),), "vec")):
            with pytest.raises(InvalidRequest) as exc:
                a.job(request)
            assert exc.value.code == "model_not_generative"
            assert exc.value.message == "model 'vec' is an embeddings model; it does not generate text"
        assert not any(m.started or len(m.queue) for m in r.all_models())

    run(main, r)


def test_a_closed_admission_refuses_with_shutting_down(store: Store, config: Config, stories: Path) -> None:
    r = build(store, config, spec("story", stories))

    async def main() -> None:
        a = admit(r, store)
        assert a.close() == []
        for request in (CompletionRequest("Once", "story"), EmbeddingRequest(("x",), "story"), CompletionRequest("x", "nope")):
            with pytest.raises(Unavailable) as exc:
                a.job(request)
            assert (exc.value.code, exc.value.message, exc.value.retry_after) == ("shutting_down", "the daemon is shutting down", 5)
        assert not any(m.started for m in r.all_models())

    run(main, r)


def test_a_full_queue_is_unavailable_queue_full_with_retry_after(store: Store, stories: Path) -> None:
    config = make_config(queue_size=2)
    r = build(store, config, spec("story", stories))

    async def main() -> None:
        a = admit(r, store)
        first, second = a.job(CompletionRequest("a", "story")), a.job(CompletionRequest("b", "story"))
        with pytest.raises(Unavailable) as exc:
            a.job(CompletionRequest("c", "story"))
        assert exc.value.code == "queue_full" and exc.value.retry_after == 1
        assert exc.value.message == "the queue for model 'story' is full (2 requests waiting); retry shortly"
        assert queued(r.models["story"]) == [first, second]
        # a place is free again once a queued job is cancelled
        a.cancel(first)
        third = a.job(CompletionRequest("c", "story"))
        assert queued(r.models["story"]) == [second, third]

    run(main, r)


# ---- the model's defaults --------------------------------------------------------------


def test_the_models_defaults_fill_what_the_request_left_out(store: Store, config: Config, stories: Path) -> None:
    r = build(store, config, spec("story", stories, max_tokens=3, temperature=0.0))

    async def main() -> None:
        a = admit(r, store)
        request = CompletionRequest("Once upon a time", "story", SamplingParams(top_p=0.5, seed=11, stop=("END",)))
        j = a.job(request)
        assert j.request.sampling == SamplingParams(max_tokens=3, temperature=0.0, top_p=0.5, seed=11, stop=("END",))
        assert j.request.prompt == "Once upon a time" and j.request.model == "story"
        assert request.sampling.max_tokens is None and request.sampling.temperature is None  # the caller's is unchanged
        # and they reach the worker: a greedy story does not end in 3 tokens
        done = await asyncio.wait_for(j.events.get(), TIMEOUT)
        assert isinstance(done, Done), done
        assert (done.model, done.finish_reason, done.usage.completion_tokens) == ("story", "length", 3)

    run(main, r)


def test_what_the_request_set_is_kept_and_each_model_has_its_own_defaults(store: Store, config: Config, stories: Path) -> None:
    r = build(store, config, spec("cold", stories, max_tokens=3, temperature=0.0), spec("plain", stories, n_ctx=512))

    def sampled(j: LocalJob) -> tuple:
        return j.request.sampling.max_tokens, j.request.sampling.temperature

    async def main() -> None:
        a = admit(r, store)
        assert sampled(a.job(CompletionRequest("x", "cold", SamplingParams(max_tokens=50, temperature=1.5)))) == (50, 1.5)
        only_tokens = a.job(ChatRequest((Message("user", "hi"),), "cold", SamplingParams(max_tokens=7)))
        assert sampled(only_tokens) == (7, 0.0)
        assert only_tokens.request.messages == (Message("user", "hi"),)
        assert sampled(a.job(CompletionRequest("x", "cold", SamplingParams(temperature=1.0)))) == (3, 1.0)
        # 0.0 is a value, not "unset"
        assert sampled(a.job(CompletionRequest("x", "cold", SamplingParams(max_tokens=1, temperature=0.0)))) == (1, 0.0)
        assert sampled(a.job(CompletionRequest("x", "plain"))) == (limits.DEFAULT_MAX_TOKENS, limits.DEFAULT_TEMPERATURE)
        assert sampled(a.job(CompletionRequest("x", "cold"))) == (3, 0.0)

    run(main, r)


# ---- embeddings --------------------------------------------------------------------------


def test_embeddings_of_an_llm_go_to_its_embeddings_companion(store: Store, config: Config, stories: Path) -> None:
    r = build(store, config, spec("story", stories))

    async def main() -> None:
        a = admit(r, store)
        request = EmbeddingRequest(("Once upon a time", "Lily"), "story")
        j = a.job(request)
        llm, companion = r.models["story"], r.embedders["story"]
        assert j.owner is companion and j.model == "story" and j.embed
        assert companion.spec.type == "embeddings" and companion.key == "story:embed"
        assert j.request is request  # embeddings take no sampling defaults
        assert queued(companion) == [j]
        assert companion.started and not llm.started and len(llm.queue) == 0
        result = await asyncio.wait_for(j.events.get(), TIMEOUT)
        assert isinstance(result, Embeddings), result
        assert result.model == "story" and len(result.vectors) == 2
        assert all(len(v) == 64 for v in result.vectors)  # stories260K's n_embd

    run(main, r)


def test_embeddings_of_an_embeddings_model_go_to_that_model(store: Store, config: Config, stories: Path) -> None:
    r = build(store, config, spec("story", stories), spec("vec", stories, type="embeddings"))

    async def main() -> None:
        a = admit(r, store)
        j = a.job(EmbeddingRequest(("x",), "vec"))
        assert j.owner is r.models["vec"] and queued(r.models["vec"]) == [j]
        assert "vec" not in r.embedders  # an embeddings model has no companion
        assert not r.models["story"].started and not r.embedders["story"].started

    run(main, r)


# ---- a failed model ----------------------------------------------------------------------


def test_a_failed_model_is_refused_until_its_file_is_fixed(store: Store, config: Config, stories: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"this is not a GGUF file\n" * 10)
    r = build(store, config, spec("story", broken))

    async def main() -> None:
        a = admit(r, store)
        model = r.models["story"]
        first = a.job(CompletionRequest("Once", "story"))  # starts the model: its worker cannot load the file
        assert await model.wait_settled(TIMEOUT) is ModelState.FAILED
        event = first.events.get_nowait()  # the queued job was answered when the model failed
        assert isinstance(event, Failed) and event.error.code == "model_failed"
        with pytest.raises(Unavailable) as exc:
            a.job(CompletionRequest("Once", "story"))
        assert exc.value.code == "model_failed"
        assert exc.value.message.startswith("model 'story' failed: ")
        assert exc.value.message.endswith("; it is tried again when the model file changes, or on `msting llm load story`")
        assert len(model.queue) == 0
        # the file is fixed: the next request starts the model again (recheck), and is queued
        shutil.copyfile(stories, broken)
        j = a.job(CompletionRequest("Once", "story", SamplingParams(max_tokens=2)))
        assert model.state is not ModelState.FAILED
        done = await asyncio.wait_for(j.events.get(), TIMEOUT)
        assert isinstance(done, Done), done

    run(main, r)


# ---- switches: paused admission, swap, settle --------------------------------------------


def test_a_paused_switch_holds_jobs_until_settle_queues_them_on_the_routing_in_force(
        store: Store, config: Config, stories: Path) -> None:
    old = build(store, config, spec("story", stories), profile="old")
    new = build(store, config, spec("story", stories, n_ctx=512), spec("fresh", stories, n_ctx=384), profile="new")

    async def main() -> None:
        a = admit(old, store)
        a.expect(new, pause=True)
        held = a.job(CompletionRequest("x", "story"), stream=True)
        also_held = a.job(CompletionRequest("y", "fresh"))
        cancelled = a.job(CompletionRequest("z", "fresh"))
        assert a.held == [held, also_held, cancelled]
        assert held.status is JobStatus.QUEUED and held.owner is None and held.model == "story"
        a.cancel(cancelled)
        also_held.fail(Unavailable("shutting_down", "answered elsewhere"))  # an answered job is not queued either
        assert not any(m.started or len(m.queue) for m in [*old.all_models(), *new.all_models()])
        # the name is checked against the incoming profile: one only the old profile has is refused
        old_only = build(store, config, spec("story", stories), spec("legacy", stories), profile="old2")
        a2 = admit(old_only, store)
        a2.expect(new, pause=True)
        with pytest.raises(NotFound):
            a2.job(CompletionRequest("x", "legacy"))

        a.swap(new)
        assert a.routing is new and a.held == [] and not a.paused and a.incoming is None
        assert held.owner is new.models["story"] and queued(new.models["story"]) == [held]
        assert not new.models["fresh"].started and len(new.models["fresh"].queue) == 0
        assert not old.models["story"].started and len(old.models["story"].queue) == 0
        assert all(m.profile == "new" for m in new.all_models())  # swap claims the models

    run(main, old, new)


def test_a_rolled_back_switch_queues_held_jobs_on_the_old_routing(store: Store, config: Config, stories: Path) -> None:
    old = build(store, config, spec("story", stories), profile="old")
    new = build(store, config, spec("story", stories, n_ctx=512), spec("fresh", stories, n_ctx=384), profile="new")

    async def main() -> None:
        a = admit(old, store)
        a.expect(new, pause=True)
        kept = a.job(CompletionRequest("x", "story"))
        orphan = a.job(CompletionRequest("y", "fresh"))  # only the profile that was not switched to has it
        a.settle()
        assert a.routing is old and a.held == []
        assert kept.owner is old.models["story"] and queued(old.models["story"]) == [kept]
        event = orphan.events.get_nowait()
        assert isinstance(event, Failed) and event.error.code == "model_not_found"
        assert orphan.status is JobStatus.FINISHED
        assert not any(m.started for m in new.all_models())

    run(main, old, new)


def test_a_held_job_that_was_cancelled_is_dropped(store: Store, config: Config, stories: Path) -> None:
    old = build(store, config, spec("story", stories), profile="old")
    new = build(store, config, spec("story", stories, n_ctx=512), profile="new")

    async def main() -> None:
        a = admit(old, store)
        a.expect(new, pause=True)
        gone = a.job(CompletionRequest("x", "story"))
        a.cancel(gone)
        assert gone.status is JobStatus.CANCELLED
        a.swap(new)
        assert a.held == [] and len(new.models["story"].queue) == 0 and gone.events.empty()
        assert not new.models["story"].started  # nothing to serve: the model was not even started

    run(main, old, new)


def test_close_during_a_paused_switch_returns_the_held_jobs(store: Store, config: Config, stories: Path) -> None:
    old = build(store, config, spec("story", stories), profile="old")
    new = build(store, config, spec("story", stories, n_ctx=512), profile="new")

    async def main() -> None:
        a = admit(old, store)
        a.expect(new, pause=True)
        held = [a.job(CompletionRequest("x", "story")) for _ in range(2)]
        assert a.close() == held
        assert a.held == []
        with pytest.raises(Unavailable, match="shutting down"):
            a.job(CompletionRequest("x", "story"))

    run(main, old, new)


def test_swap_routes_new_jobs_to_the_new_models_and_queued_ones_stay(store: Store, config: Config, stories: Path) -> None:
    old = build(store, config, spec("story", stories), profile="old")
    new = build(store, config, spec("story", stories, n_ctx=512), spec("fresh", stories, n_ctx=384), profile="new")

    async def main() -> None:
        a = admit(old, store)
        before = a.job(CompletionRequest("x", "story"))
        a.swap(new)
        after = a.job(CompletionRequest("y", "story"))
        default = a.job(CompletionRequest("z", None))
        assert before.owner is old.models["story"] and queued(old.models["story"]) == [before]
        assert after.owner is new.models["story"] and default.owner is new.models["story"]
        assert queued(new.models["story"]) == [after, default]
        assert a.find("fresh") is new.models["fresh"]

    run(main, old, new)


def test_during_a_parallel_switch_a_model_only_the_incoming_profile_has_is_served_by_it(
        store: Store, config: Config, stories: Path) -> None:
    old = build(store, config, spec("story", stories), profile="old")
    new = build(store, config, spec("story", stories, n_ctx=512), spec("fresh", stories, n_ctx=384), profile="new")

    async def main() -> None:
        a = admit(old, store)
        a.expect(new, pause=False)
        fresh = a.job(CompletionRequest("x", "fresh"))  # waits in the incoming model's queue while it loads
        story = a.job(CompletionRequest("y", "story"))  # both have it: the routing in force serves it
        assert a.held == []
        assert fresh.owner is new.models["fresh"] and queued(new.models["fresh"]) == [fresh]
        assert story.owner is old.models["story"] and queued(old.models["story"]) == [story]
        assert not new.models["story"].started

    run(main, old, new)


# ---- eviction through admission -----------------------------------------------------------


def test_an_idle_on_demand_model_is_evicted_to_make_room(store: Store, config: Config, stories: Path) -> None:
    a_spec, b_spec = spec("a", stories, always_ready=False), spec("b", stories, n_ctx=512, always_ready=False)
    probe = build(store, config, a_spec, b_spec)
    one = max(m.estimated_bytes for m in probe.models.values())
    r = build(store, config, a_spec, b_spec, budget=one + one // 2)  # room for one of them, not both

    async def main() -> None:
        unloaded: list[LocalModel] = []
        adm = admit(r, store, unloaded)
        first = adm.job(CompletionRequest("Once", "a", SamplingParams(max_tokens=1)))
        assert isinstance(await asyncio.wait_for(first.events.get(), TIMEOUT), Done)
        model_a, model_b = r.models["a"], r.models["b"]
        await until(lambda: not model_a.in_flight)  # the worker frees itself right after the answer
        job_b = adm.job(CompletionRequest("Once", "b"))
        assert unloaded == [model_a]
        assert job_b.owner is model_b and model_b.started
        events = [e for e in store.recent_events(50) if e["kind"] == "model_evicted"]
        assert [(e["model"], e["detail"]) for e in events] == [("a", "a unloaded to make room for b")]

    run(main, r)


def test_no_room_while_the_other_model_is_busy_is_insufficient_memory(store: Store, config: Config, stories: Path) -> None:
    a_spec, b_spec = spec("a", stories, always_ready=False), spec("b", stories, n_ctx=512, always_ready=False)
    probe = build(store, config, a_spec, b_spec)
    need_a, need_b = probe.models["a"].estimated_bytes, probe.models["b"].estimated_bytes
    budget = need_a + need_b // 2
    r = build(store, config, a_spec, b_spec, budget=budget)

    async def main() -> None:
        unloaded: list[LocalModel] = []
        adm = admit(r, store, unloaded)
        adm.job(CompletionRequest("Once", "a"))  # queued: model a has work, it is not idle
        with pytest.raises(Unavailable) as exc:
            adm.job(CompletionRequest("Once", "b"))
        assert exc.value.code == "insufficient_memory" and exc.value.retry_after == 5
        assert exc.value.message == (f"model 'b' needs about {format_bytes(need_b)} but there is only the budget of "
                                     f"{format_bytes(budget)} ({format_bytes(need_a)} in use), and no idle on-demand model to unload")
        assert unloaded == [] and not r.models["b"].started and len(r.models["b"].queue) == 0

    run(main, r)


def test_a_model_bigger_than_the_budget_is_refused_before_it_starts(store: Store, config: Config, stories: Path) -> None:
    r = build(store, config, spec("story", stories), budget=1024 * 1024)

    async def main() -> None:
        with pytest.raises(Unavailable, match="^model 'story' needs about .* but there is only the budget of 1.0 MiB"):
            admit(r, store).job(CompletionRequest("Once", "story"))
        assert not r.models["story"].started and len(r.models["story"].queue) == 0

    run(main, r)


# ---- requests that arrive while a model stops; a failed model's file -------------------


def test_a_job_admitted_while_its_model_stops_is_not_stranded(store: Store, config: Config, stories: Path) -> None:
    """The idle reaper, an eviction or an unload stops a model; a request for it that
    arrives before the worker is STOPPED is queued there, and the model starts again
    for it once the stop is done: the job is served."""
    r = build(store, config, spec("b", stories, always_ready=False))

    async def main() -> None:
        a = admit(r, store)
        model = r.models["b"]
        first = a.job(CompletionRequest("Once", "b", SamplingParams(max_tokens=1)))
        assert isinstance(await asyncio.wait_for(first.events.get(), TIMEOUT), Done)
        await until(lambda: not model.in_flight)
        stopping = asyncio.ensure_future(model.stop())  # as the idle reaper does
        await until(lambda: model.workers[0].state is WorkerState.DRAINING, interval=0)  # a brief state: look every loop turn
        assert model.started
        j = a.job(CompletionRequest("Once", "b", SamplingParams(max_tokens=1)))
        await stopping
        assert model.started, f"{j.status.value} in the queue of a stopped model"
        assert isinstance(await asyncio.wait_for(j.events.get(), TIMEOUT), Done)

    run(main, r)


def test_a_failed_model_with_a_broken_file_does_not_block_on_demand_loads(
        store: Store, config: Config, stories: Path, tmp_path: Path) -> None:
    """The default profile starts even with a broken model file: that model goes FATAL.
    It holds no memory, so making room for another, healthy model never reads its file
    (that raised ModelFileError, a 500, for the healthy model's request)."""
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"this is not a GGUF file\n" * 10)
    r = build(store, config, spec("a", broken), spec("b", stories, always_ready=False))

    async def main() -> None:
        adm = admit(r, store)
        r.models["a"].start()  # as LocalService.activate does
        assert await r.models["a"].wait_settled(TIMEOUT) is ModelState.FAILED
        j = adm.job(CompletionRequest("Once", "b"))
        assert j.owner is r.models["b"] and r.models["b"].started

    run(main, r)
