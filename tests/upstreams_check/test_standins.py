"""The stand-in upstreams speak the real protocols: each is driven by the official client of its
protocol (the openai, anthropic and ollama packages), and every fault mode is observed on the
wire with httpx. A last test starts llama-cpp-python's own server (LlamaCppServer).

The stand-ins of one protocol are shared by the module's tests (`standin_module`); the
fixtures below reset them (models, fault, request log) before each test.
"""

from __future__ import annotations

import json
import time

import anthropic
import httpx
import ollama
import openai
import pytest
from upstreams.fixtures import StandIn, free_port

PROMPT = "Tell me about the quick brown fox"
WORDS = ["tell", "me", "about", "the", "quick", "brown", "fox"]


def echo(n: int) -> str:
    """The stand-ins' reply of `n` words to PROMPT."""
    return " ".join(WORDS[i % len(WORDS)] for i in range(n))


def _fresh(s: StandIn) -> StandIn:
    s.reset()
    return s


@pytest.fixture(scope="module")
def _openai(standin_module):
    return standin_module("openai", models=["gpt-standin", "embed-standin"])


@pytest.fixture(scope="module")
def _ollama(standin_module):
    return standin_module("ollama", models=["llama-standin", "nomic-standin:v1"])


@pytest.fixture(scope="module")
def _anthropic(standin_module):
    return standin_module("anthropic", models=["claude-standin"])


@pytest.fixture
def oa(_openai):
    return _fresh(_openai)


@pytest.fixture
def ol(_ollama):
    return _fresh(_ollama)


@pytest.fixture
def an(_anthropic):
    return _fresh(_anthropic)


def openai_client(s: StandIn, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=s.api_base, api_key=kw.pop("api_key", "unused"), max_retries=0, **kw)


def anthropic_client(s: StandIn, **kw) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=s.api_base, api_key=kw.pop("api_key", "sk-ant-unused"), max_retries=0, **kw)


def chat_body(stream: bool = False, **extra) -> dict:
    return {"model": "gpt-standin", "messages": [{"role": "user", "content": PROMPT}], "stream": stream, **extra}


def sse_data_lines(response: httpx.Response) -> list[str]:
    """The `data:` payloads of an SSE response read until it ends (or is cut: then the
    httpx error propagates after the lines read so far were collected into `.partial`)."""
    out: list[str] = []
    try:
        for line in response.iter_lines():
            if line.startswith("data: "):
                out.append(line[len("data: "):])
    except httpx.HTTPError as exc:
        exc.partial = out  # type: ignore[attr-defined]
        raise
    return out


# ------------------------------------------------------------------ OpenAI, official client
def test_openai_chat_completion(oa):
    client = openai_client(oa)
    reply = client.chat.completions.create(model="gpt-standin", messages=[{"role": "user", "content": PROMPT}], max_tokens=5)
    assert reply.object == "chat.completion" and reply.model == "gpt-standin"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == echo(5)
    assert reply.choices[0].finish_reason == "length"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (7, 5, 12)
    natural = client.chat.completions.create(model="gpt-standin", messages=[{"role": "user", "content": PROMPT}])
    assert natural.choices[0].message.content == echo(12) and natural.choices[0].finish_reason == "stop"
    stopped = client.chat.completions.create(model="gpt-standin", messages=[{"role": "user", "content": PROMPT}],
                                             stop=["quick"], max_tokens=50)
    assert stopped.choices[0].message.content == "tell me about the " and stopped.choices[0].finish_reason == "stop"
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert err.value.body["code"] == "model_not_found"


