"""msting.providers.remote.ollama: the requests OllamaWire builds and the replies it reads.

The sample streams and bodies follow Ollama's API documentation (docs/api.md): NDJSON
objects with `message.content` (chat) or `response` (generate), the last one `done`."""

from __future__ import annotations

import json

import pytest

from msting.api.errors import Unavailable, UpstreamError
from msting.api.events import Done, Failed, Token, Usage
from msting.api.requests import ChatRequest, CompletionRequest, EmbeddingRequest, Message, SamplingParams
from msting.providers.base import Capabilities
from msting.providers.remote.ollama import OllamaWire

MODEL = "llama3.2"

CHAT_STREAM_CUT_BY_LENGTH = """\
{"model":"llama3.2","created_at":"2023-08-04T08:52:19.385406455-07:00","message":{"role":"assistant","content":"The"},"done":false}
{"model":"llama3.2","created_at":"2023-08-04T08:52:19.412Z","message":{"role":"assistant","content":" sky"},"done":false}
{"model":"llama3.2","created_at":"2023-08-04T08:52:19.439Z","message":{"role":"assistant","content":" is"},"done":false}
{"model":"llama3.2","created_at":"2023-08-04T19:22:45.499127Z","message":{"role":"assistant","content":""},"done_reason":"length","done":true,"total_duration":4883583458,"load_duration":1334875,"prompt_eval_count":26,"prompt_eval_duration":342546000,"eval_count":3,"eval_duration":60000000}
"""

GENERATE_STREAM = """\
{"model":"llama3.2","created_at":"2023-08-04T08:52:19.385406455-07:00","response":"Blue","done":false}
{"model":"llama3.2","created_at":"2023-08-04T08:52:19.40Z","response":".","done":false}
{"model":"llama3.2","created_at":"2023-08-04T19:22:45.499127Z","response":"","done":true,"done_reason":"stop","prompt_eval_count":8,"eval_count":2}
"""

ERROR_STREAM = """\
{"model":"llama3.2","created_at":"2024-08-04T08:52:19Z","message":{"role":"assistant","content":"Once"},"done":false}
{"error":"an error was encountered while running the model: unexpected EOF"}
"""


def decode(text: str, finish: bool = True) -> list:
    decoder = OllamaWire().decoder(MODEL)
    events = [event for line in text.split("\n") for event in decoder.feed(line)]
    return events + (decoder.finish() if finish else [])


# ---- requests ------------------------------------------------------------------------

def test_format_capabilities_and_headers():
    wire = OllamaWire()
    assert wire.api_format == "ollama" and wire.capabilities == Capabilities(tools=True)
    assert wire.headers(None) == {} and wire.headers("proxy-key") == {"Authorization": "Bearer proxy-key"}


def test_a_chat_request_streams_from_api_chat_with_its_options():
    request = ChatRequest((Message("system", "Be brief."), Message("user", "Why is the sky blue?")),
                          sampling=SamplingParams(max_tokens=100, temperature=0.8))
    up = OllamaWire().generate(request, MODEL)
    assert (up.method, up.path, up.stream) == ("POST", "/api/chat", True)
    assert up.body == {
        "model": MODEL, "stream": True,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why is the sky blue?"}],
        "options": {"num_predict": 100, "temperature": 0.8, "top_p": 0.95},
    }


def test_a_completion_is_a_raw_generate_with_every_option_that_is_set():
    sampling = SamplingParams(max_tokens=5, temperature=0.0, top_p=0.9, stop=("\n",), seed=42,
                              presence_penalty=1.5, frequency_penalty=1.0)
    up = OllamaWire().generate(CompletionRequest("[INST] why? [/INST]", sampling=sampling), "mistral")
    assert (up.method, up.path, up.stream) == ("POST", "/api/generate", True)
    assert up.body == {
        "model": "mistral", "prompt": "[INST] why? [/INST]", "raw": True, "stream": True,
        "options": {"num_predict": 5, "temperature": 0.0, "top_p": 0.9, "stop": ["\n"], "seed": 42,
                    "presence_penalty": 1.5, "frequency_penalty": 1.0},
    }


