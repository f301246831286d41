"""msting.providers.remote.anthropic: the requests AnthropicWire builds, what it
refuses, and the replies it reads.

The sample streams follow Anthropic's Messages streaming documentation: named SSE
events, ping among them, and an `error` event (overloaded_error) mid-stream."""

from __future__ import annotations

import json

import pytest

from msting.api.errors import InvalidRequest, Unavailable, UpstreamError
from msting.api.events import Done, Failed, Token, Usage
from msting.api.requests import ChatRequest, CompletionRequest, EmbeddingRequest, Message, SamplingParams
from msting.api.tools import ToolCallDelta
from msting.providers.base import Capabilities
from msting.providers.remote.anthropic import AnthropicWire

MODEL = "claude-sonnet-4-5"
SAMPLING = SamplingParams(max_tokens=1024, temperature=0.7)
HI = (Message("user", "Hello"),)

STREAM = """\
event: message_start
data: {"type": "message_start", "message": {"id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY", "type": "message", "role": "assistant", "content": [], "model": "claude-sonnet-4-5-20250929", "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 25, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 1}}}

event: content_block_start
data: {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}

event: ping
data: {"type": "ping"}

event: content_block_delta
data: {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}

event: content_block_delta
data: {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "!"}}

event: content_block_stop
data: {"type": "content_block_stop", "index": 0}

event: message_delta
data: {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 15}}

event: message_stop
data: {"type": "message_stop"}

"""

OVERLOADED_STREAM = """\
event: message_start
data: {"type": "message_start", "message": {"id": "msg_2", "type": "message", "role": "assistant", "content": [], "model": "claude-sonnet-4-5", "stop_reason": null, "usage": {"input_tokens": 12, "output_tokens": 1}}}

event: content_block_start
data: {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}

event: content_block_delta
data: {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Once"}}

event: ping
data: {"type": "ping"}

event: error
data: {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}

"""

# A thinking block and a tool call around the text: their deltas are not text.
MIXED_STREAM = """\
event: message_start
data: {"type":"message_start","message":{"id":"msg_3","type":"message","role":"assistant","content":[],"model":"claude-sonnet-4-5","usage":{"input_tokens":400,"cache_read_input_tokens":1000,"output_tokens":1}}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Let me see..."}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"EqQBCgIYAhIM"}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: content_block_start
data: {"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Checking."}}

event: content_block_stop
data: {"type":"content_block_stop","index":1}

event: content_block_start
data: {"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"toolu_1","name":"get_weather","input":{}}}

event: content_block_delta
data: {"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"{\\"location\\": \\"Paris\\"}"}}

event: content_block_stop
data: {"type":"content_block_stop","index":2}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":89}}

event: message_stop
data: {"type":"message_stop"}

"""


def decode(text: str, finish: bool = True) -> list:
    decoder = AnthropicWire().decoder(MODEL)
    events = [event for line in text.split("\n") for event in decoder.feed(line)]
    return events + (decoder.finish() if finish else [])


def event(kind: str, **fields) -> str:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **fields})}\n"


# ---- requests ------------------------------------------------------------------------

def test_format_capabilities_and_headers():
    wire = AnthropicWire()
    assert wire.api_format == "anthropic"
    assert wire.capabilities == Capabilities(chat=True, completions=False, stream=True, embed=False, tools=True)
    assert wire.headers("sk-ant-1") == {"x-api-key": "sk-ant-1", "anthropic-version": "2023-06-01"}
    assert wire.headers(None) == {"anthropic-version": "2023-06-01"}


def test_system_messages_are_joined_into_system_and_max_tokens_is_always_sent():
    messages = (Message("system", "You are terse."), Message("user", "Hi"), Message("assistant", "Hello."),
                Message("system", "Answer in French."), Message("user", "How are you?"))
    up = AnthropicWire().generate(ChatRequest(messages, sampling=SAMPLING), MODEL)
    assert (up.method, up.path, up.stream) == ("POST", "/v1/messages", True)
    assert up.body == {
        "model": MODEL, "max_tokens": 1024, "stream": True, "temperature": 0.7,
        "system": "You are terse.\n\nAnswer in French.",
        "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                     {"role": "user", "content": "How are you?"}],
    }


