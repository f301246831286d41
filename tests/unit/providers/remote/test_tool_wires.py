"""Tool calling through the three wire formats (msting.providers.remote.openai,
anthropic, ollama): how a chat with tools, tool calls and tool results is written in
each API, and how each API's streamed tool calls come back as ToolCallDelta events that
ToolCallBuilder puts together as OpenAI would give them."""

from __future__ import annotations

import json

import pytest

from msting.api.errors import InvalidRequest
from msting.api.events import Done, Failed, Token, Usage
from msting.api.requests import ChatRequest, Message, SamplingParams
from msting.api.tools import Tool, ToolCall, ToolCallBuilder, ToolCallDelta, ToolChoice, deltas_of
from msting.providers.remote.anthropic import AnthropicWire
from msting.providers.remote.ollama import OllamaWire
from msting.providers.remote.openai import OpenAIWire

MODEL = "m"
SAMPLING = SamplingParams(max_tokens=16, temperature=0.0)
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER = Tool("get_weather", "The weather in a city", json.dumps(SCHEMA, sort_keys=True, separators=(",", ":")))
CLOCK = Tool("get_time")
CALL = ToolCall("call_1", "get_weather", '{"city": "Paris"}')
CALL2 = ToolCall("call_2", "get_time", "{}")
HISTORY = (Message("system", "Be brief."), Message("user", "Weather and time in Paris?"),
           Message("assistant", "Let me look.", tool_calls=(CALL, CALL2)),
           Message("tool", "sunny", tool_call_id="call_1"), Message("tool", "noon", tool_call_id="call_2"))


def chat(messages=HISTORY, **kw) -> ChatRequest:
    return ChatRequest(messages, MODEL, SAMPLING, tools=(WEATHER, CLOCK), **kw)


def decode(wire, lines: list[str]) -> list:
    decoder = wire.decoder(MODEL)
    return [e for line in lines for e in decoder.feed(line)] + decoder.finish()


def assembled(events: list) -> tuple[ToolCall, ...]:
    builder = ToolCallBuilder()
    for e in events:
        if isinstance(e, ToolCallDelta):
            builder.add(e)
    return builder.calls()


# ---- msting.api.tools ----------------------------------------------------------------------


def test_deltas_and_the_builder_are_inverse_and_look_like_openais_stream():
    deltas = deltas_of([CALL, CALL2])
    assert [d.as_openai() for d in deltas] == [
        {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}},
        {"index": 0, "function": {"arguments": '{"city": "Paris"}'}},
        {"index": 1, "id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": ""}},
        {"index": 1, "function": {"arguments": "{}"}}]
    assert assembled(deltas) == (CALL, CALL2)
    assert WEATHER.as_dict() == {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                                                 "parameters": SCHEMA}}
    assert CLOCK.as_dict() == {"type": "function", "function": {"name": "get_time"}}


# ---- openai ------------------------------------------------------------------------------


def test_openai_passes_tools_choice_and_the_tool_messages_through():
    body = OpenAIWire().generate(chat(tool_choice=ToolChoice("function", "get_weather"), parallel_tool_calls=False), MODEL).body
    assert body["tools"] == [WEATHER.as_dict(), CLOCK.as_dict()]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["parallel_tool_calls"] is False
    assert body["messages"][2:] == [
        {"role": "assistant", "content": "Let me look.", "tool_calls": [CALL.as_dict(), CALL2.as_dict()]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "noon"}]
    plain = OpenAIWire().generate(ChatRequest((Message("user", "hi"),), MODEL, SAMPLING), MODEL).body
    assert not {"tools", "tool_choice", "parallel_tool_calls"} & set(plain)
    silent = Message("assistant", "", tool_calls=(CALL,))
    assert OpenAIWire().generate(chat((Message("user", "x"), silent)), MODEL).body["messages"][1]["content"] is None


