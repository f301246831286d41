"""The fallback chain against real servers: when every service fails, the client gets a
clear error naming each attempt (an HTTP error status for a stream too, never a 200 with
nothing); with the stub at the end of the chain the stub answers, plainly marked; a stream
fails over invisibly before its first content, and a stream cut after it ends with an
explicit error event (the openai SDK raises), never a clean end.

Two msting daemons, each with its own temporary MSTING_HOME: one whose chain ends without
the stub, one whose chain ends with it. The dead services are a port nothing listens on
and a stand-in answering 500 to every generation request.
"""

from __future__ import annotations

import openai
import pytest
from central_service_kit import CHAT, central_daemon, chat_body, read_stream, refused_url, service, start_standins, work_requests

from msting.providers.stub import STUB_MARK

pytestmark = pytest.mark.e2e

CHAT_PATH = "/v1/chat/completions"


@pytest.fixture(scope="module")
def ups():
    names = ["ffa", "ffb", "dead500"]
    started = start_standins(*[("openai", {"models": ["m"]}) for _ in names])
    standins = dict(zip(names, started))
    standins["dead500"].fault("status", status=500)  # every generation request, for the whole module
    yield standins
    for s in started:
        s.close()


def _dead_services(ups, refused: str) -> dict:
    return {
        # its health check finds it down; a long cooldown: no probe request during the module (a probe that
        # failed would leave it cooling down, and the next request would wait for that)
        "dead_a": service("openai", [refused], default_model="m", breaker_cooldown_sec=120, first_token_timeout_sec=1),
        # many failures allowed: every request really reaches it (and fails) instead of meeting an open circuit
        "dead_b": service("openai", [ups["dead500"].url], default_model="m", breaker_failures=1000),
    }


@pytest.fixture(scope="module")
def refused():
    return refused_url()


@pytest.fixture(scope="module")
def no_stub(ups, refused):
    """Chain [ffa, ffb, dead_a, dead_b]: no stub at its end."""
    services = {
        # one attempt, a short first-token timeout: a stalled ffa hands the request to ffb within a second
        "ffa": service("openai", [ups["ffa"].url], default_model="m", max_attempts=1, first_token_timeout_sec=1,
                       breaker_failures=1000),
        "ffb": service("openai", [ups["ffb"].url], default_model="m"),
        **_dead_services(ups, refused),
    }
    with central_daemon(services, fallback_chain=["ffa", "ffb", "dead_a", "dead_b"], label="chain-no-stub",
                        wait_services=["ffa", "ffb", "dead_b"]) as dh:
        dh.wait_for(lambda: _state(dh, "dead_a") == "down", what="dead_a down")
        yield dh


@pytest.fixture(scope="module")
def with_stub(ups, refused):
    """Chain [dead_a, dead_b, stub]."""
    with central_daemon(_dead_services(ups, refused), fallback_chain=["dead_a", "dead_b", "stub"], label="chain-stub",
                        wait_services=["dead_b"]) as dh:
        dh.wait_for(lambda: _state(dh, "dead_a") == "down", what="dead_a down")
        yield dh


@pytest.fixture
def fresh(ups):
    for name in ("ffa", "ffb"):
        ups[name].reset()
    ups["dead500"].clear_requests()
    return ups


def _state(dh, name: str) -> str:
    with dh.client(timeout=10) as c:
        return c.get(f"/llm/services/{name}").json()["urls"][0]["state"]


def sdk(dh) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{dh.url}/v1", api_key="unused", max_retries=0, timeout=30)


# ---- 6. the whole chain fails --------------------------------------------------------


def _check_all_failed(body: dict, ups, refused: str) -> None:
    error = body["error"]
    assert error["code"] == "all_services_failed", error
    assert "dead_a" in error["message"] and "dead_b" in error["message"], error
    attempts = error["attempts"]
    assert attempts[0]["service"] == "dead_a" and {a["service"] for a in attempts} == {"dead_a", "dead_b"}, attempts
    urls = {"dead_a": refused, "dead_b": ups["dead500"].url}
    for a in attempts:
        assert a["url"] == urls[a["service"]] and a["error"], a
    assert any("HTTP 500" in a["error"] for a in attempts if a["service"] == "dead_b"), attempts
    assert any("connect" in a["error"] for a in attempts if a["service"] == "dead_a"), attempts


def test_the_whole_chain_failing_is_a_clear_error_naming_each_attempt(no_stub, fresh, refused):
    with no_stub.client(timeout=30) as c:
        resp = c.post(CHAT_PATH, json=chat_body("dead_a~m", max_tokens=5))
        assert resp.status_code in (502, 503), resp.text
        assert resp.headers["content-type"].startswith("application/json")
        _check_all_failed(resp.json(), fresh, refused)
        stream = read_stream(c, CHAT_PATH, chat_body("dead_a~m", max_tokens=5))
        assert stream.outcome == "http_error" and stream.status in (502, 503), stream
        assert stream.headers["content-type"].startswith("application/json"), stream.headers
        _check_all_failed(stream.body, fresh, refused)
    print(f"\n[whole chain failed] non-stream HTTP {resp.status_code}, stream HTTP {stream.status}; attempts: "
          + "; ".join(f"{a['service']} {a['url']}: {a['error'][:60]}" for a in resp.json()["error"]["attempts"]))
    assert len(work_requests(fresh["dead500"])) == 2 * 3  # max_attempts on dead_b, for each request
    # the official client sees an HTTP error at once, for a stream as for a plain request
    for stream in (False, True):
        with pytest.raises(openai.APIStatusError) as info:
            reply = sdk(no_stub).chat.completions.create(model="dead_a~m", messages=CHAT, max_tokens=5, stream=stream)
            list(reply) if stream else None
        assert info.value.status_code in (502, 503)
        assert info.value.body["code"] == "all_services_failed" and len(info.value.body["attempts"]) >= 2


