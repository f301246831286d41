"""Routes as rules: each condition kind matched and refused, in order, on real typed
requests; the profile's policy keys validated with dotted-key problems; catastrophic
regular expressions refused when the profile is read."""

from __future__ import annotations

import pytest

from msting.api.requests import ChatRequest, CompletionRequest, EmbeddingRequest, Message, RequestMeta
from msting.config.errors import ConfigError
from msting.config.profiles.policy import MATCH_CHARS
from msting.config.profiles.schema import parse_profile
from msting.policy.rules import estimate_tokens, explain_rules, facts_of, failed_conditions, first_match

MODELS = {"a": {"source": "builtin:tiny"}, "b": {"source": "builtin:tiny"}, "e": {"source": "builtin:tiny", "type": "embeddings"}}


def policy(routes: dict, **extra):
    return parse_profile({"default_model": "a", "models": MODELS, "routes": routes, **extra}, "t").policy


def chat(text: str, *, meta: RequestMeta = RequestMeta(), system: str = "") -> ChatRequest:
    messages = ((Message("system", system),) if system else ()) + (Message("user", text),)
    return ChatRequest(messages, None, meta=meta)


def only(route: dict, request) -> list[str]:
    p = policy({"r": {"to": "b", **route}})
    return failed_conditions(p.routes[0], facts_of(request))


def test_capability():
    assert only({"capability": "chat"}, chat("hi")) == []
    assert only({"capability": "completion"}, CompletionRequest("hi")) == []
    assert only({"capability": "embeddings"}, EmbeddingRequest(("x",))) == []
    assert only({"capability": "chat"}, CompletionRequest("hi"))[0].startswith("capability:")
    assert only({"capability": "embeddings"}, chat("hi"))[0].startswith("capability:")


def test_code_is_a_fence_or_the_capability_header():
    assert only({"capability": "code"}, chat("fix this:\n```py\nx=1\n```")) == []
    assert only({"capability": "code"}, chat("fix it", meta=RequestMeta(headers={"x-msting-capability": "code"}))) == []
    assert only({"capability": "code"}, chat("tell me a story"))[0].startswith("capability:")


def test_prompt_length_in_estimated_tokens():
    short, long = chat("x" * 40), chat("x" * 400)  # 10 and 100 tokens at 4 characters each
    assert estimate_tokens("x" * 40) == 10
    assert only({"max_prompt_tokens": 50}, short) == [] and only({"max_prompt_tokens": 50}, long)
    assert only({"min_prompt_tokens": 50}, long) == [] and only({"min_prompt_tokens": 50}, short)
    assert only({"min_prompt_tokens": 10, "max_prompt_tokens": 10}, short) == []


def test_regex_on_the_last_user_message_only():
    request = ChatRequest((Message("user", "about python"), Message("assistant", "ok"), Message("user", "and rust?")))
    assert only({"regex": r"\brust\b"}, request) == []
    assert only({"regex": r"python"}, request)  # an earlier message does not count
    assert only({"regex": "story"}, chat("x", system="story"))  # nor does a system message


def test_a_regex_sees_only_the_last_match_chars():
    text = "needle" + "x" * MATCH_CHARS
    assert only({"regex": "needle"}, chat(text))
    assert only({"regex": "needle"}, chat("x" * MATCH_CHARS + "needle")) == []


def test_metadata_user_field_and_headers():
    meta = RequestMeta(user="alice@example", headers={"x-msting-team": "search", "user-agent": "OpenAI/Python 1.0"})
    assert only({"user": "^alice"}, chat("x", meta=meta)) == []
    assert only({"user": "^bob"}, chat("x", meta=meta))
    assert only({"user": "^alice"}, chat("x"))  # no user field: no match
    assert only({"headers": {"X-Msting-Team": "^search$", "user-agent": "OpenAI"}}, chat("x", meta=meta)) == []
    assert only({"headers": {"x-msting-team": "^ads$"}}, chat("x", meta=meta))


def test_tools():
    with_tools = chat("x", meta=RequestMeta(tools_requested=True))
    assert only({"tools": True}, with_tools) == [] and only({"tools": True}, chat("x"))
    assert only({"tools": False}, chat("x")) == [] and only({"tools": False}, with_tools)


def test_every_condition_must_hold_and_the_first_route_wins():
    p = policy({"code": {"to": "b", "capability": "chat", "regex": "def "},
                "long": {"to": "b", "min_prompt_tokens": 100},
                "rest": {"to": "a"}})
    assert first_match(p.routes, facts_of(chat("def f(): pass"))).name == "code"
    assert first_match(p.routes, facts_of(chat("x" * 800))).name == "long"
    assert first_match(p.routes, facts_of(chat("def " + "x" * 800))).name == "code"
    assert first_match(p.routes, facts_of(CompletionRequest("def f"))).name == "rest"  # not a chat
    explained = explain_rules(p.routes, facts_of(CompletionRequest("def f")))
    assert [e["matches"] for e in explained] == [False, False, True]
    assert explained[0]["failed"] == ["capability: the request is completion, not chat"]


def test_no_route_matches():
    p = policy({"only": {"to": "b", "regex": "never"}})
    assert first_match(p.routes, facts_of(chat("x"))) is None


@pytest.mark.parametrize("pattern", ["(a+)+$", "(a*)*", "(.*a){2,}", "((ab)+|c)+", "(?:x+y?)*z"])
def test_catastrophic_regexes_are_refused_at_load(pattern):
    with pytest.raises(ConfigError) as info:
        policy({"r": {"to": "b", "regex": pattern}})
    assert "routes.r.regex" in str(info.value) and "exponential" in str(info.value)


@pytest.mark.parametrize("pattern", [r"\bdef\s+\w+\(", "(ab){2,5}", "a+b+", "(?i)summar(y|ize)", "(foo|bar)+"])
def test_ordinary_regexes_load(pattern):
    assert policy({"r": {"to": "b", "regex": pattern}}).routes[0].regex.pattern == pattern


def test_problems_are_dotted_and_all_listed():
    with pytest.raises(ConfigError) as info:
        parse_profile({"default_model": "a", "models": MODELS,
                       "routes": {"x": {"to": "nosuch", "regex": "("}, "y": {"capability": "vision", "to": "a"},
                                  "z": {"to": "a", "min_prompt_tokens": 9, "max_prompt_tokens": 2},
                                  "h": {"to": "a", "headers": {"authorization": "x"}}, "bad name": {"to": "a"}},
                       "router_model": {"model": "e", "budget": 5}, "cache": {"ttl_sec": 0}}, "t")
    text = str(info.value)
    for key in ("routes.x.regex", "routes.y.capability", "routes.z.min_prompt_tokens", "routes.h.headers",
                "routes.bad name", "router_model.budget", "cache.ttl_sec", "routes.x.to", "router_model.model"):
        assert f"{key}:" in text, (key, text)


def test_routes_keep_their_order_and_targets():
    p = policy({"second": {"to": "local~b"}, "first": {"to": "default"}}, router_model={"model": "a", "budget_ms": 20},
               cache={"enabled": True, "max_mb": 1})
    assert [r.name for r in p.routes] == ["second", "first"]
    assert p.router_model.model == "a" and p.router_model.budget_ms == 20
    assert p.cache.enabled and p.cache.max_bytes == 1 << 20


def test_a_router_model_needs_two_routes():
    with pytest.raises(ConfigError, match="router_model.model: a router model chooses between routes"):
        policy({"one": {"to": "a"}}, router_model={"model": "a"})