def _chunk(delta: dict, finish: str | None = None) -> str:
    return "data: " + json.dumps({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


def test_openai_streamed_tool_calls_become_deltas_and_finish_tool_calls():
    lines = [_chunk({"role": "assistant", "content": None, "tool_calls": [
                 {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
             _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
             # a server that repeats the id and name on every piece: they are said once
             _chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                     "function": {"name": "get_weather", "arguments": '"Paris"}'}}]}),
             _chunk({"tool_calls": [{"index": 1, "id": "call_2", "type": "function", "function": {"name": "get_time"}}]}),
             _chunk({}, "tool_calls"), "data: [DONE]"]
    events = decode(OpenAIWire(), lines)
    assert events[:3] == [ToolCallDelta(0, "call_1", "get_weather", ""), ToolCallDelta(0, arguments='{"city": '),
                          ToolCallDelta(0, arguments='"Paris"}')]
    assert assembled(events) == (CALL, ToolCall("call_2", "get_time", ""))
    assert events[-1] == Done(model=MODEL, finish_reason="tool_calls")


@pytest.mark.parametrize("calls", ["x", [{"index": "0"}], [{"index": 0, "function": {"arguments": 5}}], [{"index": -1}]])
def test_openai_tool_calls_of_another_shape_are_a_bad_reply(calls):
    (failed,) = decode(OpenAIWire(), [_chunk({"tool_calls": calls})])
    assert isinstance(failed, Failed) and failed.error.code == "upstream_bad_reply"


# ---- anthropic ---------------------------------------------------------------------------


def test_anthropic_tools_choice_and_the_history_as_tool_use_and_tool_result_blocks():
    body = AnthropicWire().generate(chat(tool_choice=ToolChoice("required"), parallel_tool_calls=False), MODEL).body
    assert body["tools"] == [{"name": "get_weather", "description": "The weather in a city", "input_schema": SCHEMA},
                             {"name": "get_time", "input_schema": {"type": "object", "properties": {}}}]
    assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert body["system"] == "Be brief."
    assert body["messages"] == [
        {"role": "user", "content": "Weather and time in Paris?"},
        {"role": "assistant", "content": [{"type": "text", "text": "Let me look."},
                                          {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                                          {"type": "tool_use", "id": "call_2", "name": "get_time", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"},  # one message
                                     {"type": "tool_result", "tool_use_id": "call_2", "content": "noon"}]}]


@pytest.mark.parametrize("choice, expected", [(ToolChoice("auto"), {"type": "auto"}), (ToolChoice("none"), {"type": "none"}),
                                              (ToolChoice("function", "get_time"), {"type": "tool", "name": "get_time"})])
def test_anthropic_tool_choices(choice, expected):
    assert AnthropicWire().generate(chat(tool_choice=choice), MODEL).body["tool_choice"] == expected


@pytest.mark.parametrize("arguments", ["[1]", "not json"])
def test_anthropic_refuses_arguments_that_are_not_an_object(arguments):
    bad = Message("assistant", "", tool_calls=(ToolCall("c", "get_time", arguments),))
    with pytest.raises(InvalidRequest, match=r"messages\[1\].tool_calls\[0\].function.arguments must be a JSON object"):
        AnthropicWire().generate(chat((Message("user", "x"), bad, Message("tool", "r", tool_call_id="c"))), MODEL)


def _event(kind: str, **fields) -> list[str]:
    return [f"event: {kind}", "data: " + json.dumps({"type": kind, **fields}), ""]


def test_anthropic_streamed_tool_use_blocks_become_deltas_and_finish_tool_calls():
    lines = (_event("message_start", message={"usage": {"input_tokens": 9}})
             + _event("content_block_start", index=0, content_block={"type": "text", "text": ""})
             + _event("content_block_delta", index=0, delta={"type": "text_delta", "text": "Looking."})
             + _event("content_block_stop", index=0)
             + _event("content_block_start", index=1, content_block={"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                                                     "input": {}})
             + _event("content_block_delta", index=1, delta={"type": "input_json_delta", "partial_json": ""})
             + _event("content_block_delta", index=1, delta={"type": "input_json_delta", "partial_json": '{"city": '})
             + _event("content_block_delta", index=1, delta={"type": "input_json_delta", "partial_json": '"Paris"}'})
             + _event("content_block_stop", index=1)
             + _event("content_block_start", index=2, content_block={"type": "tool_use", "id": "toolu_2", "name": "get_time",
                                                                     "input": {}})
             + _event("content_block_stop", index=2)
             + _event("message_delta", delta={"stop_reason": "tool_use"}, usage={"output_tokens": 20})
             + _event("message_stop"))
    events = decode(AnthropicWire(), lines)
    assert events[0] == Token("Looking.") and events[1] == ToolCallDelta(0, "toolu_1", "get_weather", "")
    assert assembled(events) == (ToolCall("toolu_1", "get_weather", '{"city": "Paris"}'), ToolCall("toolu_2", "get_time", "{}"))
    assert events[-1] == Done(model=MODEL, finish_reason="tool_calls", usage=Usage(9, 20))


def test_anthropic_an_input_delta_outside_a_tool_use_block_is_a_bad_reply():
    lines = _event("content_block_delta", index=3, delta={"type": "input_json_delta", "partial_json": "{}"})
    (failed,) = decode(AnthropicWire(), lines)
    assert isinstance(failed, Failed) and failed.error.code == "upstream_bad_reply"


# ---- ollama --------------------------------------------------------------------------------


def test_ollama_tools_and_the_history_with_arguments_as_objects():
    body = OllamaWire().generate(chat(), MODEL).body
    assert body["tools"] == [WEATHER.as_dict(), CLOCK.as_dict()]
    assert body["messages"][2:] == [
        {"role": "assistant", "content": "Let me look.", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}, {"function": {"name": "get_time", "arguments": {}}}]},
        {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
        {"role": "tool", "content": "noon", "tool_name": "get_time"}]
    assert "tools" not in OllamaWire().generate(chat(tool_choice=ToolChoice("none")), MODEL).body  # none: no tools to call
    assert "tools" in OllamaWire().generate(chat(tool_choice=ToolChoice("auto"), parallel_tool_calls=True), MODEL).body


@pytest.mark.parametrize("kw, param", [({"tool_choice": ToolChoice("required")}, "tool_choice"),
                                       ({"tool_choice": ToolChoice("function", "get_time")}, "tool_choice"),
                                       ({"parallel_tool_calls": False}, "parallel_tool_calls")])
def test_ollama_refuses_what_it_cannot_express(kw, param):
    with pytest.raises(InvalidRequest) as exc:
        OllamaWire().generate(chat(**kw), MODEL)
    assert exc.value.code == "unsupported_by_provider" and exc.value.details["param"] == param and "ollama" in exc.value.message


def test_ollama_tool_calls_get_json_arguments_and_ids_and_finish_tool_calls():
    line = {"message": {"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
        {"id": "call_x", "function": {"index": 1, "name": "get_time", "arguments": {}}}]}, "done": False}
    final = {"message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "stop", "prompt_eval_count": 5,
             "eval_count": 2}
    events = decode(OllamaWire(), [json.dumps(line), json.dumps(final)])
    first, second = assembled(events)
    assert (first.name, json.loads(first.arguments), first.id.startswith("call_")) == ("get_weather", {"city": "Paris"}, True)
    assert second == ToolCall("call_x", "get_time", "{}")
    assert events[-1].finish_reason == "tool_calls" and events[-1].usage == Usage(5, 2)


def test_ollama_without_tool_calls_finishes_as_it_says():
    final = {"message": {"role": "assistant", "content": "hi"}, "done": True, "done_reason": "length"}
    assert decode(OllamaWire(), [json.dumps(final)])[-1].finish_reason == "length"


@pytest.mark.parametrize("calls", ["x", [{"function": {"name": ""}}], [{"function": {"name": "f", "arguments": 3}}]])
def test_ollama_tool_calls_of_another_shape_are_a_bad_reply(calls):
    (failed,) = decode(OllamaWire(), [json.dumps({"message": {"content": "", "tool_calls": calls}, "done": False})])
    assert isinstance(failed, Failed) and failed.error.code == "upstream_bad_reply"
