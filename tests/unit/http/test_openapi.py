"""The API contract (msting.http.openapi): the committed copy, route coverage, validity."""

from __future__ import annotations

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
    ("/v1/chat/completions", {"messages": [{"role": "tool", "content": "Hi"}]}, False),
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
