"""msting.http.parsing with tool calling: a chat body's tools, tool_choice,
parallel_tool_calls, assistant tool_calls and tool messages become typed values; what is
wrong is a 400 whose message names the field."""

from __future__ import annotations

import json

import pytest

from msting.api.errors import InvalidRequest
from msting.api.requests import NO_META, SamplingParams
from msting.api.tools import Tool, ToolCall, ToolChoice
from msting.http.errors import Fields
from msting.http.openai_api import CHAT_KEYS, EXECUTE_KEYS
from msting.http.parsing import chat_request, prompt_or_messages

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": SCHEMA, "strict": True}},
         {"type": "function", "function": {"name": "get_time"}}]
ASK = {"role": "user", "content": "Weather in Paris?"}
CALLED = {"role": "assistant", "content": None,
          "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]}
RESULT = {"role": "tool", "tool_call_id": "c1", "content": "sunny"}


def parse(**body):
    body.setdefault("messages", [ASK])
    return chat_request(Fields(body, CHAT_KEYS), SamplingParams(), NO_META)


def refused(**body) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as exc:
        parse(**body)
    return exc.value


def test_tools_choice_and_parallel_are_typed():
    req = parse(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_time"}}, parallel_tool_calls=False)
    assert req.tools == (Tool("get_weather", "Weather", json.dumps(SCHEMA, sort_keys=True, separators=(",", ":")), True),
                         Tool("get_time"))
    assert req.tools[0].schema() == SCHEMA
    assert req.tool_choice == ToolChoice("function", "get_time") and req.parallel_tool_calls is False
    assert req.meta.tools_requested
    assert parse(tools=TOOLS, tool_choice="required").tool_choice == ToolChoice("required")
    plain = parse()
    assert (plain.tools, plain.tool_choice, plain.parallel_tool_calls, plain.meta.tools_requested) == ((), None, None, False)


def test_a_round_trip_history_is_typed():
    req = parse(messages=[ASK, CALLED, RESULT], tools=TOOLS)
    assert req.messages[1].tool_calls == (ToolCall("c1", "get_weather", '{"city":"Paris"}'),) and req.messages[1].content == ""
    assert (req.messages[2].role, req.messages[2].tool_call_id, req.messages[2].content) == ("tool", "c1", "sunny")
    # tool messages alone (tools not repeated) still count as using tools
    assert parse(messages=[ASK, CALLED, RESULT]).meta.tools_requested


@pytest.mark.parametrize("body, param, says", [
    ({"tools": []}, "tools", "'tools' must be a non-empty list"),
    ({"tools": {"a": 1}}, "tools", "'tools' must be a non-empty list"),
    ({"tools": [{"type": "retrieval"}]}, "tools", "tools[0].type must be 'function'"),
    ({"tools": [{"type": "function"}]}, "tools", "tools[0].function must be an object"),
    ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools", "tools[0].function.name must be 1 to 64"),
    ({"tools": [{"type": "function", "function": {"name": "x" * 65}}]}, "tools", "tools[0].function.name"),
    ({"tools": [TOOLS[1], TOOLS[1]]}, "tools", 'tools[1].function.name "get_time" is declared twice'),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "{}"}}]}, "tools", "parameters must be a JSON schema object"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]}, "tools", "must describe an object"),
    ({"tools": [{"type": "function", "function": {"name": "f", "strict": "yes"}}]}, "tools", "strict must be true or false"),
    ({"tools": [{"type": "function", "function": {"name": "f", "examples": []}}]}, "tools", "unsupported field(s): examples"),
    ({"tools": [TOOLS[1]] * 129}, "tools", "at most 128 tools"),
    ({"tool_choice": "auto"}, "tool_choice", "only allowed when 'tools' are given"),
    ({"tools": TOOLS, "tool_choice": "always"}, "tool_choice", "must be one of none, auto, required"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_news"}}}, "tool_choice",
     "names the tool \"get_news\", which 'tools' does not declare (declared: get_time, get_weather)"),
    ({"tools": TOOLS, "tool_choice": {"type": "function"}}, "tool_choice", "must be one of"),
    ({"parallel_tool_calls": True}, "parallel_tool_calls", "only allowed when 'tools' are given"),
    ({"tools": TOOLS, "parallel_tool_calls": "yes"}, "parallel_tool_calls", "must be true or false"),
    ({"messages": [ASK, RESULT]}, "messages", 'messages[1].tool_call_id "c1" matches no tool call of an earlier assistant'),
    ({"messages": [ASK, {"role": "tool", "content": "x"}]}, "messages", "messages[1].tool_call_id must be the id"),
    ({"messages": [ASK, CALLED, RESULT, RESULT]}, "messages", 'messages[3]: tool call "c1" has been answered already'),
    ({"messages": [ASK, CALLED, CALLED]}, "messages", 'messages[2].tool_calls[0].id "c1" is the id of an earlier tool call'),
    ({"messages": [ASK, {**CALLED, "tool_calls": []}]}, "messages", "messages[1].tool_calls must be a non-empty list"),
    ({"messages": [ASK, {**CALLED, "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": {}}}]}]},
     "messages", "messages[1].tool_calls[0].function.arguments must be a string"),
    ({"messages": [ASK, {**CALLED, "tool_calls": [{"id": "c", "type": "code", "function": {"name": "f", "arguments": ""}}]}]},
     "messages", "messages[1].tool_calls[0].type must be 'function'"),
    ({"messages": [ASK, {"role": "assistant", "content": None}]}, "messages", "messages[1].content must be a string"),
    ({"messages": [{"role": "user", "content": "x", "tool_calls": CALLED["tool_calls"]}]}, "messages",
     "messages[0] (role user) has unsupported field(s): tool_calls"),
    ({"messages": [ASK, {**CALLED, "refusal": "no"}]}, "messages", "messages[1].refusal must be null"),
])
def test_what_is_wrong_is_a_400_naming_the_field(body, param, says):
    error = refused(**body)
    assert error.details["param"] == param and says in error.message, error.message


def test_execute_and_the_websocket_take_tools_with_messages_only():
    chat = prompt_or_messages(Fields({"messages": [ASK], "tools": TOOLS}, EXECUTE_KEYS), NO_META)
    assert [t.name for t in chat.tools] == ["get_weather", "get_time"]
    with pytest.raises(InvalidRequest, match="'tools' needs 'messages'"):
        prompt_or_messages(Fields({"prompt": "x", "tools": TOOLS}, EXECUTE_KEYS), NO_META)