def test_openai_chat_stream_with_usage(oa):
    client = openai_client(oa)
    chunks = list(client.chat.completions.create(model="gpt-standin", messages=[{"role": "user", "content": PROMPT}],
                                                 max_tokens=4, stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == echo(4)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4 and chunks[-1].usage.prompt_tokens == 7
    assert all(c.usage is None for c in chunks[:-1])
    # on the wire: one data line per word, the finish chunk, the usage chunk, then [DONE]
    with httpx.stream("POST", oa.url + "/v1/chat/completions", json=chat_body(True, max_tokens=4)) as r:
        lines = sse_data_lines(r)
    assert r.headers["content-type"].startswith("text/event-stream")
    assert len(lines) == 4 + 1 + 1 and lines[-1] == "[DONE]"


def test_openai_completions(oa):
    client = openai_client(oa)
    done = client.completions.create(model="gpt-standin", prompt=PROMPT, max_tokens=3)
    assert done.object == "text_completion" and done.choices[0].text == echo(3) and done.choices[0].finish_reason == "length"
    assert done.usage.completion_tokens == 3
    streamed = list(client.completions.create(model="gpt-standin", prompt=PROMPT, max_tokens=6, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == echo(6)
    assert streamed[-1].choices[0].finish_reason == "length"
    two = client.completions.create(model="gpt-standin", prompt=["one", "two words"], max_tokens=2)
    assert [c.text for c in two.choices] == ["one one", "two words"]


def test_openai_embeddings(oa):
    client = openai_client(oa)
    # the package asks for base64 unless told otherwise, and decodes it
    default = client.embeddings.create(model="embed-standin", input=["alpha", "beta"])
    floats = client.embeddings.create(model="embed-standin", input=["alpha", "beta"], encoding_format="float")
    assert [len(d.embedding) for d in default.data] == [8, 8]
    for a, b in zip(default.data, floats.data):
        assert a.embedding == pytest.approx(b.embedding, abs=1e-6)
    assert default.data[0].embedding != default.data[1].embedding
    again = client.embeddings.create(model="embed-standin", input="alpha", encoding_format="float")
    assert again.data[0].embedding == floats.data[0].embedding
    assert sum(v * v for v in again.data[0].embedding) == pytest.approx(1.0, abs=1e-4)
    assert default.usage.prompt_tokens == 2
    assert len(client.embeddings.create(model="embed-standin", input="x", dimensions=16).data[0].embedding) == 16


def test_openai_models_and_api_key(oa, standin):
    assert sorted(m.id for m in openai_client(oa).models.list()) == ["embed-standin", "gpt-standin"]
    locked = standin("openai", api_key="sekret")
    with pytest.raises(openai.AuthenticationError) as err:
        openai_client(locked, api_key="wrong").models.list()
    assert err.value.body["code"] == "invalid_api_key"
    assert [m.id for m in openai_client(locked, api_key="sekret").models.list()] == ["standin"]
    log = locked.requests()
    assert [r["auth"] for r in log] == [True, True]
    assert "sekret" not in json.dumps(log) and "wrong" not in json.dumps(log)
    assert httpx.get(locked.url + "/v1/models").status_code == 401


# ------------------------------------------------------------------ Anthropic, official client
def test_anthropic_messages_create(an):
    client = anthropic_client(an)
    msg = client.messages.create(model="claude-standin", max_tokens=3, messages=[{"role": "user", "content": PROMPT}])
    assert msg.type == "message" and msg.role == "assistant" and msg.model == "claude-standin"
    assert [b.type for b in msg.content] == ["text"] and msg.content[0].text == echo(3)
    assert msg.stop_reason == "max_tokens" and msg.stop_sequence is None
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (7, 3)
    natural = client.messages.create(model="claude-standin", max_tokens=100, system="Be brief",
                                     messages=[{"role": "user", "content": [{"type": "text", "text": PROMPT}]}])
    assert natural.stop_reason == "end_turn" and natural.content[0].text == echo(12)
    assert natural.usage.input_tokens == 7 + 2  # the system prompt counts
    stopped = client.messages.create(model="claude-standin", max_tokens=100, stop_sequences=["brown"],
                                     messages=[{"role": "user", "content": PROMPT}])
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == "brown"
    assert stopped.content[0].text == "tell me about the quick "
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="claude-nope", max_tokens=5, messages=[{"role": "user", "content": "x"}])


def test_anthropic_messages_stream(an):
    client = anthropic_client(an)
    with client.messages.stream(model="claude-standin", max_tokens=5, messages=[{"role": "user", "content": PROMPT}]) as stream:
        deltas = list(stream.text_stream)
        final = stream.get_final_message()
    assert deltas == echo(5).replace(" ", "\0 ").split("\0")  # one text_delta per word
    assert final.content[0].text == echo(5)
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 5 and final.usage.input_tokens == 7
    # on the wire: the documented event sequence
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    body = {"model": "claude-standin", "max_tokens": 100, "stream": True, "messages": [{"role": "user", "content": "a b"}]}
    with httpx.stream("POST", an.url + "/v1/messages", json=body, headers=headers) as r:
        events = [line[len("event: "):] for line in r.iter_lines() if line.startswith("event: ")]
    assert events == ["message_start", "content_block_start", "ping", *["content_block_delta"] * 12,
                      "content_block_stop", "message_delta", "message_stop"]


def test_anthropic_models_list(an):
    an.set_models(add=["claude-second"])
    assert [m.id for m in anthropic_client(an).models.list()] == ["claude-standin", "claude-second"]
    assert anthropic_client(an).models.retrieve("claude-second").display_name == "claude-second"


def test_anthropic_rate_limit_with_retry_after(an):
    an.fault("status", status=429, retry_after=7, count=1)
    with pytest.raises(anthropic.RateLimitError) as err:
        anthropic_client(an).messages.create(model="claude-standin", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert err.value.response.headers["retry-after"] == "7"
    assert err.value.body["error"]["type"] == "rate_limit_error"
    assert len(an.requests("/v1/messages")) == 1  # max_retries=0: no retry
    # the count is used up: the next request is answered
    assert anthropic_client(an).messages.create(model="claude-standin", max_tokens=1,
                                                messages=[{"role": "user", "content": "x"}]).content[0].text == "x"


def test_anthropic_required_headers_and_fields(an):
    url = an.url + "/v1/messages"
    body = {"model": "claude-standin", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    no_key = httpx.post(url, json=body, headers={"anthropic-version": "2023-06-01"})
    assert no_key.status_code == 401
    assert no_key.json()["type"] == "error" and no_key.json()["error"]["type"] == "authentication_error"
    no_version = httpx.post(url, json=body, headers={"x-api-key": "k"})
    assert no_version.status_code == 400 and no_version.json()["error"]["type"] == "invalid_request_error"
    full = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    no_max = httpx.post(url, json={k: v for k, v in body.items() if k != "max_tokens"}, headers=full)
    assert no_max.status_code == 400 and "max_tokens" in no_max.json()["error"]["message"]
    assert httpx.post(url, json=body, headers=full).status_code == 200
    assert httpx.get(an.url + "/v1/models").status_code == 401


# ------------------------------------------------------------------ Ollama, official client
def test_ollama_chat_generate_embed(ol):
    client = ollama.Client(host=ol.url)
    chat = client.chat(model="llama-standin", messages=[{"role": "user", "content": PROMPT}], options={"num_predict": 4})
    assert chat.message.role == "assistant" and chat.message.content == echo(4)
    assert chat.done and chat.done_reason == "length" and chat.eval_count == 4 and chat.prompt_eval_count == 7
    parts = list(client.chat(model="llama-standin", messages=[{"role": "user", "content": PROMPT}], stream=True))
    assert "".join(p.message.content for p in parts) == echo(12)
    assert [p.done for p in parts] == [False] * 12 + [True] and parts[-1].done_reason == "stop"
    assert parts[-1].eval_count == 12 and parts[-1].total_duration > 0
    gen = client.generate(model="llama-standin", prompt=PROMPT, options={"stop": ["the"]})
    assert gen.response == "tell me about " and gen.done_reason == "stop"
    streamed = list(client.generate(model="llama-standin", prompt=PROMPT, stream=True, options={"num_predict": 2}))
    assert "".join(p.response for p in streamed) == echo(2) and streamed[-1].done_reason == "length"
    emb = client.embed(model="nomic-standin:v1", input=["alpha", "beta"])
    assert len(emb.embeddings) == 2 and len(emb.embeddings[0]) == 8 and emb.prompt_eval_count == 2
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model="no-such", messages=[{"role": "user", "content": "x"}])
    assert err.value.status_code == 404 and "not found" in err.value.error


def test_ollama_list_ps_show(ol):
    client = ollama.Client(host=ol.url)
    assert sorted(m.model for m in client.list().models) == ["llama-standin:latest", "nomic-standin:v1"]
    assert client.ps().models == []
    client.generate(model="llama-standin", prompt="hi")
    ps = client.ps().models
    assert [m.model for m in ps] == ["llama-standin:latest"] and ps[0].expires_at is not None
    shown = client.show("llama-standin")
    assert shown.details.format == "gguf" and "completion" in shown.capabilities and shown.modelinfo
    client.generate(model="llama-standin", prompt="", keep_alive=0)  # the empty request that unloads
    assert client.ps().models == []
    assert httpx.get(ol.url + "/").text == "Ollama is running"
    assert httpx.get(ol.url + "/api/version").json()["version"]


def test_ollama_stream_is_the_default(ol):
    with httpx.stream("POST", ol.url + "/api/chat", json={"model": "llama-standin", "messages": [{"role": "user", "content": "a"}],
                                                          "options": {"num_predict": 3}}) as r:
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert r.headers["content-type"].startswith("application/x-ndjson")
    assert [x["done"] for x in lines] == [False, False, False, True] and lines[-1]["done_reason"] == "length"


# ------------------------------------------------------------------ faults, seen with httpx
def test_status_fault_with_count_expiring(oa):
    oa.fault("status", status=500, count=2)
    first = httpx.post(oa.url + "/v1/chat/completions", json=chat_body())
    assert first.status_code == 500 and first.json()["error"]["type"] == "server_error"
    assert httpx.post(oa.url + "/v1/embeddings", json={"model": "embed-standin", "input": "x"}).status_code == 500
    assert oa.current_fault() is None
    assert httpx.post(oa.url + "/v1/chat/completions", json=chat_body()).status_code == 200
    assert [r["fault"] for r in oa.requests()] == ["status", "status", None]


def test_rate_limit_fault_sends_retry_after(oa, ol):
    oa.fault("status", status=429, retry_after=2)
    r = httpx.post(oa.url + "/v1/chat/completions", json=chat_body())
    assert r.status_code == 429 and r.headers["retry-after"] == "2" and r.json()["error"]["code"] == "rate_limit_exceeded"
    assert httpx.post(oa.url + "/v1/chat/completions", json=chat_body()).status_code == 429  # until cleared
    oa.clear()
    assert httpx.post(oa.url + "/v1/chat/completions", json=chat_body()).status_code == 200
    ol.fault("status", status=503, retry_after=1.5, message="overloaded")
    r = httpx.post(ol.url + "/api/chat", json={"model": "llama-standin", "messages": [], "stream": False})
    assert r.status_code == 503 and r.headers["retry-after"] == "1.5" and r.json() == {"error": "overloaded"}


def test_hang_fault_never_answers(oa):
    oa.fault("hang", count=1)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(oa.url + "/v1/chat/completions", json=chat_body(), timeout=httpx.Timeout(5, read=0.5))
    assert [r["fault"] for r in oa.requests()] == ["hang"]
    assert httpx.post(oa.url + "/v1/chat/completions", json=chat_body()).status_code == 200


def test_cut_fault_ends_streams_without_their_end_marker(oa, ol, an):
    oa.fault("cut", after_chunks=3)
    with pytest.raises(httpx.RemoteProtocolError) as err:
        with httpx.stream("POST", oa.url + "/v1/chat/completions", json=chat_body(True)) as r:
            assert r.status_code == 200
            sse_data_lines(r)
    assert len(err.value.partial) == 3 and "[DONE]" not in err.value.partial
    assert [json.loads(x)["choices"][0]["delta"]["content"] for x in err.value.partial] == ["tell", " me", " about"]
    # a reply that is not streamed: its headers promise the whole body, half of it comes
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(oa.url + "/v1/chat/completions", json=chat_body())

    ol.fault("cut", after_chunks=2, count=1)
    lines: list[str] = []
    with pytest.raises(httpx.RemoteProtocolError):
        with httpx.stream("POST", ol.url + "/api/generate", json={"model": "llama-standin", "prompt": PROMPT}) as r:
            for line in r.iter_lines():
                lines.append(line)
    assert [json.loads(x)["done"] for x in lines if x] == [False, False]

    an.fault("cut", after_chunks=1, count=1)
    events: list[str] = []
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    body = {"model": "claude-standin", "max_tokens": 50, "stream": True, "messages": [{"role": "user", "content": PROMPT}]}
    with pytest.raises(httpx.RemoteProtocolError):
        with httpx.stream("POST", an.url + "/v1/messages", json=body, headers=headers) as r:
            for line in r.iter_lines():
                if line.startswith("event: "):
                    events.append(line[len("event: "):])
    assert events == ["message_start", "content_block_start", "ping", "content_block_delta"]
    # the official client sees the broken stream as an error too (its transport's, mid-stream)
    an.fault("cut", after_chunks=2, count=1)
    with pytest.raises(Exception) as broken:
        with anthropic_client(an).messages.stream(model="claude-standin", max_tokens=50,
                                                  messages=[{"role": "user", "content": "x"}]) as stream:
            stream.get_final_message()
    assert isinstance(broken.value, anthropic.APIConnectionError) or "incomplete chunked read" in str(broken.value)


def test_slow_first_fault_delays_the_first_chunk(oa):
    delay = 0.6
    oa.fault("slow_first", delay=delay, count=2)
    t0 = time.monotonic()
    with httpx.stream("POST", oa.url + "/v1/chat/completions", json=chat_body(True, max_tokens=2)) as r:
        t_headers = time.monotonic()
        lines = (line for line in r.iter_lines() if line.startswith("data: "))
        first = next(lines)
        t_first = time.monotonic()
        rest = list(lines)
    assert json.loads(first[6:])["choices"][0]["delta"]["content"] == "tell" and rest[-1] == "data: [DONE]"
    assert t_first - t0 >= delay and t_headers < t_first
    t0 = time.monotonic()
    assert httpx.post(oa.url + "/v1/chat/completions", json=chat_body()).status_code == 200
    assert time.monotonic() - t0 >= delay


def test_drop_fault_closes_without_a_response(oa, ol):
    oa.fault("drop", count=1)
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(oa.url + "/v1/chat/completions", json=chat_body())
    assert oa.requests()[-1]["fault"] == "drop"
    ol.fault("drop", count=1)
    with pytest.raises(httpx.RemoteProtocolError):
        ollama.Client(host=ol.url).chat(model="llama-standin", messages=[{"role": "user", "content": "x"}])


def test_fault_paths_and_health_routes(oa):
    oa.fault("status", status=503)
    assert httpx.get(oa.url + "/v1/models").status_code == 200  # health routes are spared by default
    oa.fault("status", status=503, health=True)
    assert httpx.get(oa.url + "/v1/models").status_code == 503
    oa.fault("status", status=500, paths=["/v1/embeddings"])
    assert httpx.post(oa.url + "/v1/chat/completions", json=chat_body()).status_code == 200
    assert httpx.post(oa.url + "/v1/embeddings", json={"model": "embed-standin", "input": "x"}).status_code == 500
    bad = httpx.post(oa.url + "/_control/fault", json={"mode": "explode"})
    assert bad.status_code == 400 and "mode" in bad.json()["error"]


def test_models_change_live(oa, ol):
    client = openai_client(oa)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="fresh", messages=[{"role": "user", "content": "x"}])
    assert oa.set_models(add=["fresh"]) == ["gpt-standin", "embed-standin", "fresh"]
    assert "fresh" in [m.id for m in client.models.list()]
    assert client.chat.completions.create(model="fresh", messages=[{"role": "user", "content": "x"}]).choices
    oa.set_models(remove=["fresh"])
    assert "fresh" not in [m.id for m in client.models.list()]
    ol.set_models(add=["pulled"])
    assert "pulled:latest" in [m.model for m in ollama.Client(host=ol.url).list().models]


def test_request_log(oa):
    t0 = time.monotonic()
    httpx.post(oa.url + "/v1/chat/completions?x=1", json=chat_body(), headers={"Authorization": "Bearer secret-value"})
    httpx.get(oa.url + "/v1/models")
    t1 = time.monotonic()
    first, second = oa.requests()
    assert t0 <= first["monotonic"] <= second["monotonic"] <= t1  # one machine, one monotonic clock
    assert first["method"] == "POST" and first["path"] == "/v1/chat/completions" and first["query"] == "x=1"
    assert first["body"]["messages"][0]["content"] == PROMPT and first["auth"] is True and second["auth"] is False
    assert "secret-value" not in json.dumps(first) and "authorization" not in first["headers"]
    assert abs(first["time"] - time.time()) < 60
    assert oa.requests("/v1/models") == [second]
    oa.clear_requests()
    assert oa.requests() == []


def test_refused_killed_and_restarted(standin):
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{free_port()}/v1/models")
    s = standin("openai")
    port = s.port
    s.fault("status", status=500)
    s.kill()
    assert not s.alive
    with pytest.raises(httpx.ConnectError):
        httpx.get(s.url + "/v1/models")
    s.restart()
    assert s.port == port and s.current_fault() is None  # a fresh state on the same port
    assert httpx.get(s.url + "/v1/models").json()["data"][0]["id"] == "standin"


# ------------------------------------------------------------------ llama-cpp-python's own server
def test_llama_cpp_server_answers_a_chat_completion(llama_cpp_server):
    client = openai.OpenAI(base_url=llama_cpp_server.api_base, api_key="unused", max_retries=0)
    assert llama_cpp_server.model in [m.id for m in client.models.list()]
    reply = client.chat.completions.create(model=llama_cpp_server.model, messages=[{"role": "user", "content": "Once upon a time"}],
                                           max_tokens=8, temperature=0)
    assert reply.choices[0].message.role == "assistant"
    assert reply.usage.prompt_tokens > 0 and 0 < reply.usage.completion_tokens <= 8


# ------------------------------------------------------------------ tool calling, official clients
WEATHER = {"name": "get_weather", "description": "The weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}}
ARGS = {"city": "weather in paris", "days": 3}
ASK = [{"role": "user", "content": "Weather in Paris?"}]


def test_openai_tool_calls_and_their_stream(oa):
    client = openai_client(oa)
    tools = [{"type": "function", "function": WEATHER}]
    reply = client.chat.completions.create(model="gpt-standin", messages=ASK, tools=tools)
    [call] = reply.choices[0].message.tool_calls
    assert reply.choices[0].finish_reason == "tool_calls" and reply.choices[0].message.content is None
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == ARGS
    with client.chat.completions.stream(model="gpt-standin", messages=ASK, tools=tools) as stream:
        final = stream.get_final_completion()  # the SDK's own accumulation of the deltas
    streamed = final.choices[0].message.tool_calls[0]
    assert (streamed.id, streamed.function.name, streamed.function.arguments) == (call.id, "get_weather", call.function.arguments)
    chunks = list(client.chat.completions.create(model="gpt-standin", messages=ASK, tools=tools, stream=True))
    first = chunks[0].choices[0].delta.tool_calls[0]
    assert (first.index, first.id, first.function.name, first.function.arguments) == (0, call.id, "get_weather", "")
    assert all(c.choices[0].delta.tool_calls[0].id is None for c in chunks[1:-1])
    back = ASK + [reply.choices[0].message.model_dump(exclude_none=True), {"role": "tool", "tool_call_id": call.id, "content": "sunny and warm"}]
    answer = client.chat.completions.create(model="gpt-standin", messages=back, tools=tools)
    assert answer.choices[0].finish_reason == "stop" and answer.choices[0].message.content.startswith("sunny and warm")
    assert client.chat.completions.create(model="gpt-standin", messages=ASK, tools=tools, tool_choice="none").choices[0].message.content
    with pytest.raises(openai.BadRequestError, match="role 'tool'"):
        client.chat.completions.create(model="gpt-standin", messages=ASK + [{"role": "tool", "tool_call_id": "x", "content": "r"}])


def test_anthropic_tool_use_and_its_stream(an):
    client = anthropic_client(an)
    tools = [{"name": WEATHER["name"], "description": WEATHER["description"], "input_schema": WEATHER["parameters"]}]
    msg = client.messages.create(model="claude-standin", max_tokens=50, messages=ASK, tools=tools)
    [use] = msg.content
    assert msg.stop_reason == "tool_use" and use.type == "tool_use" and use.name == "get_weather" and use.input == ARGS
    with client.messages.stream(model="claude-standin", max_tokens=50, messages=ASK, tools=tools) as stream:
        final = stream.get_final_message()  # the SDK parses the input_json_delta pieces
    assert final.content[0].input == ARGS and final.content[0].id == use.id and final.stop_reason == "tool_use"
    back = ASK + [{"role": "assistant", "content": [use.model_dump()]},
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny and warm"}]}]
    answer = client.messages.create(model="claude-standin", max_tokens=50, messages=back, tools=tools)
    assert answer.stop_reason == "end_turn" and answer.content[0].text.startswith("sunny and warm")
    with pytest.raises(anthropic.BadRequestError, match="corresponding `tool_use`"):
        client.messages.create(model="claude-standin", max_tokens=50, tools=tools, messages=ASK + [
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_x", "content": "r"}]}])
    with pytest.raises(anthropic.BadRequestError, match="must define tools"):
        client.messages.create(model="claude-standin", max_tokens=50, messages=back)


def test_ollama_tool_calls(ol):
    client = ollama.Client(host=ol.url)
    tools = [{"type": "function", "function": WEATHER}]
    chat = client.chat(model="llama-standin", messages=ASK, tools=tools)
    [call] = chat.message.tool_calls
    assert call.function.name == "get_weather" and dict(call.function.arguments) == ARGS and chat.done_reason == "stop"
    parts = list(client.chat(model="llama-standin", messages=ASK, tools=tools, stream=True))
    assert [bool(p.message.tool_calls) for p in parts] == [True, False] and parts[-1].done
    back = ASK + [{"role": "assistant", "content": "", "tool_calls": [call.model_dump()]},
                  {"role": "tool", "content": "sunny and warm", "tool_name": "get_weather"}]
    assert client.chat(model="llama-standin", messages=back, tools=tools).message.content.startswith("sunny and warm")
