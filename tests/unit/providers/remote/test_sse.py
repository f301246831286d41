"""msting.providers.remote.sse: SSE lines as (event, data) pairs, and the reply-reading
helpers the three wire formats share."""

from __future__ import annotations

from msting.api.errors import Unavailable, UpstreamError
from msting.api.events import Failed
from msting.providers.remote import sse
from msting.providers.remote.sse import SseParser


def parse(text: str) -> list[tuple[str, str]]:
    parser = SseParser()
    return [pair for line in text.split("\n") if (pair := parser.feed(line)) is not None]


def test_data_lines_come_at_once_named_by_their_event_line():
    parser = SseParser()
    assert parser.feed("event: message_start") is None
    assert parser.feed('data: {"type": "message_start"}') == ("message_start", '{"type": "message_start"}')
    assert parser.feed("") is None
    assert parser.feed('data: {"a": 1}') == ("message", '{"a": 1}')  # the name does not outlive its event


def test_comments_blank_lines_and_other_fields_yield_nothing():
    text = ": keep-alive\n\nid: 7\nretry: 3000\ndata: [DONE]\n\n"
    assert parse(text) == [("message", "[DONE]")]


def test_the_space_after_the_colon_is_optional_and_only_one_is_removed():
    assert parse("data:x\ndata:  two spaces\ndata\n") == [("message", "x"), ("message", " two spaces"), ("message", "")]


def test_crlf_line_ends_and_a_leading_bom_are_ignored():
    parser = SseParser()
    assert parser.feed("\ufeffevent: ping\r\n") is None
    assert parser.feed('data: {"type": "ping"}\r\n') == ("ping", '{"type": "ping"}')


def test_json_object_is_none_for_anything_but_an_object():
    assert sse.json_object('{"a": [1]}') == {"a": [1]}
    assert sse.json_object("[1, 2]") is None
    assert sse.json_object("{not json") is None


def test_counts_and_sizes_take_only_non_negative_integers():
    assert [sse.count(v) for v in (3, 0, -1, 2.5, True, None, "4")] == [3, 0, 0, 0, 0, 0, 0]
    assert [sse.positive_int(v) for v in (8192, 0, True, "8192")] == [8192, None, None, None]


def test_a_vector_is_a_list_of_numbers():
    assert sse.vector([1, 0.5, -2]) == [1.0, 0.5, -2.0]
    assert sse.vector([[0.1, 0.2]]) is None  # token-level embeddings (a model without pooling)
    assert sse.vector([0.1, "x"]) is None and sse.vector([True]) is None and sse.vector(None) is None


def test_a_stream_error_is_unavailable_only_when_busy():
    busy = sse.stream_error("ollama", "server busy", True)
    assert isinstance(busy, Failed) and isinstance(busy.error, Unavailable) and busy.error.code == "upstream_overloaded"
    assert "the ollama upstream failed mid-stream: server busy" == busy.error.message
    failed = sse.stream_error("openai", "", False)
    assert isinstance(failed.error, UpstreamError) and failed.error.code == "upstream_error"
    assert "no message given" in failed.error.message


def test_overloaded_reads_statuses_types_and_messages():
    assert sse.overloaded(429) and sse.overloaded(None, "rate_limit_exceeded") and sse.overloaded("Server Overloaded")
    assert not sse.overloaded(400, "invalid_request_error", "context length exceeded", True)


def test_embedding_models_are_told_by_name_or_family():
    assert sse.says_embeddings("nomic-embed-text:latest") and sse.says_embeddings("all-minilm", "bert")
    assert not sse.says_embeddings("llama3.2:3b", "llama", None)


def test_error_text_cuts_long_text_and_names_the_status_when_there_is_none():
    assert sse.error_text(502, "<html>Bad gateway</html>") == "<html>Bad gateway</html>"
    long = sse.error_text(500, "x" * 5000)
    assert len(long) == sse.MAX_ERROR_TEXT + len(" [...]") and long.endswith(" [...]")
    assert sse.error_text(503, None) == "HTTP 503 with no error message"
    assert sse.error_text(500, {"unexpected": 1}) == '{"unexpected": 1}'
