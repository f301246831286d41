"""The request router end to end: a real daemon whose profile has routes, real workers
(stories260K and msting-tiny), the unmodified `openai` package. Each rule kind routes a
request that names no model, `x-msting-route` names the rule; a named model is never
routed; /v1/execute is routed; `msting llm route --explain` tells why. The router model
(stories260K, its answer constrained to the route names) chooses a route for two local
models, and when it is too slow for its budget the rules decide."""

from __future__ import annotations

import json

from pathlib import Path

import httpx
import openai
import pytest
import yaml

pytestmark = pytest.mark.e2e

# ../shared/models/stories260K.gguf, as tests/conftest.py finds it (its _stories_ok fixture checks it)
STORIES_PATH = Path(__file__).resolve().parents[3] / "shared" / "models" / "stories260K.gguf"

NEVER = "^never-matches$"


def start_with_profile(body: dict, env: dict | None = None):
    from daemon_home import DaemonHome

    dh = DaemonHome()
    folder = dh.home / "config" / "profiles"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "default.yaml").write_text(yaml.safe_dump(body, sort_keys=False))
    dh.write_config()
    dh.env.update(env or {})
    dh.start()
    return dh


def socket_client(dh) -> openai.OpenAI:
    http = httpx.Client(transport=httpx.HTTPTransport(uds=str(dh.socket)), trust_env=False)
    return openai.OpenAI(base_url="http://msting/v1", api_key="unused", http_client=http, max_retries=0)


def explain(dh, body: dict, headers: dict | None = None) -> dict:
    with dh.client() as c:
        r = c.post("/v1/route/explain", json=body, headers=headers or {})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def ruled(_stories_ok):
    if not _stories_ok:
        pytest.skip("stories260K is absent")
    dh = start_with_profile({
        "default_model": "story",
        "models": {"story": {"source": str(STORIES_PATH), "n_ctx": 512, "parallel": 2},
                   "tiny": {"source": "builtin:tiny", "n_ctx": 512, "parallel": 2}},
        "routes": {
            "embed": {"to": "tiny", "capability": "embeddings"},
            "code": {"to": "tiny", "capability": "code"},
            "long": {"to": "tiny", "min_prompt_tokens": 60},
            "python": {"to": "tiny", "regex": r"(?i)\bpython\b"},
            "vip": {"to": "tiny", "user": "^vip-"},
            "team": {"to": "local~tiny", "headers": {"x-msting-team": "^search$"}},
            "tools": {"to": "tiny", "tools": True},
            "short-completions": {"to": "tiny", "capability": "completion", "max_prompt_tokens": 3},
        },
    })
    try:
        yield dh
    finally:
        dh.cleanup()


def routed_chat(client, content: str, **kw):
    raw = client.chat.completions.with_raw_response.create(
        messages=[{"role": "user", "content": content}], max_tokens=8, temperature=0, model=kw.pop("model", None) or openai.NOT_GIVEN, **kw)
    return raw.parse(), raw.headers.get("x-msting-route"), raw.headers.get("x-msting-route-by")


@pytest.mark.parametrize("content, kw, route", [
    ("fix this:\n```\nx = 1\n```", {}, "code"),
    ("tell me " + "a story " * 40, {}, "long"),  # about 80 tokens by the estimate
    ("is Python fun", {}, "python"),
    ("hello", {"user": "vip-7"}, "vip"),
    ("hello", {"extra_headers": {"X-Msting-Team": "search"}}, "team"),
    ("hello", {"extra_headers": {"X-Msting-Capability": "code"}}, "code"),
])
def test_each_rule_kind_routes_a_chat(ruled, content, kw, route):
    reply, name, by = routed_chat(socket_client(ruled), content, **kw)
    assert (name, by) == (route, "rule")
    assert reply.model == "tiny"


def test_no_rule_matching_leaves_the_default_model(ruled):
    reply, name, by = routed_chat(socket_client(ruled), "hello", user="regular", extra_headers={"X-Msting-Team": "ads"})
    assert (name, by) == (None, None)
    assert reply.model == "story"


