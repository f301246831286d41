"""The central service's own surface: the services behind the router and their models.

- GET /llm/services: every service (local, stub and the configured remote ones), each
  URL's state (up, down, cooling_down until a time, probing), latency and last error;
- GET /llm/services/{name}, /llm/services/{name}/models, /llm/services/{name}/models/{model};
- GET /llm/services/{name}/ping: a live check of each URL now;
- GET /llm/services/{name}/capabilities;
- GET /llm/models, /llm/models/{name}: every model, named as requests name it.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from msting.http.native import router_of
from msting.http.openai_api import model_object, path_name


def _service(request: Request):
    return router_of(request).service(path_name(request, "name"))


async def services(request: Request) -> Response:
    router = router_of(request)
    return JSONResponse({"object": "list", "default_service": router.default, "fallback_chain": list(router.fallback_chain),
                         "data": router.services()})


async def service(request: Request) -> Response:
    provider = _service(request)
    status = provider.status()
    status["is_default"] = provider.name == router_of(request).default
    return JSONResponse(status)


async def service_models(request: Request) -> Response:
    router = router_of(request)
    provider = _service(request)
    await provider.refresh_details()
    return JSONResponse({"object": "list", "data": [model_object(router.public(i)) for i in provider.models()]})


async def service_model(request: Request) -> Response:
    router = router_of(request)
    provider = _service(request)
    await provider.refresh_details()
    return JSONResponse(model_object(router.public(provider.model(path_name(request, "model")))))


async def ping(request: Request) -> Response:
    result = await _service(request).ping()
    ok = result["status"] in ("ready", "degraded")
    return JSONResponse(result, status_code=200 if ok else 503)


async def capabilities(request: Request) -> Response:
    provider = _service(request)
    return JSONResponse({"name": provider.name, **provider.capabilities.as_dict()})


async def models(request: Request) -> Response:
    await router_of(request).refresh_details()  # the GGUF headers, in a thread
    return JSONResponse({"object": "list", "data": [model_object(i) for i in router_of(request).models()]})


async def model(request: Request) -> Response:
    await router_of(request).refresh_details()
    return JSONResponse(model_object(router_of(request).model(path_name(request, "name"))))


routes = [
    Route("/llm/services", services, methods=["GET"]),
    Route("/llm/services/{name}", service, methods=["GET"]),
    Route("/llm/services/{name}/models", service_models, methods=["GET"]),
    Route("/llm/services/{name}/models/{model:path}", service_model, methods=["GET"]),
    Route("/llm/services/{name}/ping", ping, methods=["GET"]),
    Route("/llm/services/{name}/capabilities", capabilities, methods=["GET"]),
    Route("/llm/models", models, methods=["GET"]),
    Route("/llm/models/{name:path}", model, methods=["GET"]),
]
