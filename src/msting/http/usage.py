"""GET /v1/usage: the usage rows grouped by service, model, day or client, with totals.

Query: `group_by` (service, model, day or client; default service), `since` and `until`
(an ISO 8601 date or date and time, Unix seconds, or an age such as 24h or 7d; absent:
every row kept). The daemon's usage log answers (`Control.usage`), with every request
that ended before the question.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from msting.api.errors import InvalidRequest
from msting.http.native import control_of

USAGE_PARAMS = frozenset({"group_by", "since", "until"})
MAX_PARAM_CHARS = 64


async def usage(request: Request) -> Response:
    params = request.query_params
    unknown = sorted(set(params) - USAGE_PARAMS)
    if unknown:
        raise InvalidRequest("invalid_parameter", f"unsupported query parameter(s): {', '.join(unknown)}; "
                             f"supported: {', '.join(sorted(USAGE_PARAMS))}", param=unknown[0])
    for key, value in params.items():
        if len(value) > MAX_PARAM_CHARS:
            raise InvalidRequest("invalid_parameter", f"{key}: at most {MAX_PARAM_CHARS} characters", param=key)
    return JSONResponse(await control_of(request).usage(params.get("group_by", "service"), params.get("since"), params.get("until")))


routes = [Route("/v1/usage", usage, methods=["GET"])]
