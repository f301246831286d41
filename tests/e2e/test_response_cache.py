"""The response cache end to end: a real daemon whose profile turns the cache on, real
workers (msting-tiny and stories260K), the unmodified `openai` package over the Unix
socket and TCP. A hit answers what the miss answered, says so in `x-msting-cache`,
calls no worker (the worker's prompt cache would still run a decode) and is counted
as a request; Cache-Control no-cache and no-store bypass it; a streamed request is
streamed from it; keys that differ by one parameter never share an answer."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest
import yaml

pytestmark = pytest.mark.e2e

# ../shared/models/stories260K.gguf, as tests/conftest.py finds it (its _stories_ok fixture checks it)
STORIES_PATH = Path(__file__).resolve().parents[3] / "shared" / "models" / "stories260K.gguf"

CHAT = [{"role": "user", "content": "Once upon a time"}]


def write_default_profile(dh, body: dict) -> None:
    folder = dh.home / "config" / "profiles"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "default.yaml").write_text(yaml.safe_dump(body, sort_keys=False))


def socket_client(dh, headers: dict | None = None) -> openai.OpenAI:
    http = httpx.Client(transport=httpx.HTTPTransport(uds=str(dh.socket)), trust_env=False)
    return openai.OpenAI(base_url="http://msting/v1", api_key="unused", http_client=http, max_retries=0,
                         default_headers=headers or {})


@pytest.fixture(scope="module")
def cached(tmp_path_factory, _stories_ok):
    """One daemon for the module: story (stories260K, the default) and tiny (msting-tiny), cache on."""
    from daemon_home import DaemonHome

    if not _stories_ok:
        pytest.skip("stories260K is absent")
    dh = DaemonHome()
    write_default_profile(dh, {
        "default_model": "story",
        "models": {"story": {"source": str(STORIES_PATH), "n_ctx": 512, "parallel": 2},
                   "tiny": {"source": "builtin:tiny", "n_ctx": 512, "parallel": 1}},
        "cache": {"enabled": True, "ttl_sec": 600, "max_entries": 500},
    })
    dh.write_config()
    try:
        dh.start()
        yield dh
    finally:
        dh.cleanup()


def chat(client: openai.OpenAI, **kw):
    """(the reply, its x-msting-cache header)."""
    args = {"model": "story", "messages": CHAT, "max_tokens": 24, "temperature": 0} | kw
    raw = client.chat.completions.with_raw_response.create(**args)
    return raw.parse(), raw.headers.get("x-msting-cache")


def test_a_hit_answers_what_the_miss_did(cached):
    client = socket_client(cached)
    first, how = chat(client, messages=[{"role": "user", "content": "A hit after a miss"}])
    assert how == "miss"
    second, how = chat(client, messages=[{"role": "user", "content": "A hit after a miss"}])
    assert how == "hit"
    assert second.choices[0].message.content == first.choices[0].message.content
    assert second.choices[0].finish_reason == first.choices[0].finish_reason
    assert second.model == first.model == "story"
    assert second.usage.completion_tokens == first.usage.completion_tokens


def test_a_hit_calls_no_worker_and_is_counted(cached):
    client = socket_client(cached)
    body = {"messages": [{"role": "user", "content": "counted once"}]}
    chat(client, **body)

    def served() -> float:
        with cached.client() as c:
            text = c.get("/metrics").text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("msting_requests_total{") and 'model="story"' in line)

    def worker_tokens() -> float:
        with cached.client() as c:
            text = c.get("/metrics").text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("msting_completion_tokens_total{") and 'model="story"' in line)

    before_requests, before_tokens = served(), worker_tokens()
    _, how = chat(client, **body)
    assert how == "hit"
    assert served() == before_requests + 1  # counted as a request...
    assert worker_tokens() == before_tokens  # ...that generated nothing
    _, how = chat(client, **body, extra_headers={"Cache-Control": "no-cache"})
    assert how == "miss"
    assert served() == before_requests + 2
    assert worker_tokens() > before_tokens  # a miss does


def test_only_reproducible_requests_are_cached(cached):
    client = socket_client(cached)
    body = {"messages": [{"role": "user", "content": "random sampling"}], "temperature": 0.9}
    assert chat(client, **body)[1] == "miss"
    assert chat(client, **body)[1] == "miss"  # no seed, temperature 0.9: not reproducible, never stored
    seeded = body | {"seed": 7}
    assert chat(client, **seeded)[1] == "miss"
    assert chat(client, **seeded)[1] == "hit"  # a fixed seed is reproducible


def test_no_cache_answers_afresh_and_stores(cached):
    client = socket_client(cached)
    body = {"messages": [{"role": "user", "content": "no-cache then a hit"}]}
    first, how = chat(client, **body)
    assert how == "miss"
    again, how = chat(client, **body, extra_headers={"Cache-Control": "no-cache"})
    assert how == "miss"  # not read...
    assert again.choices[0].message.content == first.choices[0].message.content
    fresh = {"messages": [{"role": "user", "content": "stored by a no-cache request"}]}
    assert chat(client, **fresh, extra_headers={"Cache-Control": "no-cache"})[1] == "miss"
    assert chat(client, **fresh)[1] == "hit"  # ...but written


def test_no_store_neither_reads_nor_writes(cached):
    client = socket_client(cached)
    body = {"messages": [{"role": "user", "content": "no-store"}]}
    assert chat(client, **body, extra_headers={"Cache-Control": "no-store"})[1] == "miss"
    assert chat(client, **body)[1] == "miss"  # nothing was stored
    assert chat(client, **body)[1] == "hit"
    assert chat(client, **body, extra_headers={"Cache-Control": "no-store"})[1] == "miss"  # nor read


def _streamed(client: openai.OpenAI, **kw) -> tuple[str, str | None, list]:
    args = {"model": "story", "messages": CHAT, "max_tokens": 24, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}} | kw
    raw = client.chat.completions.with_raw_response.create(**args)
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, raw.headers.get("x-msting-cache"), chunks


def test_a_streamed_request_streams_the_cached_answer(cached):
    client = socket_client(cached)
    messages = [{"role": "user", "content": "streamed from the cache"}]
    whole, how = chat(client, messages=messages)
    assert how == "miss"
    text, how, chunks = _streamed(client, messages=messages)
    assert how == "hit"
    assert text == whole.choices[0].message.content
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # in pieces, as a stream is
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [whole.choices[0].finish_reason]


def test_a_streamed_miss_is_stored_whole(cached):
    client = socket_client(cached)
    messages = [{"role": "user", "content": "a stream stored"}]
    text, how, _ = _streamed(client, messages=messages)
    assert how == "miss"
    reply, how = chat(client, messages=messages)
    assert how == "hit"
    assert reply.choices[0].message.content == text
    again, how, _ = _streamed(client, messages=messages)
    assert (again, how) == (text, "hit")


def test_completions_are_cached_apart_from_chats(cached):
    client = socket_client(cached)
    raw = client.completions.with_raw_response.create(model="story", prompt="Once upon a time", max_tokens=16, temperature=0)
    assert raw.headers["x-msting-cache"] == "miss"
    raw2 = client.completions.with_raw_response.create(model="story", prompt="Once upon a time", max_tokens=16, temperature=0)
    assert raw2.headers["x-msting-cache"] == "hit"
    assert raw2.parse().choices[0].text == raw.parse().choices[0].text


BASE = {"model": "story", "messages": [{"role": "user", "content": "one parameter apart"}], "max_tokens": 20, "temperature": 0}
VARIANTS = {
    "max_tokens": {"max_tokens": 21},
    "temperature_with_seed": {"temperature": 0.5, "seed": 3},
    "seed": {"seed": 3},
    "top_p": {"top_p": 0.5},
    "stop": {"stop": ["zzz"]},
    "presence_penalty": {"presence_penalty": 0.5},
    "frequency_penalty": {"frequency_penalty": 0.5},
    "model": {"model": "tiny"},
    "model_by_service": {"model": "local~tiny"},
    "content": {"messages": [{"role": "user", "content": "one parameter apart!"}]},
    "role": {"messages": [{"role": "system", "content": "one parameter apart"}]},
    "another_message": {"messages": [{"role": "user", "content": "one parameter apart"}, {"role": "user", "content": ""}]},
}


def test_keys_that_differ_by_one_parameter_never_collide(cached):
    """Each variant misses after the base is cached, and is then a hit of its own: each
    is cached, apart (not merely left out). `model` and `local~model` name the same
    model: one key (the resolved service~model)."""
    client = socket_client(cached)
    assert chat(client, **BASE)[1] == "miss"
    assert chat(client, **BASE)[1] == "hit"
    seen = set()
    for name, change in VARIANTS.items():
        body = BASE | change
        first = chat(client, **body)[1]
        if name == "model_by_service":  # the same resolved model as "tiny", cached just before
            assert first == "hit", name
            continue
        assert first == "miss", name
        assert chat(client, **body)[1] == "hit", name
        seen.add(name)
    assert chat(client, **BASE)[1] == "hit"  # the base answer is still its own
    assert len(seen) == len(VARIANTS) - 1


def test_the_cache_over_tcp_says_the_same(cached):
    client = openai.OpenAI(base_url=f"{cached.url}/v1", api_key="unused", max_retries=0)
    body = {"messages": [{"role": "user", "content": "over tcp"}]}
    assert chat(client, **body)[1] == "miss"
    assert chat(client, **body)[1] == "hit"
