"""msting.providers.remote.openai: the requests OpenAIWire builds and the replies it reads.

The sample streams follow OpenAI's chat-completions streaming format (chunks, a
usage-only chunk when stream_options.include_usage is set, then [DONE]); the text
completion one is what llama-cpp-python's server sent for a request of this wire."""

from __future__ import annotations

import json

import pytest

from msting.api.errors import Unavailable, UpstreamError
from msting.api.events import Done, Failed, Token, Usage
from msting.api.requests import ChatRequest, CompletionRequest, EmbeddingRequest, Message, SamplingParams
from msting.providers.base import Capabilities
from msting.providers.remote.openai import OpenAIWire

MODEL = "gpt-4o-mini"
SAMPLING = SamplingParams(max_tokens=64, temperature=0.2)

CHAT_STREAM_WITH_USAGE = """\
data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini","system_fingerprint":"fp_1","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],"usage":null}

data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini","system_fingerprint":"fp_1","choices":[{"index":0,"delta":{"content":"Hello"},"logprobs":null,"finish_reason":null}],"usage":null}

data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini","system_fingerprint":"fp_1","choices":[{"index":0,"delta":{"content":" there!"},"logprobs":null,"finish_reason":null}],"usage":null}

data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini","system_fingerprint":"fp_1","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],"usage":null}

data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini","system_fingerprint":"fp_1","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12}}

data: [DONE]

"""

# llama-cpp-python's server: no usage chunk (it ignores stream_options), finish_reason length.
COMPLETION_STREAM = """\
data: {"id": "cmpl-f8", "object": "text_completion", "created": 1796129212, "model": "x", "choices": [{"text": " a", "index": 0, "logprobs": null, "finish_reason": null}]}

data: {"id": "cmpl-f8", "object": "text_completion", "created": 1796129212, "model": "x", "choices": [{"text": " time", "index": 0, "logprobs": null, "finish_reason": null}]}

data: {"id": "cmpl-f8", "object": "text_completion", "created": 1796129212, "model": "x", "choices": [{"text": "", "index": 0, "logprobs": null, "finish_reason": "length"}]}

data: [DONE]

"""

# vLLM reports an error met after the stream began as a data line of its own.
ERROR_STREAM = """\
data: {"id":"chatcmpl-2","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"Par"},"finish_reason":null}]}

data: {"error": {"object": "error", "message": "the engine died unexpectedly", "type": "InternalServerError", "param": null, "code": 500}}

data: [DONE]

"""


def decode(text: str, model: str = MODEL, finish: bool = True) -> list:
    decoder = OpenAIWire().decoder(model)
    events = [event for line in text.split("\n") for event in decoder.feed(line)]
    return events + (decoder.finish() if finish else [])


def chunk(**fields) -> str:
    return "data: " + json.dumps({"object": "chat.completion.chunk", **fields})


# ---- requests ------------------------------------------------------------------------

def test_format_capabilities_and_headers():
    wire = OpenAIWire()
    assert wire.api_format == "openai" and wire.capabilities == Capabilities(tools=True)
    assert wire.headers("sk-1") == {"Authorization": "Bearer sk-1"}
    assert wire.headers(None) == {} and wire.headers("") == {}


def test_a_chat_request_is_a_streamed_chat_completion_asking_for_usage():
    request = ChatRequest((Message("system", "Be brief."), Message("user", "Hi")), sampling=SAMPLING)
    up = OpenAIWire().generate(request, MODEL)
    assert (up.method, up.path, up.stream) == ("POST", "/v1/chat/completions", True)
    assert up.body == {
        "model": MODEL, "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "stream": True, "stream_options": {"include_usage": True}, "max_tokens": 64, "temperature": 0.2, "top_p": 0.95,
    }


def test_a_completion_request_carries_the_prompt_and_every_sampling_field_that_is_set():
    sampling = SamplingParams(max_tokens=8, temperature=0.0, top_p=0.5, stop=("\n", "END"), seed=0,
                              presence_penalty=0.5, frequency_penalty=-1.0)
    up = OpenAIWire().generate(CompletionRequest("Once upon", sampling=sampling), "llama")
    assert (up.method, up.path, up.stream) == ("POST", "/v1/completions", True)
    assert up.body == {
        "model": "llama", "prompt": "Once upon", "stream": True, "stream_options": {"include_usage": True},
        "max_tokens": 8, "temperature": 0.0, "top_p": 0.5, "stop": ["\n", "END"], "seed": 0,
        "presence_penalty": 0.5, "frequency_penalty": -1.0,
    }


