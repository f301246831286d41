"""Usage and cost: one row per request in SQLite, the totals of /v1/usage, and the cost
counters of /metrics.

`UsageLog` is one of the Router's observers (msting.providers.router.RequestObserver):
each `request_ended` makes one row (time, client, service, model, kind, prompt,
completion and cached tokens, cost, latency, time to first token, cache hit, outcome,
fallbacks taken, route) and appends it to a list; nothing else happens on the request's
path. A task writes the rows in one transaction every FLUSH_SEC (sooner past
FLUSH_ROWS), with the rate limits' settled charges, from a thread with its own SQLite
connection (the file is in WAL mode, so it never blocks the daemon's other writes);
rows older than `llm.usage.retention_days` are deleted once an hour.

Cost: `Prices` holds the price per million tokens of each service's models
(`per_model.<model>.price`; a model without one costs 0): the prompt tokens not served
from a cache at the input price, the cached ones at the cached-input price (the input
price when none is given), the completion tokens at the output price. A response-cache
hit costs nothing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from msting.api.errors import InvalidRequest
from msting.api.events import Usage
from msting.config.policy import Price
from msting.daemon.metrics.exposition import escape, header, number
from msting.daemon.metrics.requests import outcome_of
from msting.policy.limits import WINDOW_SEC, Limiter
from msting.providers.router import RequestEnded

log = logging.getLogger("msting.policy.usage")

FLUSH_SEC = 0.5
FLUSH_ROWS = 500
PRUNE_EVERY_SEC = 3600.0
GROUPS = {  # group_by -> the SQL expression of a row's group
    "service": "service",
    "model": "service || '~' || model",
    "day": "date(at, 'unixepoch')",
    "client": "coalesce(client, '')",
}
MAX_MODELS_PER_SERVICE = 256  # cost series per service in /metrics (beyond: "(other)")
COST = "msting_cost_usd_total"
CACHE_HITS = "msting_cache_hits_total"
CACHED = "msting_cached_prompt_tokens_total"
ROW_COLUMNS = ("at", "client", "service", "model", "kind", "prompt_tokens", "completion_tokens", "cached_tokens", "cost_usd",
               "latency_ms", "ttft_ms", "cache_hit", "outcome", "fallbacks", "route")
_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class Prices:
    """The price of each (service, model), from config.yaml's `llm` section."""

    def __init__(self, prices: dict[tuple[str, str], Price]):
        self.prices = {key: p for key, p in prices.items() if p.input or p.output or p.cached_input}

    @classmethod
    def from_config(cls, llm) -> Prices:
        prices = {("local", m.name): m.price for m in llm.local.per_model}
        for svc in llm.services:
            prices.update({(svc.name, m.name): m.price for m in svc.per_model})
        return cls(prices)

    def cost(self, service: str | None, model: str | None, usage: Usage | None, *, cache_hit: bool = False) -> float:
        if cache_hit or usage is None or service is None:
            return 0.0
        price = self.prices.get((service, model or ""))
        if price is None:
            return 0.0
        cached = min(usage.cached_tokens, usage.prompt_tokens)
        cached_price = price.input if price.cached_input is None else price.cached_input
        return ((usage.prompt_tokens - cached) * price.input + cached * cached_price
                + usage.completion_tokens * price.output) / 1_000_000


def parse_since(raw: str | None, now: float) -> float | None:
    """`since`/`until` of /v1/usage as Unix time: an ISO 8601 date or date and time (UTC
    unless it names an offset), Unix seconds, or an age such as 30m, 24h, 7d."""
    if raw is None or raw == "":
        return None
    text = raw.strip()
    m = _RELATIVE.fullmatch(text)
    if m:
        return now - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest("invalid_parameter", f"{raw!r} is not a time: give an ISO 8601 date or date and time "
                             "(2026-01-31, 2026-01-31T12:00:00Z), Unix seconds, or an age such as 30m, 24h or 7d",
                             param="since") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.timestamp()