def test_stop_becomes_stop_sequences_and_a_chosen_top_p_is_passed():
    sampling = SamplingParams(max_tokens=10, temperature=1.0, top_p=0.5, stop=("\n\nHuman:",))
    body = AnthropicWire().generate(ChatRequest(HI, sampling=sampling), MODEL).body
    assert body["stop_sequences"] == ["\n\nHuman:"] and body["top_p"] == 0.5 and body["temperature"] == 1.0
    assert "system" not in body


@pytest.mark.parametrize("top_p", [0.95, 1.0])  # msting's default (a request that never named it), and no cut at all
def test_top_p_that_cuts_nothing_the_client_chose_is_left_out(top_p):
    body = AnthropicWire().generate(ChatRequest(HI, sampling=SamplingParams(10, 0.5, top_p=top_p)), MODEL).body
    assert "top_p" not in body


@pytest.mark.parametrize("temperature", [1.5, 2.0, -0.1])
def test_a_temperature_outside_0_to_1_is_refused(temperature):
    with pytest.raises(InvalidRequest) as caught:
        AnthropicWire().generate(ChatRequest(HI, sampling=SamplingParams(10, temperature)), MODEL)
    assert caught.value.details["param"] == "temperature" and "anthropic" in caught.value.message
    assert "0 to 1" in caught.value.message


@pytest.mark.parametrize("field, value, param", [("presence_penalty", 0.5, "presence_penalty"),
                                                 ("frequency_penalty", -1.0, "frequency_penalty"),
                                                 ("seed", 42, "seed"), ("seed", 0, "seed")])
def test_penalties_and_a_seed_are_refused_never_dropped(field, value, param):
    sampling = SamplingParams(max_tokens=10, temperature=0.5, **{field: value})
    with pytest.raises(InvalidRequest) as caught:
        AnthropicWire().generate(ChatRequest(HI, sampling=sampling), MODEL)
    assert caught.value.details["param"] == param
    assert caught.value.message.startswith(f"the anthropic API has no {param}")


def test_a_raw_completion_and_embeddings_are_refused_naming_anthropic():
    wire = AnthropicWire()
    with pytest.raises(InvalidRequest) as caught:
        wire.generate(CompletionRequest("Once upon a time", sampling=SAMPLING), MODEL)
    assert caught.value.details["param"] == "prompt" and caught.value.message.startswith("the anthropic API has no raw")
    with pytest.raises(InvalidRequest) as caught:
        wire.embed(EmbeddingRequest(("a",)), MODEL)
    assert caught.value.details["param"] == "input" and caught.value.message.startswith("the anthropic API has no embeddings")
    with pytest.raises(InvalidRequest):
        wire.embeddings({"data": []}, MODEL)


def test_only_system_messages_are_refused():
    with pytest.raises(InvalidRequest) as caught:
        AnthropicWire().generate(ChatRequest((Message("system", "Be nice."),), sampling=SAMPLING), MODEL)
    assert caught.value.details["param"] == "messages" and "anthropic" in caught.value.message


def test_the_model_list_request():
    up = AnthropicWire().list_models()
    assert (up.method, up.path, up.body, up.stream) == ("GET", "/v1/models?limit=1000", None, False)


# ---- streams -------------------------------------------------------------------------

def test_a_stream_with_ping_ends_at_message_stop_with_its_usage():
    assert decode(STREAM) == [Token("Hello"), Token("!"), Done(model=MODEL, finish_reason="stop", usage=Usage(25, 15))]


def test_an_overloaded_error_event_mid_stream_is_unavailable():
    events = decode(OVERLOADED_STREAM)
    assert events[0] == Token("Once") and len(events) == 2
    failed = events[1]
    assert isinstance(failed, Failed) and isinstance(failed.error, Unavailable)
    assert failed.error.code == "upstream_overloaded"
    assert failed.error.message == "the anthropic upstream failed mid-stream: Overloaded"


@pytest.mark.parametrize("error_type, kind", [("rate_limit_error", Unavailable), ("api_error", UpstreamError),
                                              ("invalid_request_error", UpstreamError)])