def test_embeddings_and_the_model_list_requests():
    wire = OpenAIWire()
    up = wire.embed(EmbeddingRequest(("a", "b")), "embedder")
    assert (up.method, up.path, up.body, up.stream) == ("POST", "/v1/embeddings", {"model": "embedder", "input": ["a", "b"]}, False)
    listing = wire.list_models()
    assert (listing.method, listing.path, listing.body) == ("GET", "/v1/models", None)


# ---- streams -------------------------------------------------------------------------

def test_a_chat_stream_ends_at_done_with_the_usage_chunk():
    assert decode(CHAT_STREAM_WITH_USAGE) == [
        Token("Hello"), Token(" there!"), Done(model=MODEL, finish_reason="stop", usage=Usage(9, 3))]


def test_a_completion_stream_without_usage_counts_zero():
    assert decode(COMPLETION_STREAM, "x") == [Token(" a"), Token(" time"), Done(model="x", finish_reason="length", usage=Usage(0, 0))]


def test_an_error_chunk_fails_the_stream_and_nothing_after_it_counts():
    events = decode(ERROR_STREAM)
    assert events[0] == Token("Par") and len(events) == 2
    failed = events[1]
    assert isinstance(failed, Failed) and type(failed.error) is UpstreamError and failed.error.code == "upstream_error"
    assert failed.error.message == "the openai upstream failed mid-stream: the engine died unexpectedly"


@pytest.mark.parametrize("error", [
    {"message": "Rate limit reached for gpt-4o-mini", "type": "requests", "code": "rate_limit_exceeded"},
    {"message": "That model is currently overloaded with other requests.", "type": "server_error"},
    {"code": 503, "message": "Loading model", "type": "unavailable_error"},  # llama.cpp's server
])
def test_an_overload_or_a_rate_limit_mid_stream_is_unavailable(error):
    (failed,) = decode(f"data: {json.dumps({'error': error})}\n\n")
    assert isinstance(failed.error, Unavailable) and failed.error.code == "upstream_overloaded"


def test_an_error_event_line_or_an_error_string_fails_too():
    (failed,) = decode('event: error\ndata: {"message": "boom", "type": "server_error"}\n\n')
    assert type(failed.error) is UpstreamError and failed.error.message.endswith("boom")
    (failed,) = decode('data: {"error": "model not loaded"}\n\n')
    assert failed.error.message.endswith("model not loaded")


