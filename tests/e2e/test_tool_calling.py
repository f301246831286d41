"""Tool calling end to end, through the unmodified `openai` package: a real daemon fronting
the three remote API kinds (stand-ins of OpenAI, Anthropic and Ollama: real local HTTP
servers speaking each documented protocol, each answering tools with a deterministic call
and streaming it as that API streams it), its own worker (msting-tiny) and the stub.

A full round trip through each service, streamed and not: a request with tools gets
tool_calls, the tool's result is sent back, the final answer reads it. The daemon's own
workers and the stub do not do tool calling: a 400 naming service and model, never an
answer without the tools; the fallback chain passes over the stub. The profile's `tools`
route sends a tools request to the openai service while a plain request stays local, and
`msting llm route --explain` says so; the response cache keys on the tools.
"""

from __future__ import annotations

import json

import openai
import pytest
import yaml
from central_service_kit import FAST_UPSTREAM, start_standins, work_requests
from daemon_home import DaemonHome

pytestmark = pytest.mark.e2e

SERVICES = {"oa": ("openai", "gpt-standin"), "an": ("anthropic", "claude-standin"), "ol": ("ollama", "llama-standin")}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CLOCK = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
ASK = [{"role": "user", "content": "Weather in Paris"}]
RESULT = "sunny and twenty degrees"


@pytest.fixture(scope="module")
def daemon():
    standins = start_standins(*((api, {"models": [model], "api_key": "k" if api == "anthropic" else None})
                                for api, model in SERVICES.values()))
    dh = DaemonHome(label="tools")
    try:
        folder = dh.home / "config" / "profiles"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "default.yaml").write_text(yaml.safe_dump({
            "default_model": "tiny",
            "models": {"tiny": {"source": "builtin:tiny", "n_ctx": 512, "parallel": 1}},
            "routes": {"tools": {"to": "oa~gpt-standin", "tools": True}},
            "cache": {"enabled": True, "ttl_sec": 600, "max_entries": 100},
        }, sort_keys=False))
        services = {name: {"api_format": api, "urls": [s.url], "default_model": model, "upstream": FAST_UPSTREAM,
                           **({"api_key_env_var": "MSTING_TOOLS_TEST_KEY"} if api == "anthropic" else {})}
                    for (name, (api, model)), s in zip(SERVICES.items(), standins)}
        dh.write_config({"llm": {"services": services, "fallback_chain": ["oa", "stub", "an"]}})
        dh.env["MSTING_TOOLS_TEST_KEY"] = "k"
        dh.start()
        dh.upstreams = dict(zip(SERVICES, standins))
        yield dh
    finally:
        dh.cleanup()
        for s in standins:
            s.close()


def sdk(dh) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{dh.url}/v1", api_key="unused", max_retries=0, timeout=60)


def streamed(client: openai.OpenAI, **kw):
    """A streamed chat read to its end: (text, tool calls assembled from the deltas as a client
    does, finish reasons, the chunks)."""
    chunks = list(client.chat.completions.create(stream=True, **kw))
    text, calls = "", {}
    for c in chunks:
        if not c.choices:
            continue
        delta = c.choices[0].delta
        text += delta.content or ""
        for d in delta.tool_calls or []:
            call = calls.setdefault(d.index, {"id": None, "name": "", "arguments": ""})
            if d.id:
                assert call["id"] is None, "a call's id comes once, in its first delta"
                call["id"] = d.id
            if d.function and d.function.name:
                call["name"] += d.function.name
            if d.function and d.function.arguments:
                call["arguments"] += d.function.arguments
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    return text, [calls[i] for i in sorted(calls)], finishes, chunks


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("name", list(SERVICES))
def test_a_tool_round_trip_through_each_kind_of_service(daemon, name, stream):
    client, model = sdk(daemon), f"{name}~{SERVICES[name][1]}"
    upstream = daemon.upstreams[name]
    upstream.clear_requests()
    ask = dict(model=model, messages=ASK, tools=[WEATHER, CLOCK], max_tokens=32)
    if stream:
        text, calls, finishes, chunks = streamed(client, **ask)
        assert text == "" and finishes == ["tool_calls"] and {c.model for c in chunks} == {model}
        [call] = calls
        call_id, arguments = call["id"], call["arguments"]
        assert call["name"] == "get_weather"
        assert sum(1 for c in chunks if c.choices and c.choices[0].delta.tool_calls) >= 2  # id and name, then arguments
    else:
        reply = client.chat.completions.create(**ask)
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None and reply.usage.prompt_tokens > 0
        [call] = choice.message.tool_calls
        assert call.type == "function" and call.function.name == "get_weather"
        call_id, arguments = call.id, call.function.arguments
    assert json.loads(arguments) == {"city": "weather in paris"} and call_id
    # the upstream got the tools in its own API's shape
    sent = work_requests(upstream)[-1]["body"]
    assert [t.get("name") or t["function"]["name"] for t in sent["tools"]] == ["get_weather", "get_time"]

    back = ASK + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": call_id, "content": RESULT}]
    final = dict(ask, messages=back)
    if stream:
        text, calls, finishes, _ = streamed(client, **final)
        assert calls == [] and finishes == ["stop"]
    else:
        reply = client.chat.completions.create(**final)
        text = reply.choices[0].message.content
        assert reply.choices[0].finish_reason == "stop" and not reply.choices[0].message.tool_calls
    assert text.startswith(RESULT)  # the model read the tool's result
    sent = work_requests(upstream)[-1]["body"]["messages"]
    if name == "an":  # the result went back as a tool_result block answering the tool_use block
        assert sent[-2]["content"][0] == {"type": "tool_use", "id": call_id, "name": "get_weather",
                                          "input": {"city": "weather in paris"}}
        assert sent[-1] == {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call_id, "content": RESULT}]}
    else:
        assert sent[-1]["role"] == "tool" and sent[-1]["content"] == RESULT


