"""Rate limits, cost and usage, end to end: a real daemon in front of real stand-in
upstreams (tests/upstreams), driven through the unmodified `openai` package (its own
retries off, so each 429 is seen).

- exactness: 50 concurrent requests against a limit of 20 per minute: exactly 20 are
  answered (and reach the upstream), 30 are 429s with a Retry-After within the window;
- a service over its limit is passed over for the next of the fallback chain (generate
  and stream), the answering service named in X-Msting-Provider;
- the token limit counts the real usage of the answered requests, not their estimate;
- the window holds across a daemon restart: the 429's Retry-After counts from the
  previous daemon's requests, and a request that may wait is answered once, and only
  once, the window has room;
- cost: the sum of the rows in SQLite equals /v1/usage's total, which equals the prices
  applied to the usage each client saw; grouping by service, model, day and client;
- `msting llm usage` (--json and text).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import sqlite3
import time

import openai
import pytest
from central_service_kit import PROMPT, central_daemon, service, start_standins, work_requests
from daemon_home import DaemonHome

MODEL = "standin"
NO_WAIT = {"x-msting-max-wait": "0"}
PRICE = {"input": 2.0, "output": 10.0, "cached_input": 1.0}


@pytest.fixture(scope="module")
def ups():
    started = start_standins(("openai", {}), ("openai", {}))
    yield {"a": started[0], "b": started[1]}
    for s in started:
        s.close()


def _svc(up, **policy) -> dict:
    return {**service("openai", [up.api_base], default_model=MODEL), **policy}


@pytest.fixture(scope="module")
def dh(ups):
    services = {
        "exact": _svc(ups["a"], rate_limits={"requests_per_minute": 20}),
        "first": _svc(ups["a"], rate_limits={"requests_per_minute": 3}),
        "second": _svc(ups["b"]),
        "tokens": _svc(ups["a"], rate_limits={"tokens_per_minute": 40}),
        "priced": _svc(ups["b"], per_model={MODEL: {"price": PRICE}}),
    }
    with central_daemon(services, fallback_chain=["first", "second"], label="limits") as home:
        yield home


def sdk(home: DaemonHome) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{home.url}/v1", api_key="unused", max_retries=0, timeout=60)


def _chat(client: openai.OpenAI, model: str, headers: dict | None = None, **kw):
    return client.chat.completions.with_raw_response.create(model=model, messages=[{"role": "user", "content": PROMPT}],
                                                            extra_headers=headers or NO_WAIT, **kw)


def _usage(home: DaemonHome, **params) -> dict:
    with home.client(timeout=30) as c:
        r = c.get("/v1/usage", params=params)
    assert r.status_code == 200, r.text
    return r.json()


def _group(report: dict, key: str) -> dict:
    return next(g for g in report["groups"] if g["key"] == key)


def test_fifty_concurrent_requests_against_twenty_per_minute_are_twenty_answers_and_thirty_429s(dh, ups):
    before = len(work_requests(ups["a"]))

    async def burst() -> list:
        client = openai.AsyncOpenAI(base_url=f"{dh.url}/v1", api_key="unused", max_retries=0, timeout=60)
        async with client:
            async def one():
                try:
                    return await client.chat.completions.create(model="exact~standin", extra_headers=NO_WAIT,
                                                                messages=[{"role": "user", "content": PROMPT}])
                except openai.RateLimitError as exc:
                    return exc
            return await asyncio.gather(*(one() for _ in range(50)))

    results = asyncio.run(burst())
    answered = [r for r in results if not isinstance(r, openai.RateLimitError)]
    refused = [r for r in results if isinstance(r, openai.RateLimitError)]
    assert len(answered) == 20 and len(refused) == 30
    assert all(r.choices[0].message.content for r in answered)
    for exc in refused:
        assert exc.status_code == 429 and exc.code == "rate_limit_exceeded", exc
        assert "20 requests per minute" in exc.message and "llm.services.exact.rate_limits" in exc.message
        assert 1 <= int(exc.response.headers["retry-after"]) <= 60
    assert len(work_requests(ups["a"])) - before == 20  # the refused never reached the upstream
    group = _group(_usage(dh, group_by="service"), "exact")
    assert group["requests"] == 50 and group["errors"] == 30


def test_a_service_over_its_limit_passes_the_request_to_the_next_of_the_chain(dh):
    client = sdk(dh)
    providers = [_chat(client, "first~standin").headers["x-msting-provider"] for _ in range(5)]
    assert providers == ["first"] * 3 + ["second"] * 2
    stream = client.chat.completions.with_raw_response.create(
        model="first~standin", messages=[{"role": "user", "content": PROMPT}], stream=True, extra_headers=NO_WAIT)
    assert stream.headers["x-msting-provider"] == "second"
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream.parse() if chunk.choices)
    report = _usage(dh, group_by="service")
    assert _group(report, "second")["fallbacks"] == 3  # each answer of second passed over first


def test_the_token_limit_counts_the_real_usage_of_the_answered_requests(dh):
    client = sdk(dh)
    real = 0
    for _ in range(2):
        usage = _chat(client, "tokens~standin").parse().usage
        real += usage.prompt_tokens + usage.completion_tokens
    # The prompt (7 words, 49 characters with the chat's overhead) is estimated at 13
    # tokens, then less as the real counts come in: at their estimates three requests
    # would fit in 40 tokens; at their real usage (7 prompt and 12 completion tokens
    # each) the third does not.
    assert real == 2 * (7 + 12)
    with pytest.raises(openai.RateLimitError) as caught:
        _chat(client, "tokens~standin")
    assert "40 tokens per minute" in caught.value.message
    assert 1 <= int(caught.value.response.headers["retry-after"]) <= 60


def test_cost_sums_equal_the_rows_and_the_prices_of_what_clients_saw(dh):
    client = sdk(dh)
    seen = []
    for i in range(3):
        seen.append(_chat(client, "priced~standin", headers={"x-msting-client": "alice"}).parse().usage)
    stream = client.chat.completions.create(model="priced~standin", messages=[{"role": "user", "content": PROMPT}], stream=True,
                                            stream_options={"include_usage": True}, extra_headers={"x-msting-client": "bob"})
    seen += [chunk.usage for chunk in stream if chunk.usage is not None]
    assert len(seen) == 4
    expected = sum(u.prompt_tokens * PRICE["input"] + u.completion_tokens * PRICE["output"] for u in seen) / 1e6
    assert expected > 0

    report = _usage(dh, group_by="model")
    group = _group(report, "priced~standin")
    with _state_db(dh) as db:
        rows = db.execute("SELECT cost_usd, prompt_tokens, completion_tokens, client, outcome FROM usage "
                          "WHERE service = 'priced'").fetchall()
    assert len(rows) == 4 and all(r[4] == "ok" for r in rows)
    assert math.isclose(sum(r[0] for r in rows), group["cost_usd"], rel_tol=1e-9)
    assert math.isclose(group["cost_usd"], expected, rel_tol=1e-9)
    assert group["prompt_tokens"] == sum(u.prompt_tokens for u in seen)
    assert group["completion_tokens"] == sum(u.completion_tokens for u in seen)
    assert math.isclose(report["totals"]["cost_usd"], sum(g["cost_usd"] for g in report["groups"]), rel_tol=1e-9)
    assert report["totals"]["requests"] == sum(g["requests"] for g in report["groups"])

    clients = _usage(dh, group_by="client")
    assert _group(clients, "alice")["requests"] == 3 and _group(clients, "bob")["requests"] == 1
    today = dt.datetime.now(dt.timezone.utc).date().isoformat()
    days = _usage(dh, group_by="day")
    assert [g["key"] for g in days["groups"]] == [today] and days["totals"] == report["totals"]
    assert _usage(dh, group_by="model", since="1h")["totals"] == report["totals"]
    assert _usage(dh, group_by="service", since=str(time.time() + 3600))["groups"] == []
    with dh.client() as c:
        bad = c.get("/v1/usage", params={"group_by": "colour"})
        metrics = c.get("/metrics").text
    assert bad.status_code == 400 and "group_by" in bad.json()["error"]["message"]
    line = next(x for x in metrics.splitlines() if x.startswith('msting_cost_usd_total{service="priced"'))
    assert math.isclose(float(line.split()[-1]), expected, rel_tol=1e-9)


def _state_db(home: DaemonHome) -> sqlite3.Connection:
    found = sorted(home.home.rglob("state.db"))
    assert found, "no state.db under the daemon's home"
    return sqlite3.connect(found[0])


def test_msting_llm_usage_prints_the_same_totals(dh):
    report, _ = dh.cli_json("llm", "usage", "--json", "--group-by", "model")
    assert report == _usage(dh, group_by="model")
    text = dh.cli("llm", "usage", "--group-by", "service", check=True).stdout
    assert "exact" in text and "priced" in text and "total" in text
    bad = dh.cli("llm", "usage", "--group-by", "colour")
    assert bad.returncode == 2 and "colour" in bad.stderr


def test_the_window_holds_across_a_restart_and_a_waiting_request_is_answered_when_it_has_room(ups):
    home = DaemonHome(label="limits-restart")
    home.write_config({"llm": {"services": {"slow": _svc(ups["a"], rate_limits={"requests_per_minute": 2})},
                               "rate_limit_max_wait_sec": 90}})
    try:
        home.start()
        client = sdk(home)
        first_at = time.monotonic()
        for _ in range(2):
            _chat(client, "slow~standin")
        home.cli("llm", "stop", "--timeout", "30", check=True)
        home.start()  # the same home: its state database, with the window's charges
        client = sdk(home)
        with pytest.raises(openai.RateLimitError) as caught:
            _chat(client, "slow~standin")
        retry_after = int(caught.value.response.headers["retry-after"])
        since_first = time.monotonic() - first_at
        # honest: the previous daemon's first request leaves the window 60 s after it came
        assert 60 - since_first - 1 <= retry_after <= 60 - since_first + 2
        asked = time.monotonic()
        answer = _chat(client, "slow~standin", headers={"x-msting-max-wait": "90"})
        assert answer.parse().choices[0].message.content
        assert time.monotonic() - first_at >= 60 - 0.5  # not before the window had room
        assert time.monotonic() - asked >= retry_after - 1.5
    finally:
        home.cleanup()


def test_a_client_limit_counts_the_api_key_and_its_labels_and_the_key_is_never_recorded(ups):
    secret = "s3cret-key-never-stored"
    home = DaemonHome(label="limits-clients")
    home.write_config({"llm": {"services": {"svc": _svc(ups["b"])},
                               "clients": {"key:LLM_API_KEY": {"rate_limits": {"requests_per_minute": 2}}}}})
    home.env["LLM_API_KEY"] = secret
    try:
        home.start()
        client = openai.OpenAI(base_url=f"{home.url}/v1", api_key=secret, max_retries=0, timeout=60)
        _chat(client, "svc~standin")
        _chat(client, "svc~standin", headers={**NO_WAIT, "x-msting-client": "batch"})
        with pytest.raises(openai.RateLimitError) as caught:  # the key's window, whatever the label
            _chat(client, "svc~standin", headers={**NO_WAIT, "x-msting-client": "other"})
        assert "llm.clients.key:LLM_API_KEY.rate_limits" in caught.value.message
        with home.client() as c:  # the Unix socket: no key, so not the key's client
            r = c.post("/v1/chat/completions", json={"model": "svc~standin", "messages": [{"role": "user", "content": PROMPT}]},
                       headers=NO_WAIT)
            assert r.status_code == 200, r.text
            report = c.get("/v1/usage", params={"group_by": "client"})
        assert {g["key"]: g["requests"] for g in report.json()["groups"]} == {
            "": 1, "key:LLM_API_KEY": 1, "key:LLM_API_KEY/batch": 1, "key:LLM_API_KEY/other": 1}
        assert secret not in report.text
        with _state_db(home) as db:
            assert not db.execute("SELECT count(*) FROM usage WHERE client LIKE ?", (f"%{secret}%",)).fetchone()[0]
            assert not db.execute("SELECT count(*) FROM rate_charges WHERE key LIKE ?", (f"%{secret}%",)).fetchone()[0]
            assert db.execute("SELECT count(*) FROM rate_charges WHERE key = 'client:key:LLM_API_KEY'").fetchone()[0] == 2
    finally:
        home.cleanup()