def test_a_named_model_is_never_routed(ruled):
    reply, name, _ = routed_chat(socket_client(ruled), "is python fun", model="story")
    assert name is None and reply.model == "story"


def test_the_first_matching_route_wins(ruled):
    _, name, _ = routed_chat(socket_client(ruled), "python:\n```\nprint(1)\n```")  # code and python both match
    assert name == "code"


def test_embeddings_and_completions_by_capability(ruled):
    client = socket_client(ruled)
    raw = client.embeddings.with_raw_response.create(input=["python"], model=openai.NOT_GIVEN)
    assert raw.headers["x-msting-route"] == "embed"
    assert raw.parse().model == "tiny"
    raw = client.completions.with_raw_response.create(model=openai.NOT_GIVEN, prompt="Once", max_tokens=4, temperature=0)
    assert raw.headers["x-msting-route"] == "short-completions" and raw.parse().model == "tiny"
    raw = client.completions.with_raw_response.create(model=openai.NOT_GIVEN, prompt="Once upon a time there", max_tokens=4)
    assert raw.headers.get("x-msting-route") is None and raw.parse().model == "story"


def test_a_routed_stream_says_its_route(ruled):
    raw = socket_client(ruled).chat.completions.with_raw_response.create(
        messages=[{"role": "user", "content": "python?"}], max_tokens=8, temperature=0, stream=True, model=openai.NOT_GIVEN)
    chunks = list(raw.parse())
    assert raw.headers["x-msting-route"] == "python"
    assert {c.model for c in chunks} == {"tiny"}


def test_execute_without_a_model_is_routed(ruled):
    with ruled.client() as c:
        r = c.post("/v1/execute", json={"messages": [{"role": "user", "content": "python please"}], "max_tokens": 4})
        assert r.status_code == 200, r.text
        assert (r.headers["x-msting-route"], r.json()["model"]) == ("python", "tiny")
        r = c.post("/v1/execute", json={"prompt": "Once upon a time there was", "max_tokens": 4})
        assert "x-msting-route" not in r.headers and r.json()["model"] == "story"


def test_tools_are_matched_in_the_dry_run(ruled):
    """The tools rule routes here to a local model, which does no tool calling (a chat with
    tools is a 400 naming it: tests/e2e/test_tool_calling.py routes tools to a remote
    service), so the rule is seen through the dry run: the same body, the same rules."""
    tool = {"type": "function", "function": {"name": "lookup"}}
    with_tools = explain(ruled, {"messages": [{"role": "user", "content": "hi"}], "tools": [tool]})
    assert (with_tools["route"], with_tools["by"], with_tools["model"]) == ("tools", "rule", "local~tiny")
    assert with_tools["request"]["tools"] is True
    with pytest.raises(openai.BadRequestError, match=r"the service 'local' \(model 'tiny'\) does not support tools"):
        socket_client(ruled).chat.completions.create(messages=[{"role": "user", "content": "hi"}], tools=[tool],
                                                     model=openai.NOT_GIVEN)
    without = explain(ruled, {"messages": [{"role": "user", "content": "hi"}]})
    assert without["route"] is None
    assert next(r for r in without["routes"] if r["route"] == "tools")["failed"] == ["tools: the request requests none"]


def test_the_dry_run_says_why(ruled):
    out = explain(ruled, {"messages": [{"role": "user", "content": "hello"}], "user": "vip-1"}, {"x-msting-team": "ads"})
    assert (out["route"], out["by"], out["model"]) == ("vip", "rule", "local~tiny")
    assert out["why"] == "route vip is the first whose rule matches"
    rows = {r["route"]: r for r in out["routes"]}
    assert rows["vip"]["matches"] and not rows["team"]["matches"]
    assert rows["team"]["failed"] == ["headers: /^search$/ is not in x-msting-team ('ads')"]
    assert rows["long"]["failed"][0].startswith("min_prompt_tokens: the prompt is about 2 tokens")
    assert out["cache"] == {"enabled": False, "cacheable": False, "reason": "the profile's response cache is off", "key": None,
                            "cached": False}
    named = explain(ruled, {"messages": [{"role": "user", "content": "python"}], "model": "story"})
    assert named["route"] is None and "names the model 'story'" in named["why"]


