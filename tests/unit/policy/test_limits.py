"""msting.policy.limits in process, on a clock the test moves: sliding windows counted
exactly, the honest wait of a refusal, tokens estimated then corrected with the real
usage, client policies, and a restart's charges brought back (through the real
usage database)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from msting.api.events import Usage
from msting.api.requests import CompletionRequest, RequestMeta
from msting.config.policy import RateLimits
from msting.daemon.store import Store
from msting.policy.limits import Limiter, Refusal, Ticket
from msting.policy.usage import Prices, UsageDB, UsageLog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _limiter(clock: Clock, *, service: RateLimits = RateLimits(), models: dict | None = None,
             clients: dict | None = None) -> Limiter:
    return Limiter({"local": (service, models or {})}, clients or {}, 30.0, clock=clock, wall=lambda: clock.now + 1e9)


def _req(prompt: str = "x" * 40, client: str | None = None) -> CompletionRequest:
    return CompletionRequest(prompt, meta=RequestMeta(client=client))


def test_requests_per_minute_admits_exactly_the_limit_and_names_the_honest_wait() -> None:
    clock = Clock()
    limiter = _limiter(clock, service=RateLimits(requests_per_minute=3))
    tickets = []
    for second in range(3):
        clock.now = 1000.0 + second * 10  # at 0 s, 10 s, 20 s
        tickets.append(limiter.admit("local", None, _req()))
    assert all(isinstance(t, Ticket) for t in tickets)
    clock.now = 1025.0
    refused = limiter.admit("local", None, _req())
    assert isinstance(refused, Refusal) and refused.wait == 35.0  # the first leaves the window at 1060
    assert "3 requests per minute" in refused.reason and "llm.local.rate_limits" in refused.reason
    assert refused.error("local").retry_after == 35
    clock.now = 1060.0  # exactly 60 s after the first: it is out
    assert isinstance(limiter.admit("local", None, _req()), Ticket)
    assert isinstance(limiter.admit("local", None, _req()), Refusal)


def test_tokens_are_estimated_up_front_then_corrected_by_the_real_usage() -> None:
    clock = Clock()
    limiter = _limiter(clock, service=RateLimits(tokens_per_minute=100))
    first = limiter.admit("local", "m", _req("x" * 40))  # chars/4: 10 tokens
    assert isinstance(first, Ticket)
    window = first.charges[0].window
    assert window.tokens == 10
    first.settle(Usage(prompt_tokens=20, completion_tokens=70))  # the real count: 90
    assert window.tokens == 90
    # the ratio learned from that answer: 0.25 + 0.2 * (0.5 - 0.25) = 0.3 tokens per char
    assert limiter.estimate("local", "m", 40) == 12
    refused = limiter.admit("local", "m", _req("x" * 40))
    assert isinstance(refused, Refusal) and "100 tokens per minute" in refused.reason and refused.wait == 60.0
    assert isinstance(limiter.admit("local", "m", _req("x" * 20)), Ticket)  # 6 more fit: 96


def test_a_request_bigger_than_the_token_limit_can_never_fit() -> None:
    clock = Clock()
    limiter = _limiter(clock, service=RateLimits(tokens_per_minute=5))
    refused = limiter.admit("local", None, _req("x" * 400))
    assert isinstance(refused, Refusal) and refused.wait is None
    assert refused.error("local").retry_after is None


def test_model_and_client_limits_and_the_any_client_policy() -> None:
    clock = Clock()
    limiter = _limiter(clock, models={"m": RateLimits(requests_per_minute=1)},
                       clients={"key:K": RateLimits(requests_per_minute=2), "*": RateLimits(requests_per_minute=1)})
    assert limiter.admit("local", "other", _req()) is None  # nothing limits it
    assert isinstance(limiter.admit("local", "m", _req()), Ticket)
    assert isinstance(limiter.admit("local", "m", _req()), Refusal)
    # key:K and its labelled clients share the key's window
    assert isinstance(limiter.admit("local", "x", _req(client="key:K/a")), Ticket)
    assert isinstance(limiter.admit("local", "x", _req(client="key:K/b")), Ticket)
    refused = limiter.admit("local", "x", _req(client="key:K"))
    assert isinstance(refused, Refusal) and "llm.clients.key:K" in refused.reason
    # "*": each other client on its own
    assert isinstance(limiter.admit("local", "x", _req(client="alice")), Ticket)
    assert isinstance(limiter.admit("local", "x", _req(client="bob")), Ticket)
    assert isinstance(limiter.admit("local", "x", _req(client="alice")), Refusal)


def test_the_charges_survive_a_restart_through_the_usage_database(tmp_path: Path) -> None:
    Store(tmp_path / "state.db").close()  # the migrations
    clock = Clock()

    async def first_daemon() -> None:
        limiter = _limiter(clock, service=RateLimits(requests_per_minute=3))
        log = UsageLog(UsageDB(tmp_path / "state.db"), Prices({}), 90, limiter)
        done = limiter.admit("local", None, _req())
        assert isinstance(done, Ticket)
        done.settle(Usage(5, 5))
        assert isinstance(limiter.admit("local", None, _req()), Ticket)  # still running at the stop
        await log.close()

    async def second_daemon() -> Limiter:
        limiter = _limiter(clock, service=RateLimits(requests_per_minute=3))
        log = UsageLog(UsageDB(tmp_path / "state.db"), Prices({}), 90, limiter)
        log.start()
        await log.close()
        return limiter

    asyncio.run(first_daemon())
    clock.now += 30
    limiter = asyncio.run(second_daemon())
    assert isinstance(limiter.admit("local", None, _req()), Ticket)  # the third
    refused = limiter.admit("local", None, _req())
    assert isinstance(refused, Refusal) and refused.wait == 30.0
    clock.now += 31  # the previous daemon's two are out of the window
    assert isinstance(limiter.admit("local", None, _req()), Ticket)
    assert isinstance(limiter.admit("local", None, _req()), Ticket)
