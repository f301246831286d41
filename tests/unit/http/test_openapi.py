"""The API contract (msting.http.openapi): the committed copy, route coverage, validity."""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from types import SimpleNamespace

import jsonschema_rs
import pytest
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient

from msting.http import native, openai_api, openapi, ws
from msting.http.app import build_app
from msting.http.security import SecurityPolicy

REPO = Path(__file__).resolve().parents[3]
DOCS_COPY = REPO / "docs" / "openapi.json"
IGNORED_METHODS = {"HEAD"}  # Starlette adds HEAD to every GET route


def _app():
    # build_app only stores the router and the control; routing and the document need neither
    return build_app(SimpleNamespace(), SimpleNamespace(), security=SecurityPolicy())


def _doc() -> dict:
    return json.loads(openapi.document_bytes())


def _openapi_path(starlette_path: str) -> str:
    return re.sub(r"\{(\w+)(:\w+)?\}", r"{\1}", starlette_path)  # {model_id:path} -> {model_id}


def test_committed_copy_is_the_generated_document():
    assert DOCS_COPY.read_bytes() == openapi.document_bytes(), (
        "docs/openapi.json is stale: run `python -m msting.http.openapi > docs/openapi.json`")


def test_every_route_of_the_app_is_in_the_document():
    doc = _doc()
    missing = []
    for route in _app().routes:
        if isinstance(route, WebSocketRoute):
            if route.path not in doc["x-websockets"]:
                missing.append(f"WebSocket {route.path}")
        elif isinstance(route, Route):
            path = _openapi_path(route.path)
            for method in sorted(set(route.methods or ()) - IGNORED_METHODS):
                if method.lower() not in doc["paths"].get(path, {}):
                    missing.append(f"{method} {path}")
        else:
            missing.append(f"unexpected route type {type(route).__name__} {getattr(route, 'path', '?')}")
    assert not missing, f"routes without a schema in msting.http.openapi: {missing}"


def test_the_document_has_no_route_the_app_does_not_serve():
    served = set()
    for route in _app().routes:
        if isinstance(route, Route):
            served |= {(_openapi_path(route.path), m.lower()) for m in route.methods or ()}
    documented = {(p, m) for p, ops in _doc()["paths"].items() for m in ops}
    assert documented <= served


def test_valid_openapi_3_1():
    # the OpenAPI 3.1 meta-schema that schemathesis ships (copied from the OAI repository),
    # checked with jsonschema-rs
    from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

    doc = _doc()
    errors = [f"{'/'.join(map(str, e.instance_path))}: {e.message}" for e in OPENAPI_31_VALIDATOR.iter_errors(doc)]
    assert not errors
    # and each schema object against the JSON Schema 2020-12 meta-schema
    for name, schema in doc["components"]["schemas"].items():
        jsonschema_rs.meta.validate(schema)
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            body = op.get("requestBody")
            if body:
                jsonschema_rs.meta.validate(body["content"]["application/json"]["schema"])


