"""Fuzzed requests for bench/chaos.py (and tests/e2e/test_chaos.py), built before they are sent:
schemathesis cases drawn from the daemon's own ``GET /openapi.json`` (positive: valid-shaped,
they reach the models; negative: they must be rejected), and hypothesis-drawn hostile raw
bodies no schema generator writes (non-finite numbers, bad Unicode, deep nesting, huge
numbers, wrong types for every key, malformed JSON, bodies over the size limit). Fixed seeds:
a run sends the same requests every time. Valid-shaped generations get ``max_tokens`` capped
(``MAX_TOKENS_CAP``) and a profile switch is made a dry run, so the fuzz stays cheap and never
changes the active profile. The operations in ``NOT_SENT`` are never sent: most interrupt
service by design, so what they do to the daemon is not a finding about its input handling.
"""

from __future__ import annotations

import json
import random
import urllib.parse
from dataclasses import dataclass
from typing import Any

MAX_TOKENS_CAP = 8
# The operations the fuzz never sends, drawn or hostile, and why. Most interrupt service by
# design: a valid call restarts the daemon (its answers are 503s until it is back), or stops
# or restarts a model's workers (the counted worker restarts). A profile switch is not here:
# it is always sent as a dry run (_tame, _case_request), which plans and changes nothing.
NOT_SENT: dict[str, str] = {
    "POST /v1/daemon/restart": "restarts the daemon",
    "POST /models/restart": "restarts a model's workers",
    "POST /models/unload": "stops a model's workers",
    "GET /llm/registry/search": "sends its query to the Hugging Face hub (a third party; offline, a 503 registry_unreachable)",
    "GET /debug/feed": "a live feed: its answer never ends",
}
TEMPLATES: dict[str, dict] = {  # a valid body per route, the base the hostile bodies mutate
    "/generate": {"prompt": "Once upon a time", "max_tokens": 4},
    "/llm": {"prompt": "Once upon a time", "max_tokens": 4},
    "/v1/chat/completions": {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
    "/v1/completions": {"prompt": "Once upon a time", "max_tokens": 4},
    "/v1/embeddings": {"input": ["hello"]},
    "/v1/execute": {"prompt": "Once upon a time", "max_tokens": 4},
    "/models/load": {"model": "default", "timeout": 5},
    "/v1/profiles/switch": {"profile": "no-such-profile", "dry_run": True},
}
WS_TEMPLATE = {"type": "generate", "id": "f1", "prompt": "Once upon a time", "max_tokens": 4}
# the keys of a WebSocket generate message (docs/api.md, "WebSocket: /v1/ws")
WS_KEYS = ["id", "max_tokens", "messages", "model", "prompt", "seed", "stop", "temperature", "top_p", "type"]
NUMERIC_KEYS = {"max_tokens", "max_completion_tokens", "temperature", "top_p", "presence_penalty", "frequency_penalty", "seed", "n", "timeout"}


@dataclass
class FuzzRequest:
    source: str  # schemathesis-positive | schemathesis-negative | hostile-<kind>
    op: str  # "POST /generate"
    method: str
    path: str  # with the query string
    body: bytes | None = None
    chunked: bool = False  # send the body with Transfer-Encoding: chunked
    stream: bool = False  # a valid-shaped streaming request: the reply is SSE
    note: str = ""  # what is hostile about it

    def excerpt(self, limit: int = 160) -> str:
        b = self.body or b""
        return b[:limit].decode("utf-8", "backslashreplace") + (f"... ({len(b)} bytes)" if len(b) > limit else "")


# ---- schemathesis ----------------------------------------------------------------------


def _draw(strategy: Any, n: int, seed: int) -> list:
    """n examples of a hypothesis strategy, deterministically (duplicates included)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as fixed_seed

    out: list = []

    @fixed_seed(seed)
    @settings(max_examples=n, database=None, deadline=None, phases=[Phase.generate], derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(value: Any) -> None:
        out.append(value)

    collect()
    return out


def _tame(route: str, body: Any) -> Any:
    if not isinstance(body, dict):
        return body
    body = dict(body)
    for key in ("max_tokens", "max_completion_tokens"):
        v = body.get(key)
        if isinstance(v, int) and not isinstance(v, bool) and v > MAX_TOKENS_CAP:
            body[key] = MAX_TOKENS_CAP
    if route == "/v1/profiles/switch" and (body.get("dry_run") is None or isinstance(body.get("dry_run"), bool)):
        body["dry_run"] = True
    return body


def _case_request(case: Any, mode: str, template: str) -> FuzzRequest | None:
    from schemathesis.core import NOT_SET

    path = template
    for name, value in (case.path_parameters or {}).items():
        path = path.replace("{" + name + "}", urllib.parse.quote(str(value), safe=""))
    if case.query:
        path += "?" + urllib.parse.urlencode(case.query, doseq=True)
    body = case.body
    raw: bytes | None
    stream = False
    if body is NOT_SET:
        raw = b"" if case.method.upper() == "POST" else None
    elif isinstance(body, (bytes, bytearray)):
        raw = bytes(body)
    else:
        if mode == "positive":
            body = _tame(template, body)
            stream = isinstance(body, dict) and body.get("stream") is True
        try:
            raw = json.dumps(body).encode()
        except (TypeError, ValueError):
            return None
    if template == "/v1/profiles/switch" and raw and b'"dry_run": true' not in raw:
        # never switch for real from the fuzz, whatever the mode drew
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict) and isinstance(parsed.get("profile"), str) and set(parsed) <= {"profile", "dry_run"}:
            parsed["dry_run"] = True
            raw = json.dumps(parsed).encode()
    return FuzzRequest(f"schemathesis-{mode}", f"{case.method.upper()} {template}", case.method.upper(), path, raw, stream=stream)


def schemathesis_requests(doc: dict, total: int, seed: int = 20261201) -> list[FuzzRequest]:
    """About `total` requests drawn by schemathesis from the OpenAPI document `doc`: 90 %
    for the operations that take a body (half positive, half negative), 10 % for the others."""
    import schemathesis
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_dict(doc)
    ops = [op for op in (r.ok() for r in schema.get_all_operations()) if f"{op.method.upper()} {op.path}" not in NOT_SENT]
    with_body = [op for op in ops if op.method.upper() == "POST"]
    without = [op for op in ops if op.method.upper() != "POST"]
    per_other = 10  # the GET routes take nothing but path parameters: a few cases each
    per_body = max(1, (total - per_other * len(without)) // max(1, len(with_body)) // 2)
    plan = []
    for op in with_body:
        plan += [(op, GenerationMode.POSITIVE, per_body), (op, GenerationMode.NEGATIVE, per_body)]
    for op in without:
        plan += [(op, GenerationMode.POSITIVE, per_other), (op, GenerationMode.NEGATIVE, per_other)]
    out: list[FuzzRequest] = []
    rounds = 0
    while len(out) < total and rounds < 4:  # top up (duplicates, operations with no negative case) with new seeds
        for i, (op, mode, n) in enumerate(plan):
            if rounds and op.method.upper() != "POST":
                continue
            if rounds:
                n = max(1, min(n, (total - len(out)) // max(1, 2 * len(with_body)) + 1))
            try:
                cases = _draw(op.as_strategy(generation_mode=mode), n, seed + 1000 * rounds + i)
            except Exception:  # noqa: BLE001 - e.g. no negative case exists for an operation without inputs
                continue
            out += [r for r in (_case_request(c, mode.value, op.path) for c in cases) if r is not None]
            if len(out) >= total:
                break
        rounds += 1
    return out[:total]


# ---- hostile JSON, drawn with hypothesis -------------------------------------------------

NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1E+999", "-0e99999", "123e456789"]
BAD_STRINGS = [b'"\\ud800"', b'"\\udfff"', b'"a\\ud83d"', b'"\\ud83d\\u0041"', b'"\xff\xfe"', b'"\xc0\xaf"',
               b'"\xed\xa0\x80"', b'"\xf4\x90\x80\x80"', b'"\x80abc"', b'"ok\xe2\x82"', b'"\\u0000"', b'"\\uZZZZ"']
MALFORMED = [b"", b" ", b"{", b"}", b"[", b"null", b"true", b"42", b'"text"', b"[]", b'{"prompt": "a",}', b"{'prompt': 'a'}",
             b'{"prompt": "a"} trailing', b'\xef\xbb\xbf{"prompt": "a"}', b'{"prompt": "a", "prompt": 5}', b'{"prompt" "a"}',
             b'{"prompt": "a"', b"\x00\x00\x00", b'{"prompt": undefined}', b'{"max_tokens": 0x10, "prompt": "a"}',
             b'{"max_tokens": 01, "prompt": "a"}', b'{"max_tokens": +1, "prompt": "a"}', b'{"max_tokens": .5, "prompt": "a"}']
KEY_VALUES_WRONG: list[Any] = [None, True, False, 0, -1, 1.5, -2**31, 2**53 + 1, "", "x", [], [1], {}, {"a": 1}, ["a", 1],
                               [{"role": "user"}], "default", -0.0, 1e308]


def _with_raw(template: dict, key: str, raw: bytes) -> bytes:
    """`template` as JSON with `key` set to the raw bytes `raw` (not valid JSON, often)."""
    marker = "\u2603MARK\u2603"
    text = json.dumps({**template, key: marker}).encode()
    return text.replace(json.dumps(marker).encode(), raw)


def _nested(depth: int, kind: str) -> bytes:
    if kind == "array":
        return b"[" * depth + b"1" + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


def _template(route: str) -> dict:
    return WS_TEMPLATE if route == "/v1/ws" else TEMPLATES[route]


def route_keys(doc: dict) -> dict[str, list[str]]:
    """The keys of each route's JSON body, from the OpenAPI document (sorted: the draws depend on their order)."""
    out = {}
    for route in (r for r in TEMPLATES if f"POST {r}" not in NOT_SENT):
        schema = doc["paths"][route]["post"]["requestBody"]["content"]["application/json"]["schema"]
        while "$ref" in schema:
            schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
        out[route] = sorted(schema.get("properties", {}))
    return out


def hostile_strategy(keys: dict[str, list[str]]) -> Any:
    from hypothesis import strategies as st

    routes = st.sampled_from(sorted(keys))

    def numeric(route: str) -> list[str]:
        return [k for k in keys[route] if k in NUMERIC_KEYS] or ["extra"]

    @st.composite
    def non_finite(draw):
        route = draw(routes)
        key = draw(st.sampled_from([*numeric(route), "prompt", "model", "extra"]))
        token = draw(st.sampled_from(NON_FINITE))
        return route, _with_raw(_template(route), key, token.encode()), "non-finite", f"{key}={token}"

    @st.composite
    def bad_unicode(draw):
        route = draw(routes)
        raw = draw(st.sampled_from(BAD_STRINGS))
        if draw(st.sampled_from(["value", "key"])) == "key":
            body = json.dumps(_template(route)).encode()
            return route, body[:-1] + b", " + raw + b": 1}", "unicode", f"key {raw!r}"
        key = draw(st.sampled_from([k for k in ("prompt", "model", "input", "profile", "stop") if k in keys[route]] or ["model"]))
        return route, _with_raw(_template(route), key, raw), "unicode", f"{key}={raw!r}"

    @st.composite
    def deep(draw):
        route = draw(routes)
        depth = draw(st.sampled_from([33, 40, 64, 200, 1000, 2000, 10_000, 100_000]))
        kind = draw(st.sampled_from(["array", "object"]))
        if draw(st.booleans()):
            return route, _nested(depth, kind), "deep", f"whole body nested {depth} ({kind})"
        key = draw(st.sampled_from([*keys[route], "extra"]))
        return route, _with_raw(_template(route), key, _nested(depth, kind)), "deep", f"{key} nested {depth} ({kind})"

    @st.composite
    def huge_number(draw):
        route = draw(routes)
        digits = draw(st.sampled_from([19, 20, 25, 40, 309, 400, 4300, 4301, 5000, 20_000, 100_000]))
        sign = draw(st.sampled_from(["", "-"]))
        raw = {"int": sign + "9" * digits, "float": sign + "1" + "0" * digits + ".5", "exp": f"{sign}1e{digits}"}[
            draw(st.sampled_from(["int", "float", "exp"]))].encode()
        key = draw(st.sampled_from([*numeric(route), *keys[route], "extra"]))
        return route, _with_raw(_template(route), key, raw), "huge-number", f"{key}={raw[:24].decode()}... ({len(raw)} chars)"

    @st.composite
    def wrong_type(draw):
        route = draw(routes)
        key = draw(st.sampled_from(keys[route]))
        scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8)
        value = draw(st.one_of(st.sampled_from(KEY_VALUES_WRONG), st.recursive(
            scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3), max_leaves=6)))
        return route, json.dumps({**_template(route), key: value}).encode(), "wrong-type", f"{key}={json.dumps(value)[:40]}"

    @st.composite
    def malformed(draw):
        route = draw(routes)
        raw = draw(st.sampled_from(MALFORMED))
        return route, raw, "malformed", f"{raw[:30]!r}"

    return st.one_of(non_finite(), bad_unicode(), deep(), huge_number(), wrong_type(), malformed())