def test_embed_tags_ps_and_show_requests():
    wire = OllamaWire()
    up = wire.embed(EmbeddingRequest(("Why is the sky blue?", "Why is the grass green?")), "all-minilm")
    assert (up.method, up.path, up.stream) == ("POST", "/api/embed", False)
    assert up.body == {"model": "all-minilm", "input": ["Why is the sky blue?", "Why is the grass green?"], "truncate": False}
    assert (wire.list_models().method, wire.list_models().path) == ("GET", "/api/tags")
    assert (wire.running().method, wire.running().path) == ("GET", "/api/ps")
    show = wire.show("llama3.2")
    assert (show.method, show.path, show.body) == ("POST", "/api/show", {"model": "llama3.2"})


# ---- streams -------------------------------------------------------------------------

def test_a_chat_stream_cut_by_length_ends_with_its_counts_and_timings():
    events = decode(CHAT_STREAM_CUT_BY_LENGTH)
    assert events[:3] == [Token("The"), Token(" sky"), Token(" is")]
    done = events[3]
    assert len(events) == 4 and isinstance(done, Done)
    assert (done.model, done.finish_reason, done.usage) == (MODEL, "length", Usage(26, 3))
    assert done.timings == {"prompt_ms": 342.546, "predicted_ms": 60.0, "predicted_per_second": 50.0}


def test_a_generate_stream_reads_response():
    assert decode(GENERATE_STREAM) == [Token("Blue"), Token("."), Done(model=MODEL, finish_reason="stop", usage=Usage(8, 2))]


@pytest.mark.parametrize("reason, expected", [("stop", "stop"), ("length", "length"), ("unload", "stop"), (None, "stop")])
def test_done_reasons_are_stop_or_length(reason, expected):
    assert decode(json.dumps({"done": True, "done_reason": reason}))[-1].finish_reason == expected


def test_an_error_line_fails_the_stream_and_nothing_after_it_counts():
    events = decode(ERROR_STREAM + '{"response": "more", "done": true}\n')
    assert events[0] == Token("Once") and len(events) == 2
    failed = events[1]
    assert isinstance(failed, Failed) and type(failed.error) is UpstreamError and failed.error.code == "upstream_error"
    assert failed.error.message == ("the ollama upstream failed mid-stream: "
                                    "an error was encountered while running the model: unexpected EOF")


def test_a_busy_server_mid_stream_is_unavailable():
    (failed,) = decode('{"error": "server busy, please try again.  maximum pending requests exceeded"}')
    assert isinstance(failed.error, Unavailable) and failed.error.code == "upstream_overloaded"


def test_a_cut_stream_has_no_done():
    lines = CHAT_STREAM_CUT_BY_LENGTH.split("\n")[:3]
    assert decode("\n".join(lines)) == [Token("The"), Token(" sky"), Token(" is")]
    decoder = OllamaWire().decoder(MODEL)
    for line in GENERATE_STREAM.split("\n"):
        decoder.feed(line)
    assert decoder.finish() == []  # after the Done, too


@pytest.mark.parametrize("line", ["{truncated", '["done"]', '{"message": {"content": 3}, "done": false}',
                                  '{"response": ["x"], "done": false}'])
def test_a_line_without_the_documented_shape_is_a_bad_reply(line):
    (failed,) = decode(line)
    assert isinstance(failed, Failed) and failed.error.code == "upstream_bad_reply" and "ollama" in failed.error.message


# ---- replies --------------------------------------------------------------------------

def test_embeddings_with_their_prompt_tokens():
    body = {"model": "all-minilm", "embeddings": [[0.010071029, -0.0017594862], [-0.0098027075, 0.06042469]],
            "total_duration": 14143917, "load_duration": 1019500, "prompt_eval_count": 8}
    result = OllamaWire().embeddings(body, "all-minilm")
    assert result.vectors == [[0.010071029, -0.0017594862], [-0.0098027075, 0.06042469]]
    assert result.usage == Usage(8, 0) and result.model == "all-minilm"


@pytest.mark.parametrize("body", [None, {"embedding": [0.1]}, {"embeddings": [0.1, 0.2]}, {"embeddings": [["x"]]}])
def test_embeddings_without_the_documented_shape_are_a_bad_reply(body):
    with pytest.raises(UpstreamError) as caught:
        OllamaWire().embeddings(body, "all-minilm")
    assert caught.value.code == "upstream_bad_reply"


