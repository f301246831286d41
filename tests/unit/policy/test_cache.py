"""The response cache on its own: canonical keys (one per distinct request, whatever
the order of what was written), reproducibility, TTL, the entry and byte bounds."""

from __future__ import annotations

from dataclasses import replace

from msting.api.events import Usage
from msting.api.requests import ChatRequest, CompletionRequest, Message, RequestMeta, SamplingParams
from msting.api.tools import Tool, ToolCall, ToolChoice
from msting.policy.cache import CachedAnswer, ResponseCache, canonical, reproducible

ANSWER = CachedAnswer("m", "the answer", "stop", Usage(3, 2))
BASE = ChatRequest((Message("user", "hi"),), "m", SamplingParams(max_tokens=8, temperature=0.0))


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def key(request=BASE, profile="p", service="local", model="m") -> str:
    return canonical(request, profile, service, model)


def test_reproducible():
    assert reproducible(SamplingParams(temperature=0.0))
    assert reproducible(SamplingParams(temperature=0.8, seed=1))
    assert not reproducible(SamplingParams(temperature=0.8))
    assert not reproducible(SamplingParams())  # the model's default temperature, no seed


def test_one_parameter_apart_is_another_key():
    s = BASE.sampling
    variants = [
        replace(BASE, sampling=replace(s, max_tokens=9)), replace(BASE, sampling=replace(s, temperature=0.5, seed=1)),
        replace(BASE, sampling=replace(s, seed=0)), replace(BASE, sampling=replace(s, top_p=0.9)),
        replace(BASE, sampling=replace(s, presence_penalty=0.1)), replace(BASE, sampling=replace(s, frequency_penalty=0.1)),
        replace(BASE, sampling=replace(s, stop=("x",))), replace(BASE, sampling=replace(s, stop=("x", "y"))),
        replace(BASE, sampling=replace(s, choices=("a", "b"))),
        replace(BASE, messages=(Message("system", "hi"),)), replace(BASE, messages=(Message("user", "hi "),)),
        replace(BASE, messages=(Message("user", "h"), Message("user", "i"))),
        CompletionRequest("hi", "m", s),
    ]
    keys = {key()} | {key(v) for v in variants} | {key(profile="q"), key(service="remote"), key(model="n")}
    assert len(keys) == len(variants) + 4


def test_what_does_not_change_the_answer_does_not_change_the_key():
    assert key(replace(BASE, meta=RequestMeta(client="x", user="u"))) == key()
    assert key(replace(BASE, model="local~m")) == key()  # the key names the resolved model, not the request's name


def test_a_hit_compares_the_whole_canonical_text():
    cache = ResponseCache(ttl_sec=10, max_entries=10, max_bytes=1 << 20)
    cache.put(key(), ANSWER)
    assert cache.get(key()) == ANSWER
    assert cache.get(key(model="n")) is None
    assert (cache.hits, cache.misses) == (1, 1)


def test_ttl():
    clock = Clock()
    cache = ResponseCache(ttl_sec=10, max_entries=10, max_bytes=1 << 20, clock=clock)
    cache.put(key(), ANSWER)
    clock.now += 9.9
    assert cache.peek(key()) and cache.get(key()) == ANSWER
    clock.now += 0.1
    assert not cache.peek(key()) and cache.get(key()) is None
    assert len(cache) == 0 and cache.bytes == 0


def test_entries_bound_drops_the_least_recently_used():
    cache = ResponseCache(ttl_sec=10, max_entries=2, max_bytes=1 << 20)
    a, b, c = key(model="a"), key(model="b"), key(model="c")
    cache.put(a, ANSWER)
    cache.put(b, ANSWER)
    assert cache.get(a) is not None  # a is used: b is now the oldest
    cache.put(c, ANSWER)
    assert cache.get(b) is None and cache.get(a) is not None and cache.get(c) is not None


def test_bytes_bound():
    big = replace(ANSWER, text="x" * 1000)
    cache = ResponseCache(ttl_sec=10, max_entries=100, max_bytes=5000)
    for i in range(10):
        cache.put(key(model=str(i)), big)
        assert cache.bytes <= 5000
    assert 1 <= len(cache) < 10
    assert cache.get(key(model="9")) is not None
    cache.put(key(model="huge"), replace(ANSWER, text="x" * 10000))  # larger than the whole bound: not kept
    assert cache.get(key(model="huge")) is None and cache.get(key(model="9")) is not None


def test_put_again_replaces():
    cache = ResponseCache(ttl_sec=10, max_entries=10, max_bytes=1 << 20)
    cache.put(key(), ANSWER)
    size = cache.bytes
    cache.put(key(), replace(ANSWER, text="new"))
    assert len(cache) == 1 and cache.get(key()).text == "new" and cache.bytes < size


def test_tools_tool_choice_and_tool_messages_are_part_of_the_key():
    weather, clock = Tool("get_weather", None, '{"type":"object"}'), Tool("get_time")
    call = ToolCall("c1", "get_weather", '{"city":"Paris"}')
    turn = (Message("user", "hi"), Message("assistant", "", tool_calls=(call,)), Message("tool", "sunny", tool_call_id="c1"))
    variants = [
        BASE, replace(BASE, tools=(weather,)), replace(BASE, tools=(clock,)), replace(BASE, tools=(weather, clock)),
        replace(BASE, tools=(weather,), tool_choice=ToolChoice("required")),
        replace(BASE, tools=(weather,), tool_choice=ToolChoice("function", "get_weather")),
        replace(BASE, tools=(weather,), parallel_tool_calls=False),
        replace(BASE, tools=(Tool("get_weather", "with a description", '{"type":"object"}'),)),
        replace(BASE, messages=turn), replace(BASE, messages=turn[:2] + (Message("tool", "rainy", tool_call_id="c1"),)),
        replace(BASE, messages=(turn[0], Message("assistant", "", tool_calls=(replace(call, arguments='{"city":"Rome"}'),)),
                                turn[2])),
    ]
    assert len({key(v) for v in variants}) == len(variants)


def test_an_answer_with_tool_calls_is_kept_whole():
    cache = ResponseCache(ttl_sec=60, max_entries=4, max_bytes=10_000)
    answer = CachedAnswer("m", "", "tool_calls", Usage(3, 2), (ToolCall("c1", "get_weather", '{"city":"Paris"}'),))
    cache.put(key(), answer)
    assert cache.get(key()) == answer