def test_comments_event_lines_and_role_only_deltas_are_not_tokens():
    text = "\n".join([": OPENROUTER PROCESSING", "event: message",
                      chunk(choices=[{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]),
                      chunk(choices=[{"index": 0, "delta": {"content": None, "tool_calls": []}, "finish_reason": None}]),
                      chunk(choices=[{"index": 0, "delta": {"content": "ok"}, "finish_reason": "stop"}]), "data: [DONE]"])
    assert decode(text) == [Token("ok"), Done(model=MODEL, finish_reason="stop")]


@pytest.mark.parametrize("reason, expected", [("length", "length"), ("stop", "stop"), ("content_filter", "stop"),
                                              ("tool_calls", "tool_calls"), ("function_call", "stop")])
def test_finish_reasons_are_stop_length_or_tool_calls(reason, expected):
    text = chunk(choices=[{"index": 0, "delta": {"content": "x"}, "finish_reason": reason}]) + "\ndata: [DONE]\n"
    assert decode(text)[-1].finish_reason == expected


def test_done_without_a_finish_reason_is_a_cut_reply_not_a_complete_one():
    # llama-cpp-python's server stops a generation this way when another request arrives
    text = chunk(choices=[{"index": 0, "delta": {"content": "x"}, "finish_reason": None}]) + "\ndata: [DONE]\n"
    events = decode(text)
    assert events[0] == Token("x")
    assert isinstance(events[-1], Failed) and events[-1].error.code == "upstream_stream_cut"


def test_usage_on_the_last_content_chunk_and_llama_cpp_timings_are_kept():
    last = chunk(choices=[{"index": 0, "delta": {"content": "."}, "finish_reason": "stop"}],
                 usage={"prompt_tokens": 4, "completion_tokens": 2},
                 timings={"prompt_n": 4, "prompt_ms": 1.5, "predicted_ms": 8.0, "predicted_per_second": 250.0})
    (token, done) = decode(last + "\ndata: [DONE]\n")
    assert done.usage == Usage(4, 2)
    assert done.timings == {"prompt_ms": 1.5, "predicted_ms": 8.0, "predicted_per_second": 250.0}


# ---- cut streams ----------------------------------------------------------------------

def test_a_stream_cut_before_its_finish_reason_has_no_done():
    lines = CHAT_STREAM_WITH_USAGE.split("\n")[:6]  # two content chunks
    assert decode("\n".join(lines)) == [Token("Hello"), Token(" there!")]


def test_a_stream_that_ends_without_done_after_its_finish_reason_is_complete():
    text = CHAT_STREAM_WITH_USAGE.replace("data: [DONE]", "")
    assert decode(text)[-1] == Done(model=MODEL, finish_reason="stop", usage=Usage(9, 3))


def test_finish_after_done_adds_nothing():
    decoder = OpenAIWire().decoder(MODEL)
    for line in CHAT_STREAM_WITH_USAGE.split("\n"):
        decoder.feed(line)
    assert decoder.finish() == [] and decoder.feed("data: [DONE]") == []


# ---- bad replies ----------------------------------------------------------------------

@pytest.mark.parametrize("line", ["data: {not json", "data: [1, 2]", 'data: {"id": "x", "choices": {"0": "a"}}',
                                  'data: {"choices": ["text"]}', 'data: {"choices": [{"delta": {"content": 7}}]}'])
def test_a_line_without_the_documented_shape_is_a_bad_reply(line):
    (failed,) = decode(line + "\n\n")
    assert isinstance(failed, Failed) and failed.error.code == "upstream_bad_reply" and "openai" in failed.error.message


def test_embeddings_are_put_in_index_order_with_their_prompt_tokens():
    body = {"object": "list", "model": "text-embedding-3-small", "usage": {"prompt_tokens": 5, "total_tokens": 5},
            "data": [{"object": "embedding", "index": 1, "embedding": [0.5, 1]},
                     {"object": "embedding", "index": 0, "embedding": [-0.25, 0.0]}]}
    result = OpenAIWire().embeddings(body, "emb")
    assert result.model == "emb" and result.vectors == [[-0.25, 0.0], [0.5, 1.0]] and result.usage == Usage(5, 0)


@pytest.mark.parametrize("body", [
    None, "text", {"data": None}, {"data": [{"index": 0}]},
    {"data": [{"index": 0, "embedding": [[0.1, 0.2], [0.3, 0.4]]}]},  # token-level, as llama-cpp-python gives without pooling
    {"data": [{"index": 0, "embedding": [1]}, {"index": 0, "embedding": [2]}]},
    {"data": [{"index": 0, "embedding": [1]}, {"index": 2, "embedding": [2]}]},
    {"data": [{"index": "0", "embedding": [1]}]},
])
def test_embeddings_without_the_documented_shape_are_a_bad_reply(body):
    with pytest.raises(UpstreamError) as caught:
        OpenAIWire().embeddings(body, "emb")
    assert caught.value.code == "upstream_bad_reply"


def test_models_with_the_context_length_each_server_gives():
    body = {"object": "list", "data": [
        {"id": "gpt-4o-mini", "object": "model", "created": 1, "owned_by": "openai"},
        {"id": "qwen", "object": "model", "max_model_len": 32768},
        {"id": "/models/stories.gguf", "object": "model", "meta": {"n_ctx_train": 128, "n_vocab": 512}},
        {"id": "local", "context_length": 4096},
        {"id": "text-embedding-3-small", "object": "model"},
    ]}
    models = OpenAIWire().models(body)
    assert [(m.name, m.type, m.context_length) for m in models] == [
        ("gpt-4o-mini", "llm", None), ("qwen", "llm", 32768), ("/models/stories.gguf", "llm", 128),
        ("local", "llm", 4096), ("text-embedding-3-small", "embeddings", None)]
    assert models[0].details == {"object": "model", "created": 1, "owned_by": "openai"}


@pytest.mark.parametrize("body", [[], {"models": []}, {"data": [{"object": "model"}]}, {"data": ["gpt"]}])
def test_a_model_list_without_the_documented_shape_is_a_bad_reply(body):
    with pytest.raises(UpstreamError, match="openai upstream"):
        OpenAIWire().models(body)


@pytest.mark.parametrize("body, message", [
    ({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "code": "invalid_api_key"}},
     "Incorrect API key provided"),
    ({"error": "model 'x' not found"}, "model 'x' not found"),
    ({"detail": "Not Found"}, "Not Found"),
    ({"detail": [{"loc": ["body", "messages"], "msg": "Field required"}, {"msg": "Input should be a valid list"}]},
     "Field required; Input should be a valid list"),
    ("upstream connect error", "upstream connect error"),
    (None, "HTTP 502 with no error message"),
])
def test_error_message(body, message):
    assert OpenAIWire().error_message(502, body) == message