TAGS = {"models": [
    {"name": "codellama:13b", "modified_at": "2023-11-04T14:56:49.277302595-07:00", "size": 7365960935,
     "digest": "9f438cb9", "details": {"format": "gguf", "family": "llama", "families": None,
                                       "parameter_size": "13B", "quantization_level": "Q4_0"}},
    {"name": "nomic-embed-text:latest", "size": 274302450, "details": {"format": "gguf", "family": "nomic-bert"}},
    {"name": "all-minilm:latest", "details": {"family": "bert", "families": ["bert"]}},
    {"name": "snowflake-arctic:latest", "details": {"family": "llama", "families": ["xlm-roberta"]}},
    {"name": "bare:latest"},
]}


def test_models_keep_their_details_and_embedding_models_are_told():
    models = OllamaWire().models(TAGS)
    assert [(m.name, m.type, m.context_length) for m in models] == [
        ("codellama:13b", "llm", None), ("nomic-embed-text:latest", "embeddings", None),
        ("all-minilm:latest", "embeddings", None), ("snowflake-arctic:latest", "embeddings", None),
        ("bare:latest", "llm", None)]
    assert models[0].details == TAGS["models"][0]["details"]


def test_running_models_are_the_names_api_ps_lists():
    body = {"models": [{"name": "mistral:latest", "model": "mistral:latest", "size": 5137025024,
                        "details": {"family": "llama"}, "expires_at": "2024-06-04T14:38:31.83753-07:00"}]}
    assert OllamaWire().running_models(body) == ["mistral:latest"]
    assert OllamaWire().running_models({"models": []}) == []


@pytest.mark.parametrize("body", [None, {"models": None}, {"models": [{"size": 1}]}, {"models": ["llama3"]}])
def test_model_lists_without_the_documented_shape_are_a_bad_reply(body):
    with pytest.raises(UpstreamError, match="ollama upstream"):
        OllamaWire().models(body)
    with pytest.raises(UpstreamError):
        OllamaWire().running_models(body)


SHOW = {
    "modelfile": "# Modelfile generated by \"ollama show\"", "parameters": "num_keep 24", "template": "{{ .Prompt }}",
    "details": {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
                "parameter_size": "8.0B", "quantization_level": "Q4_0"},
    "model_info": {"general.architecture": "llama", "general.parameter_count": 8030261248,
                   "llama.context_length": 8192, "llama.embedding_length": 4096},
}


def test_model_details_read_the_context_length_of_the_architecture():
    details = OllamaWire().model_details(SHOW, "llama3.2")
    assert (details.name, details.type, details.context_length) == ("llama3.2", "llm", 8192)
    assert details.details == SHOW["details"]


def test_model_details_take_the_capabilities_newer_ollama_gives():
    body = {"details": {"family": "qwen3"}, "model_info": {"general.architecture": "qwen3", "qwen3.context_length": 40960},
            "capabilities": ["embedding"]}
    details = OllamaWire().model_details(body, "qwen3-embedding")
    assert (details.type, details.context_length, details.details["capabilities"]) == ("embeddings", 40960, ["embedding"])
    chat = OllamaWire().model_details({**body, "capabilities": ["completion", "tools"]}, "qwen3")
    assert chat.type == "llm"


def test_model_details_without_a_context_length_have_none():
    assert OllamaWire().model_details({"details": {}, "model_info": {"general.architecture": "llama"}}, "x").context_length is None
    assert OllamaWire().model_details({"model_info": None}, "x").context_length is None
    with pytest.raises(UpstreamError):
        OllamaWire().model_details({"model_info": ["llama"]}, "x")
    with pytest.raises(UpstreamError):
        OllamaWire().model_details("not found", "x")


@pytest.mark.parametrize("body, message", [
    ({"error": "model 'llama9' not found, try pulling it first"}, "model 'llama9' not found, try pulling it first"),
    ("404 page not found", "404 page not found"),
    ({"error": ""}, '{"error": ""}'),
    (None, "HTTP 500 with no error message"),
])
def test_error_message(body, message):
    assert OllamaWire().error_message(500, body) == message
