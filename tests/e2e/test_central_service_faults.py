"""The central service under upstream faults, against real servers: an upstream SIGKILLed
under continuous load, Retry-After, the circuit breaker, two URLs sharing the load,
discovery of models added and removed upstream; and a stream an upstream ends with a
bare [DONE] (no finish_reason), as llama-cpp-python's server ends one it interrupts, is
never presented as complete.

One msting daemon (its own temporary MSTING_HOME) fronts OpenAI-format stand-ins
(tests/upstreams); each scenario has its own service and stand-ins, so the module's
daemon and stand-ins are shared and the tests do not depend on each other's order.
Run with -s to see the measured figures.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from central_service_kit import (
    BareDoneServer,
    chat_body,
    central_daemon,
    poll,
    read_stream,
    service,
    services_of,
    start_standins,
    url_state,
    work_requests,
)

pytestmark = pytest.mark.e2e

CHAT_PATH = "/v1/chat/completions"


@pytest.fixture(scope="module")
def ups():
    names = ["k1", "k2", "ra", "brk", "lb1", "lb2", "disc"]
    specs = [("openai", {"models": ["m"], "token_delay": 0.02 if n in ("k1", "k2") else 0.0}) for n in names]
    specs[names.index("disc")] = ("openai", {"models": ["base"]})
    started = start_standins(*specs)
    yield dict(zip(names, started))
    for s in started:
        s.close()


@pytest.fixture(scope="module")
def bare():
    server = BareDoneServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def central(ups, bare):
    services = {
        # breaker_failures 2, a long cooldown: a killed URL stays out once it failed twice
        "kill": service("openai", [ups["k1"].url, ups["k2"].url], default_model="m", breaker_failures=2, breaker_cooldown_sec=30),
        # the 429's Retry-After (2 s) is within first_token_timeout_sec: the request waits for it
        "ra": service("openai", [ups["ra"].url], default_model="m"),
        # one attempt per request: each failed request is one failure of the URL
        "brk": service("openai", [ups["brk"].url], default_model="m", max_attempts=1, breaker_failures=3,
                       breaker_cooldown_sec=3, first_token_timeout_sec=1),
        "lb": service("openai", [ups["lb1"].url, ups["lb2"].url], default_model="m"),
        "disc": service("openai", [ups["disc"].url], health_interval_sec=0.3),
        "bare": service("openai", [bare.url], default_model="m", max_attempts=2, health_interval_sec=600),
    }
    with central_daemon(services, label="central-faults") as dh:
        yield dh


@pytest.fixture
def fresh(ups):
    for s in ups.values():
        if s.alive:
            s.reset()
    return ups


# ---- 1. an upstream killed under continuous load ----------------------------------------


def test_an_upstream_killed_under_load_fails_no_request_and_truncates_no_stream(central, fresh):
    k1, k2 = fresh["k1"], fresh["k2"]
    workers, duration = 4, 6.0
    results: list[dict] = []
    lock = threading.Lock()
    t0 = time.monotonic()
    stop_at = t0 + duration

    def worker(i: int) -> None:
        with central.client(timeout=30) as c:
            n = 0
            while time.monotonic() < stop_at:
                stream = (n + i) % 2 == 1  # two workers stream while two do not, then they swap
                started = time.monotonic()
                body = chat_body("kill~m", max_tokens=12)
                if stream:
                    r = read_stream(c, CHAT_PATH, body)
                    entry = {"stream": True, "status": r.status, "outcome": r.outcome, "problem": r.problem,
                             "error": r.error, "upstream": r.headers.get("x-msting-upstream"), "text": r.text}
                else:
                    try:
                        resp = c.post(CHAT_PATH, json=body)
                        ok = resp.status_code == 200 and bool(resp.json()["choices"][0]["message"]["content"])
                        entry = {"stream": False, "status": resp.status_code, "outcome": "ok" if ok else "failed",
                                 "upstream": resp.headers.get("x-msting-upstream"), "body": resp.text[:500]}
                    except Exception as exc:  # noqa: BLE001 - a failed request, counted
                        entry = {"stream": False, "status": 0, "outcome": "failed", "upstream": None, "body": repr(exc)}
                entry.update(started=started, ended=time.monotonic())
                with lock:
                    results.append(entry)
                n += 1

    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(worker, i) for i in range(workers)]
        time.sleep(duration / 3)
        # SIGKILL k1 while msting has a request in flight to it
        in_flight = poll(lambda: url_state(central, "kill", k1.url)["in_flight"], timeout=5, what="a request in flight to k1",
                         interval=0.005)
        k1.kill()
        killed_at = time.monotonic()
        for f in futures:
            f.result()

    non_stream = [r for r in results if not r["stream"]]
    streams = [r for r in results if r["stream"]]
    failed = [r for r in non_stream if r["outcome"] != "ok"]
    complete = [r for r in streams if r["outcome"] == "complete"]
    error_events = [r for r in streams if r["outcome"] == "error_event"]
    broken = [r for r in streams if r["outcome"] not in ("complete", "error_event")]
    served = {"k1": sum(1 for r in results if r["upstream"] == k1.url), "k2": sum(1 for r in results if r["upstream"] == k2.url)}
    after_kill_on_k1 = [r for r in results if r["started"] > killed_at and r["upstream"] == k1.url]
    figures = (f"killed k1 at {killed_at - t0:.2f}s with {in_flight} request(s) in flight to it; "
               f"{len(non_stream)} non-streamed requests, {len(failed)} failed; {len(streams)} streams: "
               f"{len(complete)} complete, {len(error_events)} ended with an error event, {len(broken)} truncated or "
               f"refused; answered by k1 {served['k1']}, k2 {served['k2']}")
    print(f"\n[killed upstream] {figures}")
    assert not failed, f"{figures}; failed: {failed[:3]}"
    assert not broken, f"{figures}; truncated: {broken[:3]}"
    for r in error_events:  # only a stream already under way on k1 may end this way, and it says so
        assert r["upstream"] == k1.url and r["started"] < killed_at, r
        assert r["error"]["code"] == "upstream_stream_broken" and r["error"]["message"], r
    assert served["k1"] and served["k2"], figures
    assert not after_kill_on_k1, after_kill_on_k1[:3]
    assert url_state(central, "kill", k1.url)["state"] in ("down", "cooling_down")
    assert url_state(central, "kill", k2.url)["state"] == "up"


# ---- 2. Retry-After ------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
def test_retry_after_is_respected(central, fresh, stream):
    ra = fresh["ra"]
    ra.fault("status", status=429, retry_after=2, count=1)
    with central.client(timeout=30) as c:
        if stream:
            r = read_stream(c, CHAT_PATH, chat_body("ra~m", max_tokens=5))
            assert r.outcome == "complete" and r.text, r
            headers = r.headers
        else:
            resp = c.post(CHAT_PATH, json=chat_body("ra~m", max_tokens=5))
            assert resp.status_code == 200, resp.text
            assert resp.json()["choices"][0]["message"]["content"]
            headers = resp.headers
    assert headers["x-msting-provider"] == "ra" and headers["x-msting-attempts"] == "2"
    log = work_requests(ra)
    assert [r["fault"] for r in log] == ["status", None], log
    gap = log[1]["monotonic"] - log[0]["monotonic"]
    print(f"\n[Retry-After: 2, {'stream' if stream else 'non-stream'}] the retry reached the upstream {gap:.3f}s after the 429")
    assert gap >= 2.0, f"the retry came {gap:.3f}s after the 429 that said Retry-After: 2"


# ---- 3. the circuit breaker -------------------------------------------------------------


def test_the_breaker_opens_and_recovers(central, fresh):
    b = fresh["brk"]
    poll(lambda: url_state(central, "brk", b.url)["state"] == "up", timeout=10, what="brk up")
    failures = services_of(central)["brk"]["urls"][0]
    b.fault("status", status=500)
    with central.client(timeout=30) as c:
        for _ in range(3):  # breaker_failures
            resp = c.post(CHAT_PATH, json=chat_body("brk~m", max_tokens=5))
            assert resp.status_code == 502 and "HTTP 500" in resp.json()["error"]["message"], resp.text
        state = url_state(central, "brk", b.url)
        print(f"\n[breaker] after 3 failed requests: {state['state']} for {state['cooling_until'] - time.time():.1f}s more "
              f"({state['reason']})")
        assert state["state"] == "cooling_down" and state["cooling_until"] > time.time(), state
        assert state["failed"] >= failures["failed"] + 3 and "HTTP 500" in state["last_error"], state
        # while it cools down the upstream gets nothing: the request is refused at once
        seen = len(work_requests(b))
        resp = c.post(CHAT_PATH, json=chat_body("brk~m", max_tokens=5))
        assert resp.status_code == 503 and "cooling down" in resp.json()["error"]["message"], resp.text
        assert resp.headers.get("retry-after"), resp.headers
        assert len(work_requests(b)) == seen
        b.clear()
        poll(lambda: url_state(central, "brk", b.url)["state"] != "cooling_down", timeout=15, what="the cooldown to pass")
        resp = c.post(CHAT_PATH, json=chat_body("brk~m", max_tokens=5))
        assert resp.status_code == 200 and resp.headers["x-msting-upstream"] == b.url, resp.text
    assert url_state(central, "brk", b.url)["state"] == "up"
    assert services_of(central)["brk"]["status"] == "ready"


# ---- 4. two URLs share the load ---------------------------------------------------------


def test_two_urls_share_the_load(central, fresh):
    l1, l2 = fresh["lb1"], fresh["lb2"]
    statuses = []
    with central.client(timeout=30) as c:
        for i in range(20):  # sequential, streamed and not
            if i % 2:
                statuses.append(read_stream(c, CHAT_PATH, chat_body("lb~m", max_tokens=5)).outcome)
            else:
                statuses.append(c.post(CHAT_PATH, json=chat_body("lb~m", max_tokens=5)).status_code)

    def one(i: int):
        with central.client(timeout=30) as c:
            if i % 2:
                return read_stream(c, CHAT_PATH, chat_body("lb~m", max_tokens=5)).outcome
            return c.post(CHAT_PATH, json=chat_body("lb~m", max_tokens=5)).status_code

    with ThreadPoolExecutor(5) as pool:  # concurrent
        statuses += list(pool.map(one, range(20)))
    assert all(s in (200, "complete") for s in statuses), statuses
    n1, n2 = len(work_requests(l1)), len(work_requests(l2))
    share = f"lb1 {n1} ({n1 / 40:.0%}), lb2 {n2} ({n2 / 40:.0%}) of 40 requests"
    print(f"\n[load share] {share}")
    assert n1 + n2 == 40, share
    assert n1 >= 10 and n2 >= 10, share


# ---- 5. discovery -----------------------------------------------------------------------


def _listed(central) -> set[str]:
    with central.client(timeout=10) as c:
        return {m["id"] for m in c.get("/v1/models").json()["data"]}


def test_discovery_sees_models_added_and_removed_upstream(central, fresh):
    d = fresh["disc"]
    poll(lambda: "disc~base" in _listed(central), timeout=10, what="disc~base listed")
    assert "disc~fresh" not in _listed(central)
    d.set_models(add=["fresh"])
    poll(lambda: "disc~fresh" in _listed(central), timeout=10, what="disc~fresh listed")
    with central.client(timeout=30) as c:
        model = c.get("/v1/models/disc~fresh").json()
        assert model["service"] == "disc" and model["upstream"] == "fresh", model
        resp = c.post(CHAT_PATH, json=chat_body("disc~fresh", max_tokens=5))
        assert resp.status_code == 200 and resp.json()["model"] == "disc~fresh", resp.text
        assert work_requests(d)[-1]["body"]["model"] == "fresh"
        d.set_models(remove=["fresh"])
        poll(lambda: "disc~fresh" not in _listed(central), timeout=10, what="disc~fresh gone")
        assert "disc~base" in _listed(central)
        resp = c.post(CHAT_PATH, json=chat_body("disc~fresh", max_tokens=5))
        assert resp.status_code == 404 and "fresh" in resp.json()["error"]["message"], resp.text


# ---- a stream that ends with a bare [DONE] --------------------------------------------------


def test_a_stream_ended_by_a_bare_done_is_not_presented_as_complete(central, bare):
    with central.client(timeout=30) as c:
        stream = read_stream(c, CHAT_PATH, chat_body("bare~m", max_tokens=50))
        resp = c.post(CHAT_PATH, json=chat_body("bare~m", max_tokens=50))
    print(f"\n[bare DONE] stream: {stream.outcome}, finish_reason {stream.finish_reason!r}, text {stream.text!r}; "
          f"non-stream: {resp.status_code} {resp.text[:200]}")
    assert stream.outcome == "error_event", stream  # the content came: it cannot fail over any more
    assert resp.status_code == 502, resp.text  # retried whole, then given up: not half a reply as a whole one