def test_schemathesis_loads_it_and_draws_a_case_per_operation():
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings

    schema = schemathesis.openapi.from_dict(_doc())
    operations = [r.ok() for r in schema.get_all_operations()]
    assert {op.label for op in operations} == {f"{m.upper()} {p}" for p, ops in _doc()["paths"].items() for m in ops}
    for op in operations:
        drawn = []

        @settings(max_examples=3, database=None, deadline=None, phases=[Phase.generate], derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(op.as_strategy())
        def draw(case):
            drawn.append(case)

        draw()
        assert drawn, op.label


def _body_schema(path: str) -> dict:
    doc = _doc()
    schema = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    return {"components": doc["components"], **schema}


@pytest.mark.parametrize(("path", "keys"), [
    ("/generate", native.GENERATE_KEYS), ("/llm", native.LLM_KEYS), ("/v1/chat/completions", openai_api.CHAT_KEYS),
    ("/v1/completions", openai_api.COMPLETION_KEYS), ("/v1/embeddings", openai_api.EMBEDDING_KEYS),
    ("/v1/execute", openai_api.EXECUTE_KEYS), ("/models/load", openapi.LOAD_KEYS), ("/models/unload", openapi.UNLOAD_KEYS),
    ("/v1/profiles/switch", openapi.SWITCH_KEYS),
])
def test_body_keys_are_the_routes_keys(path, keys):
    schema = _body_schema(path)
    assert set(schema["properties"]) == set(keys)
    assert schema["additionalProperties"] is False


def test_ws_generate_keys():
    assert set(_doc()["x-websockets"]["/v1/ws"]["client_messages"]["generate"]["properties"]) == set(ws.GENERATE_KEYS)


@pytest.mark.parametrize(("path", "body", "valid"), [
    ("/generate", {"prompt": "Once", "max_tokens": 4, "stream": True, "stop": ["\n"], "model": None}, True),
    ("/generate", {"prompt": "Once", "tools": []}, False),
    ("/generate", {"max_tokens": 4}, False),
    ("/generate", {"prompt": "Once", "max_tokens": 0}, False),
    ("/generate", {"prompt": "Once", "temperature": 2.5}, False),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "stream": True,
                              "stream_options": {"include_usage": True}}, True),
    ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "Hi"}]}, False),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "tool_choice": "auto",
                              "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]}, True),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}],
                              "tools": [{"type": "function", "function": {"name": "bad name"}}]}, False),
    ("/v1/chat/completions", {"messages": [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"}]}, True),
    ("/v1/chat/completions", {"messages": []}, False),
    ("/v1/completions", {"prompt": ["one"]}, True),
    ("/v1/completions", {"prompt": ["one", "two"]}, False),
    ("/v1/embeddings", {"input": ["a", "b"], "encoding_format": "base64"}, True),
    ("/v1/embeddings", {"input": ""}, False),
    ("/v1/execute", {"prompt": "Hi"}, True),
    ("/v1/execute", {"prompt": "Hi", "messages": [{"role": "user", "content": "Hi"}]}, False),
    ("/v1/execute", {}, False),
    ("/v1/profiles/switch", {"profile": "alt", "dry_run": True}, True),
])
def test_body_schemas_accept_and_reject(path, body, valid):
    assert jsonschema_rs.validator_for(_body_schema(path)).is_valid(body) is valid


def test_served_by_the_app_once_built():
    with TestClient(_app(), base_url="http://127.0.0.1") as client:
        r = client.get("/openapi.json")
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
        assert r.content == openapi.document_bytes()
        assert client.get("/openapi.json").content is not None
    assert openapi.document_bytes() is openapi.document_bytes()  # cached, not rebuilt per request


# ---- the services routes answer as the document says ------------------------------------


def _validator(doc: dict, schema: dict):
    return jsonschema_rs.validator_for({"components": doc["components"], **schema})


def _response_schema(doc: dict, path: str, method: str, status: int) -> dict:
    response = doc["paths"][path][method]["responses"][str(status)]
    if "$ref" in response:
        response = doc["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    return response["content"]["application/json"]["schema"]


def _check(doc: dict, path: str, response, status: int, method: str = "get") -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    errors = [f"{'/'.join(map(str, e.instance_path))}: {e.message}"
              for e in _validator(doc, _response_schema(doc, path, method, status)).iter_errors(body)]
    assert not errors, (path, status, errors, body)
    return body


@contextlib.contextmanager
def _services_client(fallback_chain: tuple[str, ...]):
    """A client of the app over a router of real providers: the stub (the default service
    here) and a remote service `lan` whose one URL refuses connections (a port nothing
    listens on)."""
    from upstreams.fixtures import free_port

    from msting.config.schema import parse_config
    from msting.providers.remote.provider import RemoteProvider
    from msting.providers.router import Router
    from msting.providers.stub import StubProvider

    config = parse_config({"llm": {"services": {"lan": {
        "api_format": "openai", "urls": [f"http://127.0.0.1:{free_port()}"], "models": ["m1", "m2"], "default_model": "m1",
        "upstream": {"short_timeout_sec": 1, "first_token_timeout_sec": 0.5, "long_timeout_sec": 2, "max_attempts": 1}}}}}, None)
    remote = RemoteProvider(config.llm.service("lan"), env={}, max_tokens=8, temperature=0.5)
    router = Router([StubProvider(), remote], default="stub", fallback_chain=fallback_chain)
    app = build_app(router, SimpleNamespace(), security=SecurityPolicy())
    with TestClient(app, base_url="http://127.0.0.1") as client:
        try:
            yield client
        finally:
            client.portal.call(remote.close)


@pytest.fixture
def services_app():
    with _services_client(("lan", "stub")) as client:
        yield client


def test_the_services_routes_answer_as_the_document_says(services_app) -> None:
    doc = _doc()
    c = services_app
    listed = _check(doc, "/llm/services", c.get("/llm/services"), 200)
    assert (listed["default_service"], listed["fallback_chain"]) == ("stub", ["lan", "stub"])
    assert [(s["name"], s["is_default"], s["in_fallback_chain"]) for s in listed["data"]] == [
        ("stub", True, True), ("lan", False, True)]
    lan = _check(doc, "/llm/services/{name}", c.get("/llm/services/lan"), 200)
    assert [u["state"] for u in lan["urls"]] == ["up"] and lan["key_source"] == "none"
    _check(doc, "/llm/services/{name}", c.get("/llm/services/stub"), 200)
    missing = _check(doc, "/llm/services/{name}", c.get("/llm/services/nope"), 404)
    assert missing["error"]["code"] == "service_not_found"
    for name in ("lan", "stub"):
        _check(doc, "/llm/services/{name}/models", c.get(f"/llm/services/{name}/models"), 200)
        caps = _check(doc, "/llm/services/{name}/capabilities", c.get(f"/llm/services/{name}/capabilities"), 200)
        assert caps["name"] == name and caps["tools"] is (name == "lan")  # an openai service calls tools, the stub not
    model = _check(doc, "/llm/services/{name}/models/{model}", c.get("/llm/services/lan/models/m2"), 200)
    assert (model["id"], model["service"], model["upstream"], model["context_length"]) == ("lan~m2", "lan", "m2", None)
    assert model["capabilities"] == {"chat": True, "completions": True, "stream": True, "embed": True, "tools": True}
    _check(doc, "/llm/services/{name}/models/{model}", c.get("/llm/services/stub/models/any"), 200)
    # a live check: the one URL refuses, the service is down (503, the same body)
    ping = _check(doc, "/llm/services/{name}/ping", c.get("/llm/services/lan/ping"), 503)
    assert ping["status"] == "failed" and [u["ok"] for u in ping["urls"]] == [False]
    _check(doc, "/llm/services/{name}/ping", c.get("/llm/services/stub/ping"), 200)
    lan = _check(doc, "/llm/services/{name}", c.get("/llm/services/lan"), 200)
    [url] = lan["urls"]
    assert url["state"] == "down" and url["cooling_until"] and url["last_error"] and url["last_checked"]
    models = _check(doc, "/llm/models", c.get("/llm/models"), 200)
    assert [m["id"] for m in models["data"]] == ["stub~stub", "lan~m1", "lan~m2"]
    assert _check(doc, "/v1/models", c.get("/v1/models"), 200) == models
    _check(doc, "/llm/models/{name}", c.get("/llm/models/m2"), 200)
    _check(doc, "/v1/models/{model_id}", c.get("/v1/models/lan~m1"), 200)
    unknown = _check(doc, "/llm/models/{name}", c.get("/llm/models/lan~"), 200)  # the service's default
    assert unknown["id"] == "lan~m1"


def test_who_answered_headers_are_documented_and_sent(services_app) -> None:
    doc = _doc()
    for path in ("/generate", "/llm", "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/execute"):
        headers = doc["paths"][path]["post"]["responses"]["200"]["headers"]
        assert set(headers) == {"X-Msting-Provider", "X-Msting-Attempts", "X-Msting-Upstream", "X-Msting-Route", "X-Msting-Route-By",
                                "X-Msting-Cache"}, path
    r = services_app.post("/generate", json={"prompt": "Once", "model": "stub~x"})
    body = _check(doc, "/generate", r, 200, method="post")
    assert body["model"] == "stub~x"
    assert (r.headers["x-msting-provider"], r.headers["x-msting-attempts"]) == ("stub", "1")
    assert "x-msting-upstream" not in r.headers
    # the remote service is down: the fallback chain's stub answers, after lan's attempt
    r = services_app.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}], "model": "m1"})
    _check(doc, "/v1/chat/completions", r, 200, method="post")
    assert (r.headers["x-msting-provider"], r.headers["x-msting-attempts"]) == ("stub", "2")


