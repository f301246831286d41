"""The OpenAI-compatible API, driven by the real `openai` package against a real daemon."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import struct
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

pytestmark = pytest.mark.e2e

CHAT = [{"role": "system", "content": "You tell stories."}, {"role": "user", "content": "Tell me a story."}]


@pytest.fixture
def service(daemon_home):
    daemon_home.start()
    return daemon_home


def sync_client(dh, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{dh.url}/v1", api_key=kw.pop("api_key", "unused"), max_retries=0, **kw)


def socket_client(dh) -> openai.OpenAI:
    """The openai package over the Unix socket, through an httpx transport."""
    http = httpx.Client(transport=httpx.HTTPTransport(uds=str(dh.socket)))
    return openai.OpenAI(base_url="http://msting/v1", api_key="unused", http_client=http, max_retries=0)


def test_chat_completion_sync_over_tcp_and_socket(service):
    for client in (sync_client(service), socket_client(service)):
        reply = client.chat.completions.create(model="msting-tiny", messages=CHAT, max_tokens=12, temperature=0)
        assert reply.object == "chat.completion"
        assert reply.model == "msting-tiny"
        choice = reply.choices[0]
        assert choice.message.role == "assistant" and choice.message.content
        assert choice.finish_reason in ("stop", "length")
        assert 0 < reply.usage.completion_tokens <= 12
        assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_chat_finish_reason_length_and_stop(service):
    client = sync_client(service)
    reply = client.chat.completions.create(model="default", messages=CHAT, max_tokens=5, temperature=0)
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 5
    whole = client.completions.create(model="msting-tiny", prompt="Once upon a time", max_tokens=30, temperature=0).choices[0].text
    words = whole.split()
    assert len(words) > 3
    stop_word = words[2]
    cut = client.completions.create(model="msting-tiny", prompt="Once upon a time", max_tokens=30, temperature=0, stop=[stop_word])
    assert cut.choices[0].finish_reason == "stop"
    assert stop_word not in cut.choices[0].text
    assert whole.startswith(cut.choices[0].text)


def test_streaming_chat_with_usage_matches_non_streaming(service):
    client = sync_client(service)
    whole = client.chat.completions.create(model="msting-tiny", messages=CHAT, max_tokens=30, temperature=0, seed=3)
    chunks = list(client.chat.completions.create(model="msting-tiny", messages=CHAT, max_tokens=30, temperature=0, seed=3,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [whole.choices[0].finish_reason]
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1 and usage_chunks[0].choices == []
    assert usage_chunks[0].usage.completion_tokens == whole.usage.completion_tokens


def test_completions_stream_and_sse_ends_with_done(service):
    client = sync_client(service)
    chunks = list(client.completions.create(model="local~msting-tiny", prompt="Hello", max_tokens=10, stream=True))
    assert "".join(c.choices[0].text for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"
    with service.tcp_client() as c, c.stream("POST", "/v1/completions", json={"prompt": "Hi", "max_tokens": 3, "stream": True}) as r:
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"


def test_async_client(service):
    async def run():
        client = openai.AsyncOpenAI(base_url=f"{service.url}/v1", api_key="unused", max_retries=0)
        reply = await client.chat.completions.create(model="msting-tiny", messages=CHAT, max_tokens=8)
        pieces = []
        stream = await client.chat.completions.create(model="msting-tiny", messages=CHAT, max_tokens=8, stream=True)
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
        embedding = await client.embeddings.create(model="msting-tiny", input="hello")
        models = await client.models.list()
        await client.close()
        return reply, "".join(pieces), embedding, models

    reply, streamed, embedding, models = asyncio.run(run())
    assert reply.choices[0].message.content and streamed
    assert len(embedding.data) == 1
    assert [m.id for m in models.data] == ["msting-tiny"]


def test_embeddings_float_and_base64(service):
    client = sync_client(service)
    result = client.embeddings.create(model="msting-tiny", input=["the cat", "the dog", "the cat"], encoding_format="float")
    vectors = [d.embedding for d in result.data]
    assert [d.index for d in result.data] == [0, 1, 2]
    assert len({len(v) for v in vectors}) == 1 and len(vectors[0]) == 64  # msting-tiny's n_embd
    assert vectors[0] == vectors[2] and vectors[0] != vectors[1]
    assert math.isclose(math.sqrt(sum(x * x for x in vectors[0])), 1.0, rel_tol=1e-3)
    assert result.usage.prompt_tokens > 0
    with service.tcp_client() as c:
        raw = c.post("/v1/embeddings", json={"input": "the cat", "encoding_format": "base64"}).json()
    decoded = struct.unpack(f"<{len(vectors[0])}f", base64.b64decode(raw["data"][0]["embedding"]))
    assert all(math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6) for a, b in zip(decoded, vectors[0]))
    # the embedding worker is visible in status, beside the generating one
    models = service.status()["models"]
    assert {m["type"] for m in models} == {"llm", "embeddings"}


def test_stories_model_embeddings_are_pooled(daemon_home, stories_model_path):
    daemon_home.write_config({"llm": {"model": str(stories_model_path)}})
    daemon_home.start()
    result = sync_client(daemon_home).embeddings.create(model="stories260K", input=["Once upon a time", "Lily"])
    assert [len(d.embedding) for d in result.data] == [64, 64]  # one pooled vector per input


def test_models_list_and_get(service):
    client = sync_client(service)
    listed = client.models.list()
    assert [m.id for m in listed.data] == ["msting-tiny"]
    with service.tcp_client() as c:
        body = c.get("/v1/models").json()
        one = c.get("/v1/models/msting-tiny").json()
        also = c.get("/v1/models/local~msting-tiny").json()
    entry = body["data"][0]
    assert entry["state"] == "ready" and entry["type"] == "llm" and entry["context_length"] == 2048
    assert one["id"] == also["id"] == "msting-tiny"


def test_unknown_model_is_not_found_never_a_substitute(service):
    client = sync_client(service)
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-4o", messages=CHAT, max_tokens=3)
    assert "gpt-4o" in str(info.value)
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="remote~msting-tiny", prompt="x", max_tokens=3)
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="nope", input="x")


def test_malformed_bodies_and_unsupported_parameters_are_400(service):
    with service.tcp_client() as c:
        cases = [
            (b"{broken", "invalid_json"),
            (json.dumps({"messages": []}).encode(), "invalid_parameter"),
            (json.dumps({"messages": CHAT, "n": 2}).encode(), "invalid_parameter"),
            (json.dumps({"messages": CHAT, "logit_bias": {"1": 2}}).encode(), "invalid_parameter"),
            (json.dumps({"messages": CHAT, "tools": []}).encode(), "invalid_parameter"),
            (json.dumps({"messages": [{"role": "wizard", "content": "x"}]}).encode(), "invalid_parameter"),
            (json.dumps({"messages": CHAT, "temperature": "hot"}).encode(), "invalid_parameter"),
            (json.dumps({"messages": CHAT, "stream_options": {"include_usage": True}}).encode(), "invalid_parameter"),
        ]
        for body, code in cases:
            r = c.post("/v1/chat/completions", content=body)
            assert r.status_code == 400, (body, r.text)
            assert r.json()["error"]["code"] == code and r.json()["error"]["message"]
        r = c.post("/v1/embeddings", json={"input": [1, 2, 3]})
        assert r.status_code == 400 and "token arrays" in r.json()["error"]["message"]
        r = c.post("/v1/embeddings", json={"input": "x", "dimensions": 8})
        assert r.status_code == 400 and r.json()["error"]["param"] == "dimensions"
    client = sync_client(service)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="msting-tiny", messages=CHAT, logprobs=True)


def test_concurrent_streams_equal_the_single_request_output(daemon_home):
    daemon_home.write_config({"llm": {"replicas": 2}})
    daemon_home.start()
    assert len(daemon_home.worker_pids()) == 2
    client = sync_client(daemon_home)
    args = dict(model="msting-tiny", messages=CHAT, max_tokens=60, temperature=0)
    reference = client.chat.completions.create(**args).choices[0].message.content

    def one_stream(_):
        return "".join(c.choices[0].delta.content or "" for c in sync_client(daemon_home).chat.completions.create(stream=True, **args) if c.choices)

    with ThreadPoolExecutor(max_workers=6) as pool:
        outputs = list(pool.map(one_stream, range(6)))
    assert outputs == [reference] * 6


def test_cancelled_stream_frees_its_replica(service):
    def in_flight():
        return service.client().get("/v1/status").json()["models"][0]["in_flight"]

    client = sync_client(service)
    stream = client.chat.completions.create(model="msting-tiny", messages=CHAT, max_tokens=100000, stream=True)
    for i, _ in enumerate(stream):
        if i == 5:
            break
    assert in_flight() == 1
    stream.close()  # the client goes away mid-generation
    service.wait_for(lambda: in_flight() == 0, timeout=10, what="the generation to end")
    assert service.client().get("/v1/status").json()["models"][0]["requests_cancelled"] == 1
    # and the replica serves the next request at once
    reply = client.chat.completions.create(model="msting-tiny", messages=CHAT, max_tokens=4)
    assert reply.choices[0].message.content
    served = service.client().get("/v1/status").json()["models"][0]
    assert served["queue_depth"] == 0


def test_cancelled_non_streaming_request_frees_its_replica(service):
    import socket as socketlib

    def in_flight():
        return service.client().get("/v1/status").json()["models"][0]["in_flight"]

    body = json.dumps({"prompt": "Once", "max_tokens": 100000}).encode()
    raw = socketlib.socket(socketlib.AF_UNIX)
    raw.connect(str(service.socket))
    raw.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: msting\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    service.wait_for(lambda: in_flight() == 1, interval=0.005, what="the request to start")
    raw.close()  # the client goes away while the worker generates (the context holds ~2000 tokens: ~1 s)
    service.wait_for(lambda: in_flight() == 0, timeout=30, what="the abandoned generation to end")
    assert service.client().get("/v1/status").json()["models"][0]["requests_cancelled"] == 1


def test_stream_abandoned_while_queued_never_runs(daemon_home):
    import socket as socketlib

    # a long first request (seconds) in the worker's only slot, so the next one waits in the queue
    daemon_home.write_config({"llm": {"n_ctx": 8192, "parallel": 1}})
    daemon_home.start()

    def model():
        return daemon_home.client().get("/v1/status").json()["models"][0]

    def post(body: dict) -> socketlib.socket:
        data = json.dumps(body).encode()
        raw = socketlib.socket(socketlib.AF_UNIX)
        raw.connect(str(daemon_home.socket))
        raw.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: msting\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        return raw

    first = post({"prompt": "Once", "max_tokens": 100000})
    daemon_home.wait_for(lambda: model()["in_flight"] == 1, interval=0.005, what="the first request to start")
    queued = post({"prompt": "Once", "max_tokens": 100000, "stream": True})
    daemon_home.wait_for(lambda: model()["queue_depth"] == 1, interval=0.005, what="the stream to wait in the queue")
    queued.setblocking(False)
    with pytest.raises(BlockingIOError):  # not even the status line before the first token
        queued.recv(4096)
    queued.close()  # the client gives up while its request waits
    daemon_home.wait_for(lambda: model()["queue_depth"] == 0, timeout=10, interval=0.005,
                         what="the abandoned request to leave the queue")
    assert model()["in_flight"] == 1  # ... while the first request still runs: it never reached a worker
    first.close()
    daemon_home.wait_for(lambda: model()["in_flight"] == 0, timeout=30, what="the first request to end")
    m = model()
    # only the first request ever reached the worker (and was cancelled there)
    assert m["requests_served"] == 1 and m["requests_cancelled"] == 1


def test_execute_route(service):
    with service.tcp_client() as c:
        r = c.post("/v1/execute", json={"prompt": "Hello", "max_tokens": 5})
        assert r.status_code == 200 and r.json()["output"] and r.json()["usage"]["completion_tokens"] <= 5
        r = c.post("/v1/execute", json={"messages": CHAT, "max_tokens": 5})
        assert r.status_code == 200 and r.json()["output"]
        with c.stream("POST", "/v1/execute", json={"prompt": "Hello", "max_tokens": 5, "stream": True}) as resp:
            events = [line[7:] for line in resp.iter_lines() if line.startswith("event: ")]
        assert events[0] == "token" and events[-1] == "done"
        r = c.post("/v1/execute", json={"prompt": "a", "messages": CHAT})
        assert r.status_code == 400


def test_python_client_helper(service):
    from msting.client import MstingClient, MstingError

    with MstingClient(socket_path=service.socket) as client:
        assert client.status()["ready"] is True
        assert [m["id"] for m in client.models()] == ["msting-tiny"]
        reply = client.chat(CHAT, max_tokens=6, temperature=0)
        assert reply["choices"][0]["message"]["content"]
        vectors = client.embed(["a", "b"])
        assert len(vectors) == 2 and len(vectors[0]) == 64
        pieces = list(client.stream_generate("Hello", max_tokens=8, temperature=0))
        assert "".join(pieces) == client.generate("Hello", max_tokens=8, temperature=0)["text"]
        with pytest.raises(MstingError) as info:
            client.chat(CHAT, model="missing")
        assert info.value.status == 404
