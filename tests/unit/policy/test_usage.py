"""msting.policy.usage in process: prices (cached input apart, a cache hit free), the
times /v1/usage accepts, and rows written by the real batch writer to a real SQLite file,
then grouped."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
from pathlib import Path

import pytest

from msting.api.errors import InvalidRequest
from msting.api.events import Usage
from msting.config.policy import Price
from msting.daemon.store import Store
from msting.policy.usage import Prices, UsageDB, UsageLog, parse_since
from msting.providers.router import RequestEnded

PRICES = Prices({("lan", "m"): Price(input=2.0, output=10.0, cached_input=0.5), ("lan", "plain"): Price(input=1.0)})


def test_cost_prices_cached_prompt_tokens_apart_and_a_cache_hit_is_free() -> None:
    usage = Usage(prompt_tokens=1000, completion_tokens=100, cached_tokens=400)
    assert math.isclose(PRICES.cost("lan", "m", usage), (600 * 2 + 400 * 0.5 + 100 * 10) / 1e6)
    assert math.isclose(PRICES.cost("lan", "plain", usage), 1000 * 1.0 / 1e6)  # cached input at the input price
    assert PRICES.cost("lan", "m", usage, cache_hit=True) == 0.0
    assert PRICES.cost("local", "tiny", usage) == 0.0  # no price: 0


def test_since_takes_dates_times_unix_seconds_and_ages() -> None:
    now = 1_800_000_000.0
    assert parse_since("24h", now) == now - 86400
    assert parse_since("30m", now) == now - 1800
    assert parse_since("1700000000", now) == 1_700_000_000.0
    assert parse_since("2026-01-31", now) == dt.datetime(2026, 1, 31, tzinfo=dt.timezone.utc).timestamp()
    assert parse_since("2026-01-31T12:00:00+02:00", now) == dt.datetime(2026, 1, 31, 10, tzinfo=dt.timezone.utc).timestamp()
    assert parse_since(None, now) is None
    with pytest.raises(InvalidRequest):
        parse_since("yesterday", now)


def _ended(service: str, model: str, client: str | None, usage: Usage | None, error: BaseException | None = None) -> RequestEnded:
    return RequestEnded("generate", service, model, 0.05, error=error, usage=usage, client=client)


def test_rows_are_written_in_batches_and_grouped_with_totals(tmp_path: Path) -> None:
    db_path = tmp_path / "state.db"
    Store(db_path).close()

    async def run() -> tuple[dict, dict, list[dict]]:
        log = UsageLog(UsageDB(db_path), PRICES, 90)
        log.start()
        log.request_ended(_ended("lan", "m", "alice", Usage(100, 10)))
        log.request_ended(_ended("lan", "m", "bob", Usage(200, 20, 50)))
        log.request_ended(_ended("local", "tiny", None, None, error=InvalidRequest("x", "bad")))
        by_model = await log.totals("model", None, None)
        by_client = await log.totals("client", "1h", None)
        rows = log.db.rows()
        await log.close()
        return by_model, by_client, rows

    by_model, by_client, rows = asyncio.run(run())
    assert [(r["service"], r["model"], r["outcome"]) for r in rows] == [("lan", "m", "ok"), ("lan", "m", "ok"),
                                                                     ("local", "tiny", "invalid_request")]
    assert [g["key"] for g in by_model["groups"]] == ["lan~m", "local~tiny"]
    lan = by_model["groups"][0]
    assert (lan["requests"], lan["prompt_tokens"], lan["completion_tokens"], lan["cached_tokens"]) == (2, 300, 30, 50)
    assert math.isclose(lan["cost_usd"], sum(r["cost_usd"] for r in rows))
    assert by_model["totals"]["requests"] == 3 and by_model["totals"]["errors"] == 1
    assert {g["key"]: g["requests"] for g in by_client["groups"]} == {"": 1, "alice": 1, "bob": 1}
    with pytest.raises(InvalidRequest):
        asyncio.run(UsageLog(UsageDB(db_path), PRICES, 90).totals("colour", None, None))