HUGE = [("/generate", b'{"max_tokens": 1, "prompt": "', b'"}'),
        ("/v1/chat/completions", b'{"max_tokens": 1, "messages": [{"role": "user", "content": "', b'"}]}'),
        ("/v1/embeddings", b'{"input": "', b'"}'), ("/v1/completions", b'{"max_tokens": 1, "prompt": "', b'"}')]


def huge_bodies(count: int, limit: int) -> list[FuzzRequest]:
    """Prompts around and over the size limit `limit` (bytes), sent with Content-Length or chunked."""
    sizes = [limit + 1, limit * 2, 16 * 1024 * 1024 + 1, limit - 64, 64 * 1024 * 1024]
    out = []
    for i in range(count):
        size, (route, head, tail) = sizes[i % len(sizes)], HUGE[i % 4]
        body = head + b"a " * ((size - len(head) - len(tail)) // 2) + tail
        chunked = (i // len(sizes)) % 2 == 1
        out.append(FuzzRequest("hostile-huge", f"POST {route}", "POST", route, body, chunked=chunked,
                               note=f"{len(body)} bytes{' chunked' if chunked else ''}"))
    return out


def hostile_requests(doc: dict, n: int, seed: int = 20261202, huge: int = 0, limit: int = 4 * 1024 * 1024) -> list[FuzzRequest]:
    drawn = _draw(hostile_strategy(route_keys(doc)), n, seed)
    out = [FuzzRequest(f"hostile-{kind}", f"POST {route}", "POST", route, body, note=note) for route, body, kind, note in drawn]
    return out + huge_bodies(huge, limit)


def hostile_ws_messages(n: int, seed: int = 20261203, huge: int = 0, limit: int = 4 * 1024 * 1024) -> list[FuzzRequest]:
    """The same hostile kinds as WebSocket messages on /v1/ws (a generate message mutated),
    plus `huge` messages over the size limit."""
    drawn = _draw(hostile_strategy({"/v1/ws": WS_KEYS}), n, seed)
    out = [FuzzRequest(f"ws-{kind}", "WS /v1/ws", "WS", "/v1/ws", body, note=note) for _, body, kind, note in drawn]
    for i in range(huge):
        body = json.dumps({**WS_TEMPLATE, "prompt": "a " * ((limit + 1 + i * limit) // 2)}).encode()
        out.append(FuzzRequest("ws-huge", "WS /v1/ws", "WS", "/v1/ws", body, note=f"{len(body)} bytes"))
    return out


def shuffled(reqs: list[FuzzRequest], seed: int) -> list[FuzzRequest]:
    out = list(reqs)
    random.Random(seed).shuffle(out)
    return out