def test_the_cli_explains(ruled, tmp_path):
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"messages": [{"role": "user", "content": "is python fun?"}]}))
    proc = ruled.cli("llm", "route", "--explain", str(request))
    assert proc.returncode == 0, proc.stderr
    assert "route: python (its rule matched) -> local~tiny" in proc.stdout
    assert "why: route python is the first whose rule matches" in proc.stdout
    assert "regex: /(?i)\\bpython\\b/ is not in the last user message" not in proc.stdout
    proc = ruled.cli("llm", "route", "--explain", str(request), "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["route"] == "python"
    request.write_text("[1, 2]")
    proc = ruled.cli("llm", "route", "--explain", str(request))
    assert proc.returncode == 2 and "must hold a JSON object" in " ".join(proc.stderr.split())
    request.write_text(json.dumps({"prompt": "x", "messages": []}))
    proc = ruled.cli("llm", "route", "--explain", str(request))
    assert proc.returncode == 2 and "give exactly one of 'messages'" in " ".join(proc.stderr.split())


# ---- the router model -----------------------------------------------------------------

def router_profile(stories: str, budget_ms: float) -> dict:
    """Two local models (stories260K, msting-tiny) and stories260K as the router model;
    the routes' rules match nothing but the slow marker, so only the router model (or that
    rule) routes."""
    return {
        "default_model": "story",
        "models": {"story": {"source": stories, "n_ctx": 512, "parallel": 2},
                   "tiny": {"source": "builtin:tiny", "n_ctx": 512, "parallel": 2},
                   "router": {"source": stories, "n_ctx": 512, "parallel": 2}},
        "routes": {
            "stories": {"to": "story", "description": "a story for children", "user": NEVER},
            "words": {"to": "tiny", "description": "anything else", "user": NEVER},
            "slow": {"to": "tiny", "description": "requests marked slow", "regex": "SLOWMARK"},
        },
        "router_model": {"model": "router", "budget_ms": budget_ms},
    }


TARGETS = {"stories": "story", "words": "tiny", "slow": "tiny"}


@pytest.fixture(scope="module")
def with_router(_stories_ok):
    if not _stories_ok:
        pytest.skip("stories260K is absent")
    dh = start_with_profile(router_profile(str(STORIES_PATH), 5000))  # a generous budget: only the choice is tested here
    try:
        yield dh
    finally:
        dh.cleanup()


@pytest.mark.parametrize("content", ["Once upon a time there was a little dog", "what is 2 + 2", "SLOWMARK"])
def test_the_router_model_chooses_a_route(with_router, content):
    out = explain(with_router, {"messages": [{"role": "user", "content": content}]})
    decision = out["router_model"]
    assert decision["model"] == "router" and decision["route"] in TARGETS, out
    assert decision["completion_tokens"] >= 1 and decision["prompt_tokens"] > 10 and decision["ms"] > 0
    assert (out["route"], out["by"]) == (decision["route"], "router-model")
    # the request itself goes where the router model sends it (greedy: the same choice again)
    reply, name, by = routed_chat(socket_client(with_router), content)
    assert (name, by) == (decision["route"], "router-model")
    assert reply.model == TARGETS[name]


def test_a_routed_stream_asks_the_router_model_first(with_router):
    out = explain(with_router, {"messages": [{"role": "user", "content": "a stream"}]})
    raw = socket_client(with_router).chat.completions.with_raw_response.create(
        messages=[{"role": "user", "content": "a stream"}], max_tokens=8, temperature=0, stream=True, model=openai.NOT_GIVEN)
    chunks = list(raw.parse())
    assert (raw.headers["x-msting-route"], raw.headers["x-msting-route-by"]) == (out["route"], "router-model")
    assert {c.model for c in chunks} == {TARGETS[out["route"]]}


def test_the_router_model_logs_its_decision_and_cost(with_router):
    explain(with_router, {"messages": [{"role": "user", "content": "log this"}]})
    log = with_router.log_file.read_text()
    line = [x for x in log.splitlines() if "router model router:" in x][-1]
    assert " ms, " in line and "prompt + " in line and "completion tokens" in line


def test_a_named_model_skips_the_router_model(with_router):
    out = explain(with_router, {"messages": [{"role": "user", "content": "x"}], "model": "tiny"})
    assert out["router_model"] is None and out["route"] is None


def test_a_slow_router_model_falls_back_to_the_rules(_stories_ok):
    """The router model's worker waits 2 s before a request marked SLOWMARK (a failpoint):
    past its 300 ms budget the rules decide, and the `slow` rule matches."""
    if not _stories_ok:
        pytest.skip("stories260K is absent")
    dh = start_with_profile(router_profile(str(STORIES_PATH), 300), env={"MSTING_WORKER_FAILPOINTS": "slow_on_prompt=SLOWMARK"})
    try:
        out = explain(dh, {"messages": [{"role": "user", "content": "SLOWMARK please"}]})
        assert out["router_model"]["route"] is None
        assert out["router_model"]["reason"] == "no answer within its budget of 300 ms"
        assert (out["route"], out["by"]) == ("slow", "rule")
        assert out["why"].startswith("no answer within its budget of 300 ms; route slow is the first whose rule matches")
        reply, name, by = routed_chat(socket_client(dh), "SLOWMARK again")
        assert (name, by, reply.model) == ("slow", "rule", "tiny")
        # nothing matched by the rules either: the default model
        reply, name, by = routed_chat(socket_client(dh), "hello")
        assert by != "rule"
    finally:
        dh.cleanup()


def test_a_switch_brings_the_new_profile_s_routes_and_an_empty_cache(_stories_ok):
    import time

    if not _stories_ok:
        pytest.skip("stories260K is absent")
    tiny = {"source": "builtin:tiny", "n_ctx": 512, "parallel": 1}
    dh = start_with_profile({"default_model": "tiny", "models": {"tiny": tiny}, "cache": {"enabled": True}})
    try:
        (dh.home / "config" / "profiles" / "routed.yaml").write_text(yaml.safe_dump({
            "default_model": "tiny",
            "models": {"tiny": tiny, "story": {"source": str(STORIES_PATH), "n_ctx": 512, "parallel": 1}},
            "routes": {"python": {"to": "story", "regex": "python"}}, "cache": {"enabled": True}}))
        client = socket_client(dh)

        def ask():
            raw = client.chat.completions.with_raw_response.create(
                messages=[{"role": "user", "content": "python"}], max_tokens=8, temperature=0, model=openai.NOT_GIVEN)
            return raw.parse().model, raw.headers.get("x-msting-route"), raw.headers["x-msting-cache"]

        assert ask() == ("tiny", None, "miss")
        assert ask() == ("tiny", None, "hit")
        with dh.client() as c:
            job = c.post("/v1/profiles/switch", json={"profile": "routed"}).json()
            deadline = time.monotonic() + 120
            while c.get(f"/v1/jobs/{job['id']}").json()["state"] == "running":
                assert time.monotonic() < deadline, "the switch did not end"
                time.sleep(0.05)
            assert c.get(f"/v1/jobs/{job['id']}").json()["state"] == "succeeded"
        assert ask() == ("story", "python", "miss")  # the new routes, and nothing of the old cache
        assert ask() == ("story", "python", "hit")
        assert explain(dh, {"messages": [{"role": "user", "content": "x"}]})["profile"] == "routed"
    finally:
        dh.cleanup()