def test_remote_errors_have_the_documented_shape() -> None:
    from msting.api.errors import NotFound, UpstreamError
    from msting.http.errors import error_body

    doc = _doc()
    error = _validator(doc, {"$ref": "#/components/schemas/Error"})
    failed = UpstreamError("all_services_failed", "no service could answer (2 attempts): ...", services=["lan", "stub"],
                           attempts=[{"service": "lan", "url": "http://10.0.0.1:1", "error": "refused", "ms": 1.5},
                                     {"service": "stub", "url": None, "error": "boom", "ms": 0.1}], retryable=True)
    assert error.is_valid(error_body(failed))
    assert error.is_valid(error_body(NotFound("model_not_found", "model 'm3' is not known", close_matches=["lan~m1"])))
    for path in ("/generate", "/v1/chat/completions", "/v1/embeddings"):
        assert {"502", "503", "504"} <= set(doc["paths"][path]["post"]["responses"]), path
    with _services_client(()) as c:  # no fallback chain: lan's own errors
        r = c.post("/generate", json={"prompt": "Once", "model": "lan~m1"})
        body = _check(doc, "/generate", r, 503, method="post")
        assert body["error"]["code"] == "upstream_unreachable" and body["error"]["retryable"] is True
        assert [a["url"] for a in body["error"]["attempts"]] == [c.get("/llm/services/lan").json()["urls"][0]["url"]]
        c.get("/llm/services/lan/ping")  # now it is down
        r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}], "model": "lan~m1",
                                                 "stream": True})
        body = _check(doc, "/v1/chat/completions", r, 503, method="post")  # an error status, not a 200 stream
        assert body["error"]["message"].startswith("every URL of lan is down")
        assert r.headers["retry-after"] == "1"