def test_with_the_stub_at_the_end_of_the_chain_the_stub_answers(with_stub, fresh):
    with with_stub.client(timeout=30) as c:
        resp = c.post(CHAT_PATH, json=chat_body("dead_a~m", max_tokens=30))
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-msting-provider"] == "stub" and "x-msting-upstream" not in resp.headers
        assert int(resp.headers["x-msting-attempts"]) >= 3  # dead_a (not tried: down), dead_b's attempts, the stub
        reply = resp.json()
        assert reply["model"] == "stub~stub" and reply["choices"][0]["message"]["content"].startswith(STUB_MARK), reply
        stream = read_stream(c, CHAT_PATH, chat_body("dead_a~m", max_tokens=30))
        assert stream.outcome == "complete" and stream.headers["x-msting-provider"] == "stub", stream
        assert stream.text == reply["choices"][0]["message"]["content"]
        assert {ch["model"] for ch in stream.chunks} == {"stub~stub"}
    assert work_requests(fresh["dead500"]), "dead_b was skipped"
    chunks = list(sdk(with_stub).chat.completions.create(model="dead_a~m", messages=CHAT, max_tokens=30, stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices).startswith(STUB_MARK)


# ---- 8. a stream fails over before its first content; cut after it, it says so -----------


def _reference(dh) -> str:
    """ffb's reply, asked directly."""
    with dh.client(timeout=30) as c:
        resp = c.post(CHAT_PATH, json=chat_body("ffb~m", max_tokens=8))
    assert resp.status_code == 200, resp.text
    return resp.json()["choices"][0]["message"]["content"]


FAULTS = {
    "slow_first": {"delay": 3},  # past ffa's first_token_timeout_sec (1)
    "drop": {},
    "status": {"status": 503},
}


@pytest.mark.parametrize("mode", list(FAULTS))
def test_a_stream_fails_over_invisibly_before_its_first_content(no_stub, fresh, mode):
    expected = _reference(no_stub)
    fresh["ffb"].clear_requests()
    fresh["ffa"].fault(mode, **FAULTS[mode])
    with no_stub.client(timeout=30) as c:
        stream = read_stream(c, CHAT_PATH, chat_body("ffa~m", max_tokens=8))
    print(f"\n[fail over, {mode}] outcome {stream.outcome}, answered by {stream.headers.get('x-msting-provider')} "
          f"after {stream.headers.get('x-msting-attempts')} attempts, text {stream.text!r}")
    assert stream.outcome == "complete" and stream.text == expected, stream
    assert stream.headers["x-msting-provider"] == "ffb" and stream.headers["x-msting-attempts"] == "2", stream.headers
    assert {ch["model"] for ch in stream.chunks} == {"ffb~m"}
    assert sum(1 for ch in stream.chunks for choice in ch["choices"] if choice.get("finish_reason")) == 1
    assert [r["fault"] for r in work_requests(fresh["ffa"])] == [mode]
    # the same through the official client: one normal stream
    chunks = list(sdk(no_stub).chat.completions.create(model="ffa~m", messages=CHAT, max_tokens=8, stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == expected
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason] == ["length"]
    assert len(work_requests(fresh["ffb"])) == 2


def test_a_stream_cut_after_its_first_content_ends_with_an_error_event(no_stub, fresh):
    expected = _reference(no_stub)
    ffa, ffb = fresh["ffa"], fresh["ffb"]
    ffb.clear_requests()
    ffa.fault("cut", after_chunks=3, count=1)
    with no_stub.client(timeout=30) as c:
        stream = read_stream(c, CHAT_PATH, chat_body("ffa~m", max_tokens=8))
    print(f"\n[cut after content] outcome {stream.outcome}, text {stream.text!r}, error {stream.error}")
    assert stream.outcome == "error_event", stream
    assert stream.headers["x-msting-provider"] == "ffa" and stream.finish_reason is None
    assert stream.text == " ".join(expected.split()[:3]), stream.text  # what came before the cut, nothing invented
    assert stream.error["code"] == "upstream_stream_broken" and stream.error["message"], stream.error
    # the official client raises instead of ending the stream as if it were complete
    ffa.fault("cut", after_chunks=3, count=1)
    pieces = []
    with pytest.raises(openai.APIError, match="cut short"):
        for ch in sdk(no_stub).chat.completions.create(model="ffa~m", messages=CHAT, max_tokens=8, stream=True):
            pieces.extend(choice.delta.content or "" for choice in ch.choices)
    assert "".join(pieces) == " ".join(expected.split()[:3])
    assert not work_requests(ffb), "a stream already under way failed over"
    # a reply that is not streamed is retried whole: the client never sees half of it
    ffa.fault("cut", after_chunks=3, count=1)
    with no_stub.client(timeout=30) as c:
        resp = c.post(CHAT_PATH, json=chat_body("ffa~m", max_tokens=8))
    assert resp.status_code == 200 and resp.json()["choices"][0]["message"]["content"] == expected, resp.text
    assert resp.headers["x-msting-provider"] == "ffb" and resp.headers["x-msting-attempts"] == "2"
