"""The WebSocket route: streamed generations, cancel, status pushes, bad messages."""

from __future__ import annotations

import json

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect, unix_connect

pytestmark = pytest.mark.e2e


def _until(ws, predicate, limit=5000):
    seen = []
    for _ in range(limit):
        msg = json.loads(ws.recv(timeout=30))
        seen.append(msg)
        if predicate(msg):
            return seen
    raise AssertionError(f"no matching message in {limit}: {seen[-5:]}")


def test_generate_stream_matches_http(daemon_home):
    daemon_home.start()
    body = {"prompt": "Once upon a time", "max_tokens": 20, "temperature": 0}
    with daemon_home.client() as c:
        reference = c.post("/generate", json=body).json()["text"]
    with unix_connect(str(daemon_home.socket), uri="ws://localhost/v1/ws") as ws:
        ws.send(json.dumps({"type": "generate", "id": "g1", **body}))
        seen = _until(ws, lambda m: m["type"] in ("done", "error"))
    assert seen[-1]["type"] == "done" and seen[-1]["usage"]["completion_tokens"] == 20
    assert "".join(m["text"] for m in seen if m["type"] == "token") == reference


def test_status_pushes_and_cancel(daemon_home):
    daemon_home.start()
    with connect(f"ws://127.0.0.1:{daemon_home.port}/v1/ws") as ws:
        ws.send(json.dumps({"type": "subscribe", "topics": ["status"]}))
        first = _until(ws, lambda m: m["type"] == "status")[-1]
        assert first["readiness"]["status"] == "ready" and first["models"][0]["name"] == "msting-tiny"
        ws.send(json.dumps({"type": "generate", "id": "long", "prompt": "Once", "max_tokens": 100000}))
        _until(ws, lambda m: m["type"] == "status" and m["models"][0]["in_flight"] == 1)
        ws.send(json.dumps({"type": "cancel", "id": "long"}))
        seen = _until(ws, lambda m: m["type"] == "done" and m["id"] == "long")
        assert seen[-1]["finish_reason"] == "cancelled"
        _until(ws, lambda m: m["type"] == "status" and m["models"][0]["in_flight"] == 0)


def test_bad_messages_get_errors_and_the_connection_survives(daemon_home):
    daemon_home.start()
    with unix_connect(str(daemon_home.socket), uri="ws://localhost/v1/ws") as ws:
        for raw, code in [("not json", "invalid_json"), ("[1]", "invalid_body"), ('{"type": "fly"}', "invalid_body"),
                          ('{"type": "generate", "id": "x", "prompt": "a", "bogus": 1}', "invalid_parameter"),
                          ('{"type": "generate", "id": "y", "prompt": "a", "model": "nope"}', "model_not_found")]:
            ws.send(raw)
            msg = json.loads(ws.recv(timeout=10))
            assert msg["type"] == "error" and msg["error"]["code"] == code, (raw, msg)
        ws.send(json.dumps({"type": "generate", "id": "ok", "prompt": "Hi", "max_tokens": 3}))
        assert _until(ws, lambda m: m["type"] in ("done", "error"))[-1]["type"] == "done"


def _stop_and_read_until_closed(daemon_home, ws, graceful: float) -> tuple[list[dict], int | None]:
    """`msting llm stop`, which must finish in less than half the graceful-shutdown
    timeout; then the messages the connection still got, and the close code it got."""
    stop = daemon_home.cli("llm", "stop", "--timeout", str(graceful * 2), timeout=graceful * 3)
    assert stop.returncode == 0, stop.stderr
    assert stop.wall_sec < graceful / 2, (stop.wall_sec, daemon_home.log_tail())
    seen = []
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            seen.append(json.loads(ws.recv(timeout=10)))
    return seen, closed.value.rcvd.code if closed.value.rcvd is not None else None


def test_stop_closes_open_websockets_with_going_away(daemon_home):
    """An open connection (a status subscription and a generation running on it) gets
    close code 1001 on `msting llm stop`, after its generation ended as an HTTP stream's
    does (the worker finishes the request in its slot), and does not hold the stop for
    the HTTP server's graceful-shutdown timeout."""
    graceful = 30
    daemon_home.write_config({"llm_service": {"stop_timeout_sec": graceful, "drain_grace_sec": 1}})
    daemon_home.start()
    with connect(f"ws://127.0.0.1:{daemon_home.port}/v1/ws") as ws:
        ws.send(json.dumps({"type": "subscribe", "topics": ["status"]}))
        ws.send(json.dumps({"type": "generate", "id": "long", "prompt": "Once", "max_tokens": 100000}))
        _until(ws, lambda m: m["type"] == "status" and m["models"][0]["in_flight"] == 1)
        seen, code = _stop_and_read_until_closed(daemon_home, ws, graceful)
    ended = [m for m in seen if m.get("id") == "long" and m["type"] in ("done", "error")]
    assert len(ended) == 1 and ended[0]["type"] == "done" and ended[0]["finish_reason"] == "length", seen[-3:]
    assert code == 1001


def test_stop_ends_a_remote_generation_with_shutting_down_then_closes_with_going_away(daemon_home):
    """A generation on a remote service (a stand-in streaming a token a second) is not
    drained by the local workers' stop: the daemon ends it with an `error` shutting_down,
    then closes the connection with 1001, well within the graceful-shutdown timeout."""
    from central_service_kit import service
    from upstreams.fixtures import StandIn

    graceful = 30
    slow = StandIn.start("openai", models=["m"], token_delay=1.0)
    try:
        daemon_home.write_config({"llm_service": {"stop_timeout_sec": graceful, "drain_grace_sec": 1},
                                  "llm": {"services": {"far": service("openai", [slow.url], default_model="m")}}})
        daemon_home.start()
        with unix_connect(str(daemon_home.socket), uri="ws://localhost/v1/ws") as ws:
            ws.send(json.dumps({"type": "generate", "id": "far", "model": "far~m", "prompt": "Once", "max_tokens": 500}))
            _until(ws, lambda m: m["type"] == "token" and m["id"] == "far")
            seen, code = _stop_and_read_until_closed(daemon_home, ws, graceful)
    finally:
        slow.close()
    ended = [m for m in seen if m["type"] in ("done", "error")]
    assert len(ended) == 1 and ended[0]["type"] == "error" and ended[0]["error"]["code"] == "shutting_down", seen[-3:]
    assert code == 1001
