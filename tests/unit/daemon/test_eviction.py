"""msting.daemon.local.eviction.choose_victims: which idle on-demand models to unload so
that a model fits, or a clear refusal.

The models are real LocalModels on the real stories260K GGUF (their estimates read the
file's header); none is started: the policy looks only at estimates, queues and use
times. Their `last_used` is the moment each was built, so building them in order gives
the least recently used order."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from msting.api.errors import Unavailable
from msting.api.requests import CompletionRequest
from msting.config import Config
from msting.daemon.local.eviction import choose_victims
from msting.daemon.local.model import LocalModel
from msting.daemon.local.queue import LocalJob
from msting.daemon.store import Store
from msting.models.gguf_file import read_gguf_info
from msting.models.memory import GiB, estimate_model, format_bytes

from local_testing import make_config, spec

PLENTY = 64 * GiB


def models(store: Store, config: Config, stories: Path, *names: str, always_ready: bool = False, n_ctx: int = 256) -> list[LocalModel]:
    """Models built in this order (so the first is the least recently used)."""
    out = []
    for name in names:
        out.append(LocalModel(spec(name, stories, n_ctx=n_ctx, always_ready=always_ready), config, store))
        time.sleep(0.001)  # distinct last_used stamps even on a coarse monotonic clock
    return out


@pytest.fixture
def config() -> Config:
    return make_config()


def later() -> float:
    return time.monotonic() + 60.0


def test_the_estimate_is_read_from_the_gguf_file(store: Store, config: Config, stories: Path) -> None:
    [m] = models(store, config, stories, "m", n_ctx=512)
    assert m.estimated_bytes == estimate_model(read_gguf_info(stories), 512, 1).total_bytes
    [small] = models(store, config, stories, "small", n_ctx=256)
    assert small.estimated_bytes < m.estimated_bytes  # a longer context needs more (KV cache, buffers)


def test_nothing_is_unloaded_when_the_model_fits(store: Store, config: Config, stories: Path) -> None:
    new, a, b = models(store, config, stories, "new", "a", "b")
    assert choose_victims(new, [a, b], budget=None, available=PLENTY, now=later()) == []
    e = new.estimated_bytes
    assert choose_victims(new, [a, b], budget=3 * e, available=PLENTY, now=later()) == []  # exactly fits the budget
    assert choose_victims(new, [], budget=e, available=e, now=later()) == []  # exactly fits both


@pytest.mark.parametrize(("room_for", "victims"), [(3, ["a"]), (2, ["a", "b"]), (1, ["a", "b", "c"])])
def test_the_least_recently_used_idle_models_go_first_and_only_as_many_as_needed(
        store: Store, config: Config, stories: Path, room_for: int, victims: list[str]) -> None:
    a, b, c, new = models(store, config, stories, "a", "b", "c", "new")
    e = new.estimated_bytes
    loaded = [c, a, b]  # the order given does not matter: use does
    chosen = choose_victims(new, loaded, budget=(room_for + 1) * e - 1, available=PLENTY, now=later())
    assert [m.name for m in chosen] == victims


@pytest.mark.parametrize("available_share", [0.5, 0.0])
def test_available_memory_counts_what_the_victims_free(store: Store, config: Config, stories: Path, available_share: float) -> None:
    a, b, c, new = models(store, config, stories, "a", "b", "c", "new")
    available = int(new.estimated_bytes * available_share)  # short of what new needs; a alone frees enough
    assert [m.name for m in choose_victims(new, [b, c, a], budget=None, available=available, now=later())] == ["a"]


def test_a_model_needing_more_than_two_frees_three(store: Store, config: Config, stories: Path) -> None:
    a, b, c = models(store, config, stories, "a", "b", "c")
    big = LocalModel(spec("big", stories, replicas=3, always_ready=False), config, store)
    assert 2 * a.estimated_bytes < big.estimated_bytes <= 3 * a.estimated_bytes  # the weights are shared by replicas
    assert [m.name for m in choose_victims(big, [c, b, a], budget=None, available=0, now=later())] == ["a", "b", "c"]


def test_a_busy_model_is_never_unloaded(store: Store, config: Config, stories: Path) -> None:
    a, b, new = models(store, config, stories, "a", "b", "new")
    a.queue.put(LocalJob(CompletionRequest("x", "a"), "a"))  # a request waits for it: not idle
    assert a.idle_for(later()) == 0.0
    e = new.estimated_bytes
    assert choose_victims(new, [a, b], budget=2 * e, available=PLENTY, now=later()) == [b]
    with pytest.raises(Unavailable, match="no idle on-demand model to unload") as exc:
        choose_victims(new, [a, b], budget=e, available=PLENTY, now=later())  # unloading b is not enough
    assert exc.value.code == "insufficient_memory"


def test_a_model_whose_queued_job_was_cancelled_is_idle_again(store: Store, config: Config, stories: Path) -> None:
    a, new = models(store, config, stories, "a", "new")
    j = LocalJob(CompletionRequest("x", "a"), "a")
    a.queue.put(j)
    j.cancel()
    assert choose_victims(new, [a], budget=new.estimated_bytes, available=PLENTY, now=later()) == [a]


def test_a_model_used_just_now_is_not_idle(store: Store, config: Config, stories: Path) -> None:
    a, b, new = models(store, config, stories, "a", "b", "new")
    now = b.last_used  # b was used at this very moment; a before it
    e = new.estimated_bytes
    assert choose_victims(new, [a, b], budget=2 * e, available=PLENTY, now=now) == [a]
    with pytest.raises(Unavailable):
        choose_victims(new, [a, b], budget=e, available=PLENTY, now=now)


def test_always_ready_models_are_never_unloaded(store: Store, config: Config, stories: Path) -> None:
    [ready] = models(store, config, stories, "ready", always_ready=True)
    a, new = models(store, config, stories, "a", "new")
    assert not ready.on_demand and a.on_demand
    e = new.estimated_bytes
    # ready is the least recently used, but it is not on demand
    assert choose_victims(new, [ready, a], budget=2 * e, available=PLENTY, now=later()) == [a]
    with pytest.raises(Unavailable):
        choose_victims(new, [ready, a], budget=e, available=PLENTY, now=later())


def test_with_always_ready_off_in_config_every_model_is_on_demand(store: Store, stories: Path) -> None:
    config = make_config(always_ready=False)
    [ready] = models(store, config, stories, "ready", always_ready=True)
    [new] = models(store, config, stories, "new", always_ready=True)
    assert ready.on_demand
    assert choose_victims(new, [ready], budget=new.estimated_bytes, available=PLENTY, now=later()) == [ready]


def test_the_model_to_load_is_neither_counted_nor_a_victim(store: Store, config: Config, stories: Path) -> None:
    new, a = models(store, config, stories, "new", "a")
    e = new.estimated_bytes
    assert choose_victims(new, [new, a], budget=2 * e, available=PLENTY, now=later()) == []
    assert choose_victims(new, [new, a], budget=e, available=PLENTY, now=later()) == [a]


def test_the_refusal_over_the_budget_says_what_is_needed_and_in_use(store: Store, config: Config, stories: Path) -> None:
    [ready] = models(store, config, stories, "ready", always_ready=True)
    [new] = models(store, config, stories, "new", n_ctx=512)
    used, need = ready.estimated_bytes, new.estimated_bytes
    budget = used + need - 1
    with pytest.raises(Unavailable) as exc:
        choose_victims(new, [ready], budget=budget, available=PLENTY, now=later())
    assert exc.value.code == "insufficient_memory" and exc.value.retry_after == 5
    assert exc.value.message == (f"model 'new' needs about {format_bytes(need)} but there is only the budget of "
                                 f"{format_bytes(budget)} ({format_bytes(used)} in use), and no idle on-demand model to unload")


def test_the_refusal_for_want_of_memory_says_what_is_available(store: Store, config: Config, stories: Path) -> None:
    [ready] = models(store, config, stories, "ready", always_ready=True)
    [new] = models(store, config, stories, "new", n_ctx=512)
    need = new.estimated_bytes
    available = need // 2
    with pytest.raises(Unavailable) as exc:
        choose_victims(new, [ready], budget=None, available=available, now=later())
    assert exc.value.code == "insufficient_memory" and exc.value.retry_after == 5
    assert exc.value.message == (f"model 'new' needs about {format_bytes(need)} but there is only "
                                 f"{format_bytes(available)} available, and no idle on-demand model to unload")
    # within the budget but not in memory: still the memory that is short
    with pytest.raises(Unavailable, match=f"there is only {format_bytes(available)} available"):
        choose_victims(new, [ready], budget=PLENTY, available=available, now=later())


def test_a_model_bigger_than_the_budget_alone_is_refused_even_with_everything_idle(
        store: Store, config: Config, stories: Path) -> None:
    a, new = models(store, config, stories, "a", "new", n_ctx=512)
    budget = new.estimated_bytes - 1
    with pytest.raises(Unavailable) as exc:
        choose_victims(new, [a], budget=budget, available=PLENTY, now=later())
    assert f"the budget of {format_bytes(budget)}" in exc.value.message