class UsageDB:
    """The usage rows and the rate limits' charges in the daemon's state database, on a
    connection of their own used from one thread at a time (the lock)."""

    def __init__(self, path: Path):
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA busy_timeout=5000")
        self._lock = threading.Lock()

    def write(self, rows: list[tuple], charges: list[tuple[str, float, int]], charges_before: float) -> None:
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                if rows:
                    db.executemany(f"INSERT INTO usage ({', '.join(ROW_COLUMNS)}) VALUES ({', '.join('?' * len(ROW_COLUMNS))})", rows)
                if charges:
                    db.executemany("INSERT INTO rate_charges (key, at, tokens) VALUES (?, ?, ?)", charges)
                db.execute("DELETE FROM rate_charges WHERE at <= ?", (charges_before,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def prune(self, before: float) -> int:
        with self._lock:
            return self._db.execute("DELETE FROM usage WHERE at < ?", (before,)).rowcount

    def charges_since(self, since: float) -> list[tuple[str, float, int]]:
        with self._lock:
            return self._db.execute("SELECT key, at, tokens FROM rate_charges WHERE at > ? ORDER BY at", (since,)).fetchall()

    def totals(self, group_by: str, since: float | None, until: float | None) -> list[dict]:
        expr = GROUPS[group_by]
        where, args = [], []
        if since is not None:
            where.append("at >= ?")
            args.append(since)
        if until is not None:
            where.append("at < ?")
            args.append(until)
        sql = (f"SELECT {expr} AS key, count(*), sum(prompt_tokens), sum(completion_tokens), sum(cached_tokens), sum(cost_usd), "
               "sum(cache_hit), sum(outcome != 'ok'), sum(fallbacks), avg(latency_ms), avg(ttft_ms) FROM usage"
               + (f" WHERE {' AND '.join(where)}" if where else "") + " GROUP BY key ORDER BY key")
        with self._lock:
            found = self._db.execute(sql, args).fetchall()
        return [{"key": key, "requests": n, "prompt_tokens": p or 0, "completion_tokens": c or 0, "cached_tokens": ct or 0,
                 "cost_usd": round(cost or 0.0, 9), "cache_hits": hits or 0, "errors": errors or 0, "fallbacks": fb or 0,
                 "avg_latency_ms": round(lat, 1) if lat is not None else None, "avg_ttft_ms": round(ttft, 1) if ttft is not None else None}
                for key, n, p, c, ct, cost, hits, errors, fb, lat, ttft in found]

    def rows(self, since: float | None = None) -> list[dict]:
        """Every row (oldest first), for tests and exports."""
        with self._lock:
            cursor = self._db.execute(f"SELECT {', '.join(ROW_COLUMNS)} FROM usage WHERE at >= ? ORDER BY id", (since or 0.0,))
            return [dict(zip(ROW_COLUMNS, r)) for r in cursor.fetchall()]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class UsageLog:
    """The Router's usage observer, its batched writer, the /v1/usage queries and the
    cost counters of /metrics."""

    def __init__(self, db: UsageDB, prices: Prices, retention_days: float, limiter: Limiter | None = None):
        self.db = db
        self.prices = prices
        self.retention_sec = retention_days * 86400
        self.limiter = limiter
        self._rows: list[tuple] = []
        self._counters: dict[tuple[str, str], list] = {}  # (service, model) -> [cost, cache hits, cached tokens]
        self._models: dict[str, int] = {}
        self._text: str | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._pruned = 0.0

    # ---- the observer ------------------------------------------------------------------

    def request_ended(self, ended: RequestEnded) -> None:
        usage = ended.usage
        cost = self.prices.cost(ended.service, ended.model, usage, cache_hit=ended.cache_hit)
        ttft = ended.first_token_sec
        self._rows.append((time.time() - ended.seconds, ended.client, ended.service or "", ended.model or "", ended.kind,
                           usage.prompt_tokens if usage else 0, usage.completion_tokens if usage else 0,
                           usage.cached_tokens if usage else 0, cost, ended.seconds * 1000,
                           ttft * 1000 if ttft is not None else None, int(ended.cache_hit), outcome_of(ended), ended.fallbacks,
                           ended.route))
        if ended.service is not None and (cost or ended.cache_hit or usage is not None and usage.cached_tokens):
            counter = self._counter(ended.service, ended.model or "default")
            counter[0] += cost
            counter[1] += int(ended.cache_hit)
            counter[2] += usage.cached_tokens if usage else 0
            self._text = None
        if len(self._rows) >= FLUSH_ROWS:
            self._wake.set()

    def _counter(self, service: str, model: str) -> list:
        found = self._counters.get((service, model))
        if found is None:
            if self._models.get(service, 0) >= MAX_MODELS_PER_SERVICE:
                model = "(other)"
                found = self._counters.get((service, model))
            if found is None:
                found = self._counters[(service, model)] = [0.0, 0, 0]
                self._models[service] = self._models.get(service, 0) + 1
        return found

    # ---- writing -----------------------------------------------------------------------

    def start(self) -> None:
        """Bring back the rate limits' charges still in the window, then write in the
        background."""
        if self.limiter is not None:
            kept = self.limiter.restore(self.db.charges_since(self.limiter.wall() - WINDOW_SEC))
            if kept:
                log.info("rate limits: %d requests of the last minute counted from before the restart", kept)
        self._task = asyncio.get_running_loop().create_task(self._writer(), name="usage writer")

    async def _writer(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), FLUSH_SEC)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.flush()
            except sqlite3.Error as exc:  # the rows are kept for the next try
                log.warning("usage rows not written yet: %s", exc)

    async def flush(self, *, final: bool = False) -> None:
        rows, self._rows = self._rows, []
        charges: list[tuple[str, float, int]] = []
        if self.limiter is not None:
            charges = self.limiter.unsettled() if final else self.limiter.settled()
        if not rows and not charges and time.time() - self._pruned < PRUNE_EVERY_SEC:
            return
        now = time.time()
        wall = self.limiter.wall() if self.limiter is not None else now
        try:
            await asyncio.to_thread(self.db.write, rows, charges, wall - WINDOW_SEC)
        except BaseException:
            self._rows[:0] = rows
            raise
        if now - self._pruned >= PRUNE_EVERY_SEC:
            self._pruned = now
            await asyncio.to_thread(self.db.prune, now - self.retention_sec)

    async def close(self) -> None:
        """Write what is left (the charges of requests still running too), then stop."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        await self.flush(final=True)
        self.db.close()

    # ---- reading -----------------------------------------------------------------------

    async def totals(self, group_by: str, since: str | None, until: str | None) -> dict[str, Any]:
        """GET /v1/usage: the rows since `since` (and before `until`) grouped, with totals."""
        if group_by not in GROUPS:
            raise InvalidRequest("invalid_parameter", f"group_by must be one of {', '.join(GROUPS)}, got {group_by!r}",
                                 param="group_by")
        now = time.time()
        start, end = parse_since(since, now), parse_since(until, now)
        await self.flush()  # what ended before this question is in the answer
        groups = await asyncio.to_thread(self.db.totals, group_by, start, end)
        totals = {k: sum(g[k] for g in groups) for k in ("requests", "prompt_tokens", "completion_tokens", "cached_tokens",
                                                         "cache_hits", "errors", "fallbacks")}
        totals["cost_usd"] = round(sum(g["cost_usd"] for g in groups), 9)
        return {"object": "usage", "group_by": group_by, "since": start, "until": end, "groups": groups, "totals": totals}

    # ---- /metrics ----------------------------------------------------------------------

    def text(self) -> str:
        if self._text is None:
            lines = [header(COST, "counter", "US dollars the answered requests cost, at the configured prices.")]
            items = sorted(self._counters.items())
            lines += [f'{COST}{{service="{escape(s)}",model="{escape(m)}"}} {number(c[0])}\n' for (s, m), c in items]
            lines.append(header(CACHE_HITS, "counter", "Requests answered from the response cache."))
            lines += [f'{CACHE_HITS}{{service="{escape(s)}",model="{escape(m)}"}} {c[1]}\n' for (s, m), c in items]
            lines.append(header(CACHED, "counter", "Prompt tokens served from a prompt cache (priced as cached input)."))
            lines += [f'{CACHED}{{service="{escape(s)}",model="{escape(m)}"}} {c[2]}\n' for (s, m), c in items]
            self._text = "".join(lines)
        return self._text