def test_error_events_by_type(error_type, kind):
    (failed,) = decode(event("error", error={"type": error_type, "message": "no"}))
    assert type(failed.error) is kind
    assert failed.error.code == ("upstream_overloaded" if kind is Unavailable else "upstream_error")


def test_thinking_deltas_are_not_text_a_tool_use_block_is_a_tool_call_and_cached_prompt_tokens_count():
    assert decode(MIXED_STREAM) == [Token("Checking."), ToolCallDelta(0, "toolu_1", "get_weather", ""),
                                    ToolCallDelta(0, arguments='{"location": "Paris"}'),
                                    Done(model=MODEL, finish_reason="tool_calls", usage=Usage(1400, 89, 1000))]


@pytest.mark.parametrize("reason, expected", [("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"),
                                              ("refusal", "stop"), ("pause_turn", "stop"), (None, "stop")])
def test_stop_reasons_are_stop_or_length(reason, expected):
    text = event("message_delta", delta={"stop_reason": reason}, usage={"output_tokens": 3}) + event("message_stop")
    assert decode(text)[-1].finish_reason == expected


def test_events_added_to_the_api_later_are_ignored():
    text = event("message_start", message={"usage": {"input_tokens": 3}}) + event("future_event", x=1) + event("message_stop")
    assert decode(text) == [Done(model=MODEL, finish_reason="stop", usage=Usage(3, 0))]


def test_a_stream_cut_before_message_stop_has_no_done():
    text = STREAM[: STREAM.index("event: message_stop")]  # even after message_delta's stop_reason
    assert decode(text) == [Token("Hello"), Token("!")]
    decoder = AnthropicWire().decoder(MODEL)
    for line in STREAM.split("\n"):
        decoder.feed(line)
    assert decoder.finish() == []  # after the Done, too


@pytest.mark.parametrize("text", ["event: content_block_delta\ndata: {oops\n",
                                  "event: message_start\ndata: [\"message_start\"]\n",
                                  event("content_block_delta", index=0, delta="Hello"),
                                  event("content_block_delta", index=0, delta={"type": "text_delta"})])
def test_a_line_without_the_documented_shape_is_a_bad_reply(text):
    (failed,) = decode(text)
    assert isinstance(failed, Failed) and failed.error.code == "upstream_bad_reply" and "anthropic" in failed.error.message


# ---- replies --------------------------------------------------------------------------

def test_models_are_the_ids_with_the_rest_as_details():
    body = {"data": [{"type": "model", "id": "claude-sonnet-4-5-20250929", "display_name": "Claude Sonnet 4.5",
                      "created_at": "2025-09-29T00:00:00Z"},
                     {"type": "model", "id": "claude-3-5-haiku-20241022", "display_name": "Claude Haiku 3.5",
                      "created_at": "2024-10-22T00:00:00Z"}],
            "has_more": False, "first_id": "claude-sonnet-4-5-20250929", "last_id": "claude-3-5-haiku-20241022"}
    models = AnthropicWire().models(body)
    assert [(m.name, m.type, m.context_length) for m in models] == [
        ("claude-sonnet-4-5-20250929", "llm", None), ("claude-3-5-haiku-20241022", "llm", None)]
    assert models[0].details == {"type": "model", "display_name": "Claude Sonnet 4.5", "created_at": "2025-09-29T00:00:00Z"}


@pytest.mark.parametrize("body", [None, {"models": []}, {"data": [{"type": "model"}]}])
def test_a_model_list_without_the_documented_shape_is_a_bad_reply(body):
    with pytest.raises(UpstreamError, match="anthropic upstream"):
        AnthropicWire().models(body)


@pytest.mark.parametrize("body, message", [
    ({"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}}, "invalid x-api-key"),
    ({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}, "request_id": "req_1"}, "Overloaded"),
    ("<html>502 Bad Gateway</html>", "<html>502 Bad Gateway</html>"),
    (None, "HTTP 529 with no error message"),
])
def test_error_message(body, message):
    assert AnthropicWire().error_message(529, body) == message
