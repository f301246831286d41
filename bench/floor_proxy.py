#!/usr/bin/env python3
"""The least a proxy built on msting's own stack does: uvicorn (httptools) and Starlette in
front, one aiohttp session to the upstream, nothing else (no validation, no routing, no
retries, no accounting). bench/proxy.py measures it beside msting, in the same rounds, as
the floor of what any proxy on this stack and machine adds.

``floor_proxy.py UPSTREAM_URL PORT`` serves, on 127.0.0.1:PORT:
- ``POST /v1/chat/completions``: a streamed request's bytes are passed through as they
  come; a non-streamed one is sent upstream streamed (as msting sends it), its SSE lines
  read and the content collected, then answered as one chat completion;
- ``POST /pass/v1/chat/completions``: the request passed through as it is, not streamed;
- ``GET /v1/models``: an empty list (readiness).
A model named ``service~model`` goes upstream as ``model``.
"""

from __future__ import annotations

import json
import sys
import time

import aiohttp
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

PATH = "/v1/chat/completions"


def make_app(upstream: str) -> Starlette:
    sessions: list[aiohttp.ClientSession] = []

    def session() -> aiohttp.ClientSession:
        if not sessions:
            sessions.append(aiohttp.ClientSession(trust_env=False))
        return sessions[0]

    async def body_of(request: Request) -> dict:
        body = json.loads(await request.body())
        body["model"] = body["model"].split("~", 1)[-1]
        return body

    async def chat(request: Request) -> Response:
        body = await body_of(request)
        if body.get("stream"):
            resp = await session().post(upstream + PATH, json=body, timeout=aiohttp.ClientTimeout(sock_read=600))

            async def passed():
                try:
                    while data := await resp.content.readany():
                        yield data
                finally:
                    resp.release()
            return StreamingResponse(passed(), media_type="text/event-stream")
        body.update(stream=True, stream_options={"include_usage": True})
        text, usage, finish, rest = [], None, None, b""
        async with session().post(upstream + PATH, json=body, timeout=aiohttp.ClientTimeout(sock_read=600)) as resp:
            while data := await resp.content.readany():
                *lines, rest = (rest + data).split(b"\n")
                for line in lines:
                    if not line.startswith(b"data: {"):
                        continue
                    chunk = json.loads(line[6:])
                    usage = chunk.get("usage") or usage
                    for choice in chunk.get("choices") or ():
                        text.append((choice.get("delta") or {}).get("content") or "")
                        finish = choice.get("finish_reason") or finish
        return JSONResponse({"id": "chatcmpl-floor", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(text)},
                                          "finish_reason": finish}], "usage": usage})

    async def passed_through(request: Request) -> Response:
        async with session().post(upstream + PATH, json=await body_of(request), timeout=aiohttp.ClientTimeout(sock_read=600)) as resp:
            return Response(await resp.read(), status_code=resp.status, media_type="application/json")

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": []})

    return Starlette(routes=[Route(PATH, chat, methods=["POST"]), Route("/pass" + PATH, passed_through, methods=["POST"]),
                             Route("/v1/models", models)])


def main(argv: list[str]) -> int:
    upstream, port = argv[0].rstrip("/"), int(argv[1])
    uvicorn.run(make_app(upstream), host="127.0.0.1", port=port, loop="asyncio", http="httptools", lifespan="off",
                log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
