"""The official `openai` package through msting against each kind of upstream, and the
hostile or odd input a demanding user would try.

Upstreams, all real servers: a second msting daemon (its own temporary MSTING_HOME and
port, the built-in model) and llama-cpp-python's own server (stories260K) as `openai`
services; stand-ins (tests/upstreams) for Ollama and Anthropic, and an OpenAI stand-in
that wants an API key. The central daemon gets the key from an environment variable
named by `api_key_env_var`; the Anthropic stand-in wants the same key. The SDK's own
retries are off (max_retries=0): msting's retry loop is the one under test.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import threading
from pathlib import Path

import httpx
import openai
import pytest
from central_service_kit import CHAT, central_daemon, chat_body, read_stream, service, start_standins
from daemon_home import DaemonHome
from upstreams.fixtures import STORIES_PATH, LlamaCppServer

pytestmark = pytest.mark.e2e

CHAT_PATH = "/v1/chat/completions"
KEY_VAR = "MSTING_CENTRAL_TEST_KEY"
KEY = f"sk-central-{secrets.token_hex(16)}"
SERVICES = ("local", "stub", "peer", "llama", "ol", "an", "keyed")


@pytest.fixture(scope="module")
def central():
    """The central daemon and its upstreams, started side by side where they can be."""
    peer = DaemonHome(label="peer")
    peer.write_config()
    llama = LlamaCppServer(STORIES_PATH) if STORIES_PATH.is_file() else None
    standins = []
    stack = contextlib.ExitStack()
    try:
        stack.callback(peer.cleanup)
        if llama is not None:
            stack.callback(llama.close)
        threads = [threading.Thread(target=peer.start)]
        if llama is not None:
            threads.append(threading.Thread(target=llama.start))
        for t in threads:
            t.start()
        standins = start_standins(("ollama", {"models": ["llama-standin", "nomic-standin"]}),
                                  ("anthropic", {"models": ["claude-standin"], "api_key": KEY}),
                                  ("openai", {"models": ["gpt-standin"], "api_key": KEY}))
        for s in standins:
            stack.callback(s.close)
        for t in threads:
            t.join()
        assert peer.daemon_pid() is not None and (llama is None or llama.alive), "an upstream did not start"
        ol, an, keyed = standins
        services = {
            "peer": service("openai", [peer.url], default_model="msting-tiny"),
            "ol": service("ollama", [ol.url]),  # no default model, two models
            "an": service("anthropic", [an.url], default_model="claude-standin", key_env=KEY_VAR),
            "keyed": service("openai", [keyed.url], default_model="gpt-standin", key_env=KEY_VAR),
        }
        if llama is not None:
            # llama-cpp-python's server (interrupt_requests, on by default) ends a running generation
            # with a bare [DONE] when any other request arrives, a health check included, and msting
            # takes a [DONE] without a finish_reason for a complete reply: no health check during the
            # test (the first one, at start, is waited for).
            services["llama"] = service("openai", [llama.url], default_model=llama.model, health_interval_sec=600)
        else:
            # the name stays known (the tests say why they skip), on a port nothing listens on
            services["llama"] = service("openai", ["http://127.0.0.1:9"], default_model="stories260K")
        with central_daemon(services, env={KEY_VAR: KEY}, label="central-providers",
                            wait_services=[n for n in services if llama is not None or n != "llama"]) as dh:
            dh.upstreams = {"peer": peer, "llama": llama, "ol": ol, "an": an, "keyed": keyed}
            yield dh
    finally:
        stack.close()


def sdk(dh) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{dh.url}/v1", api_key="unused", max_retries=0, timeout=60)


# ---- 7. the openai package against each provider ----------------------------------------

# service: (the model requests name, its name in /v1/models, text completions?, the embedding model or None,
# whether it reports usage: llama-cpp-python's server ignores stream_options.include_usage, and msting
# generates streamed upstream, so its usage reads 0, as providers/remote/openai.py documents)
PROVIDERS = {
    "peer": ("peer~msting-tiny", "peer~msting-tiny", True, "peer~msting-tiny", True),
    "llama": ("llama~stories260K", "llama~stories260K", True, None, False),
    "ol": ("ol~llama-standin", "ol~llama-standin:latest", True, "ol~nomic-standin", True),
    "an": ("an~claude-standin", "an~claude-standin", False, None, True),
}


@pytest.mark.parametrize("name", list(PROVIDERS))
def test_the_openai_package_works_through_msting(central, name):
    if name == "llama" and central.upstreams["llama"] is None:
        pytest.skip(f"{STORIES_PATH} is absent")
    model, listed, completions, embedder, usage = PROVIDERS[name]
    client = sdk(central)
    seed = {"seed": 7} if name in ("peer", "llama") else {}  # the Anthropic API has none (a 400 says so)

    raw = client.chat.completions.with_raw_response.create(model=model, messages=CHAT, max_tokens=8, temperature=0, **seed)
    assert raw.headers["x-msting-provider"] == name and raw.headers["x-msting-attempts"] == "1"
    chat = raw.parse()
    text = chat.choices[0].message.content
    assert chat.model == model and chat.object == "chat.completion" and text, chat
    assert chat.choices[0].finish_reason in ("stop", "length"), chat
    assert 0 < chat.usage.completion_tokens <= 8 if usage else chat.usage.completion_tokens == 0, chat.usage

    chunks = list(client.chat.completions.create(model=model, messages=CHAT, max_tokens=8, temperature=0, stream=True, **seed,
                                                 stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [chat.choices[0].finish_reason]
    assert {c.model for c in chunks} == {model}
    assert [c.usage.completion_tokens for c in chunks if c.usage] == [chat.usage.completion_tokens]

    if completions:
        done = client.completions.create(model=model, prompt="Once upon a time", max_tokens=8, temperature=0, **seed)
        assert done.model == model and done.choices[0].text and done.choices[0].finish_reason in ("stop", "length"), done
        pieces = list(client.completions.create(model=model, prompt="Once upon a time", max_tokens=8, temperature=0,
                                                stream=True, **seed))
        assert "".join(p.choices[0].text for p in pieces if p.choices) == done.choices[0].text
    else:
        with pytest.raises(openai.BadRequestError, match=f"anthropic service '{name}'"):
            client.completions.create(model=model, prompt="Once upon a time", max_tokens=8)

    if embedder is not None:
        emb = client.embeddings.create(model=embedder, input=["the quick brown fox", "jumps"])
        assert emb.model == embedder and [e.index for e in emb.data] == [0, 1], emb
        assert len(emb.data[0].embedding) == len(emb.data[1].embedding) > 0 and emb.data[0].embedding != emb.data[1].embedding
    elif name == "an":
        with pytest.raises(openai.BadRequestError, match="anthropic") as info:
            client.embeddings.create(model=model, input="the quick brown fox")
        assert info.value.body["code"] == "unsupported_by_provider" and "'an'" in info.value.message
    else:  # llama_cpp.server started without --embedding: it says so, and msting passes that on
        with pytest.raises(openai.APIStatusError, match="embedding") as info:
            client.embeddings.create(model=model, input="the quick brown fox")
        assert info.value.status_code == 502 and info.value.body["attempts"][0]["service"] == name

    models = {m.id: m for m in client.models.list()}
    assert listed in models and models[listed].owned_by == name, sorted(models)
    assert client.models.retrieve(listed).id == listed


# ---- 9. hostile and odd input ------------------------------------------------------------


def _post(dh, body: dict) -> httpx.Response:
    with dh.client(timeout=30) as c:
        return c.post(CHAT_PATH, json=body)


def test_a_service_name_with_an_empty_model_means_its_default_or_says_to_name_one(central):
    resp = _post(central, chat_body("keyed~", max_tokens=4))
    assert resp.status_code == 200 and resp.json()["model"] == "keyed~gpt-standin", resp.text
    assert resp.headers["x-msting-provider"] == "keyed"
    # ol has no default model and serves two: a 400 that says how to name one, for a stream too
    with central.client(timeout=30) as c:
        for result in (c.post(CHAT_PATH, json=chat_body("ol~", max_tokens=4)),
                       read_stream(c, CHAT_PATH, chat_body("ol~", max_tokens=4))):
            status = result.status_code if isinstance(result, httpx.Response) else result.status
            error = (result.json() if isinstance(result, httpx.Response) else result.body)["error"]
            assert status == 400 and error["code"] == "model_required" and "ol~<model>" in error["message"], error
            assert "llama-standin" in error["message"] and "nomic-standin" in error["message"], error
    with pytest.raises(openai.BadRequestError, match="no default model"):
        sdk(central).chat.completions.create(model="ol~", messages=CHAT, max_tokens=4, stream=True)


@pytest.mark.parametrize("name", ["nope~x", "~x", "NOPE~gpt-standin"])
def test_an_unknown_service_is_a_404_listing_the_services(central, name):
    with central.client(timeout=30) as c:
        replies = [c.post(CHAT_PATH, json=chat_body(name, max_tokens=4)), c.get(f"/v1/models/{name}"),
                   c.post("/v1/embeddings", json={"model": name, "input": "x"})]
        stream = read_stream(c, CHAT_PATH, chat_body(name, max_tokens=4))
    bodies = [r.json() for r in replies] + [stream.body]
    assert [r.status_code for r in replies] + [stream.status] == [404] * 4, bodies
    for body in bodies:
        message = body["error"]["message"]
        assert f"unknown service '{name.partition('~')[0]}'" in message, message
        assert all(s in message for s in SERVICES), message


def test_an_unknown_bare_name_is_a_404_with_close_matches(central):
    typos = [("gpt-standim", "keyed~gpt-standin"), ("msting-tine", "msting-tiny"), ("claude-standon", "an~claude-standin")]
    for name, close in typos:
        resp = _post(central, chat_body(name, max_tokens=4))
        assert resp.status_code == 404, resp.text
        error = resp.json()["error"]
        assert error["code"] == "model_not_found" and close in error["close_matches"] and close in error["message"], error
    with pytest.raises(openai.NotFoundError, match="keyed~gpt-standin"):
        sdk(central).chat.completions.create(model="gpt-standim", messages=CHAT, max_tokens=4, stream=True)
    with pytest.raises(openai.NotFoundError, match="keyed~gpt-standin"):
        sdk(central).models.retrieve("gpt-standim")
    # a name one service lists (and the default service does not) goes to it
    resp = _post(central, chat_body("gpt-standin", max_tokens=4))
    assert resp.status_code == 200 and resp.headers["x-msting-provider"] == "keyed", resp.text
    assert resp.json()["model"] == "keyed~gpt-standin"


def test_a_model_a_service_does_not_list_is_not_found_when_looked_up(central):
    with central.client(timeout=30) as c:
        for path in ("/v1/models/keyed~no-such-model", "/llm/models/keyed~no-such-model",
                     "/llm/services/keyed/models/no-such-model"):
            resp = c.get(path)
            assert resp.status_code == 404 and resp.json()["error"]["code"] == "model_not_found", (path, resp.text)
            assert "no-such-model" in resp.json()["error"]["message"]
        assert c.get("/v1/models/keyed~gpt-standin").status_code == 200
        assert c.get("/v1/models/keyed~").json()["id"] == "keyed~gpt-standin"  # the default


def test_a_huge_model_name_is_refused_without_being_echoed(central):
    for name in ("x" * 100_000, "keyed~" + "y" * 100_000, "nope~" + "z" * 300):
        for stream in (False, True):
            with central.client(timeout=30) as c:
                result = read_stream(c, CHAT_PATH, chat_body(name)) if stream else c.post(CHAT_PATH, json=chat_body(name))
            status = result.status if stream else result.status_code
            text = json.dumps(result.body) if stream else result.text
            assert status == 400 and len(text) < 1000, text[:300]
            assert "'model' must be at most" in text and json.loads(text)["error"]["param"] == "model"
    with central.client(timeout=30) as c:
        for path in ("/v1/models/" + "y" * 10_000, "/v1/models/keyed~" + "y" * 10_000, "/llm/models/" + "y" * 300,
                     "/llm/services/" + "y" * 300, "/llm/services/keyed/models/" + "y" * 300):
            resp = c.get(path)
            assert resp.status_code == 400 and len(resp.text) < 1000, path[:40]  # held to 256 characters, not echoed
            assert "must be at most 256 characters" in resp.json()["error"]["message"]
        assert c.get("/health").status_code == 200


def _proc_cmdlines(pids) -> list[str]:
    out = []
    for pid in pids:
        with contextlib.suppress(OSError):
            out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace"))
    return out


def test_the_api_key_is_sent_upstream_and_never_shown(central):
    keyed, an = central.upstreams["keyed"], central.upstreams["an"]
    for model in ("keyed~gpt-standin", "an~claude-standin"):  # both stand-ins refuse a request without the key
        resp = _post(central, chat_body(model, max_tokens=4))
        assert resp.status_code == 200, resp.text
        with central.client(timeout=30) as c:
            assert read_stream(c, CHAT_PATH, chat_body(model, max_tokens=4)).outcome == "complete"
    assert all(r["auth"] for s in (keyed, an) for r in s.requests() if r["method"] == "POST")
    shown = {}
    with central.client(timeout=30) as c:
        for path in ("/llm/services", "/llm/services/keyed", "/llm/services/an", "/llm/services/keyed/ping",
                     "/llm/services/an/ping", "/v1/status", "/v1/models", "/llm/models", "/health"):
            resp = c.get(path)
            assert resp.status_code == 200, (path, resp.text)
            shown[path] = resp.text
        services = {s["name"]: s for s in c.get("/llm/services").json()["data"]}
    assert services["keyed"]["key_source"] == services["an"]["key_source"] == f"env {KEY_VAR}"
    status = central.cli("llm", "status", "--json")
    shown["msting llm status --json"] = status.stdout + status.stderr
    shown["daemon log"] = central.log_file.read_text(errors="replace")
    pids = [p.pid for p in central.our_processes()]
    assert central.daemon_pid() in pids and len(pids) >= 2, pids  # the daemon and its worker(s)
    shown["/proc/*/cmdline"] = "\n".join(_proc_cmdlines(pids))
    shown["ps"] = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    assert "msting" in shown["/proc/*/cmdline"]
    leaked = [where for where, text in shown.items() if KEY in text or KEY[len("sk-central-"):] in text]
    assert not leaked, f"the API key shows in: {leaked}"
    # and the log does say which services were configured (it is the log being checked, not an empty file)
    assert shown["daemon log"].strip()