@pytest.mark.parametrize("stream", [False, True])
def test_the_daemons_own_workers_refuse_tools_naming_service_and_model(daemon, stream):
    client = sdk(daemon)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="local~tiny", messages=ASK, tools=[WEATHER], stream=stream)
    assert info.value.body["code"] == "tools_unsupported" and info.value.body["param"] == "tools"
    assert "the service 'local' (model 'tiny') does not support tools" in info.value.message
    history = ASK + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": RESULT}]
    with pytest.raises(openai.BadRequestError, match="does not support tools") as info:
        client.chat.completions.create(model="tiny", messages=history)  # tool results without tools: the same
    assert info.value.body["param"] == "messages"


def test_the_fallback_chain_passes_over_the_stub_and_lists_why_when_none_can(daemon):
    client = sdk(daemon)
    raw = client.chat.completions.with_raw_response.create(model="stub~anything", messages=ASK, tools=[WEATHER])
    assert raw.headers["x-msting-provider"] == "an" and raw.headers["x-msting-attempts"] == "2"
    assert raw.parse().choices[0].message.tool_calls[0].function.name == "get_weather"
    oa, an = daemon.upstreams["oa"], daemon.upstreams["an"]
    oa.fault("status", status=503, paths=["/v1/chat/completions"])
    an.fault("status", status=503, paths=["/v1/messages"])
    try:
        with pytest.raises(openai.APIStatusError) as info:
            client.chat.completions.create(model="oa~gpt-standin", messages=ASK, tools=[WEATHER])
    finally:
        oa.clear()
        an.clear()
    said = info.value.message
    assert info.value.status_code in (502, 503) and "no service could answer" in said
    assert "stub: the service 'stub' (model 'stub') does not support tools" in said and "oa: " in said and "an: " in said
    assert [a["service"] for a in info.value.body["attempts"]][-1] == "an"


def test_the_tools_route_sends_a_tools_request_to_the_openai_service_and_a_plain_one_stays_local(daemon, tmp_path):
    client = sdk(daemon)
    raw = client.chat.completions.with_raw_response.create(messages=ASK, tools=[WEATHER], model=openai.NOT_GIVEN)
    assert raw.headers["x-msting-route"] == "tools" and raw.headers["x-msting-provider"] == "oa"
    assert raw.parse().model == "oa~gpt-standin" and raw.parse().choices[0].finish_reason == "tool_calls"
    raw = client.chat.completions.with_raw_response.create(messages=ASK, max_tokens=4, model=openai.NOT_GIVEN)
    assert raw.headers.get("x-msting-route") is None and raw.headers["x-msting-provider"] == "local"
    assert raw.parse().model == "tiny"

    request = tmp_path / "tools.json"
    request.write_text(json.dumps({"messages": ASK, "tools": [WEATHER]}))
    proc = daemon.cli("llm", "route", "--explain", str(request))
    assert proc.returncode == 0, proc.stderr
    assert "route: tools (its rule matched) -> oa~gpt-standin" in proc.stdout and "tools requested" in proc.stdout
    request.write_text(json.dumps({"messages": ASK, "tools": [{"type": "function", "function": {"name": "bad name"}}]}))
    proc = daemon.cli("llm", "route", "--explain", str(request))
    assert proc.returncode == 2 and "tools[0].function.name" in proc.stderr


def test_the_cache_keys_on_the_tools(daemon):
    client = sdk(daemon)
    oa = daemon.upstreams["oa"]
    ask = dict(model="oa~gpt-standin", messages=[{"role": "user", "content": "Cache the weather"}], temperature=0, max_tokens=16)

    def answer(**kw):
        raw = client.chat.completions.with_raw_response.create(**ask, **kw)
        return raw.parse().choices[0], raw.headers["x-msting-cache"]

    oa.clear_requests()
    with_weather, how = answer(tools=[WEATHER])
    assert how == "miss" and with_weather.message.tool_calls[0].function.name == "get_weather"
    with_clock, how = answer(tools=[CLOCK])
    assert how == "miss" and with_clock.message.tool_calls[0].function.name == "get_time"
    plain, how = answer()
    assert how == "miss" and plain.message.content and not plain.message.tool_calls
    chosen, how = answer(tools=[WEATHER, CLOCK], tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert how == "miss" and chosen.message.tool_calls[0].function.name == "get_time"
    again, how = answer(tools=[WEATHER])
    assert how == "hit" and again.finish_reason == "tool_calls"
    assert again.message.tool_calls[0].model_dump() == with_weather.message.tool_calls[0].model_dump()
    text, calls, finishes, _ = streamed(client, **ask, tools=[CLOCK])  # a hit streamed as the original was
    assert (text, [c["name"] for c in calls], finishes) == ("", ["get_time"], ["tool_calls"])
    assert len(work_requests(oa)) == 4  # the hits called no upstream


def test_execute_answers_tool_calls_whole_and_streamed(daemon):
    body = {"model": "ol~llama-standin", "messages": ASK, "tools": [WEATHER]}
    with daemon.client(timeout=30) as c:
        done = c.post("/v1/execute", json=body)
        assert done.status_code == 200, done.text
        [call] = done.json()["tool_calls"]
        assert done.json()["finish_reason"] == "tool_calls" and call["function"]["name"] == "get_weather"
        with c.stream("POST", "/v1/execute", json={**body, "stream": True}) as r:
            events = [line[len("event: "):] for line in r.iter_lines() if line.startswith("event: ")]
        assert events == ["tool_call", "tool_call", "done"]
        refused = c.post("/v1/execute", json={"prompt": "Weather", "tools": [WEATHER]})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "tools"
