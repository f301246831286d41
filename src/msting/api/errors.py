"""The errors every part of the request path raises, with no HTTP knowledge.

Each class is one kind of failure a client can act on; `code` is the stable,
machine-readable reason within it, `message` says what happened and what to do, and
`details` carries extra fields of the error body (`param`, `stderr`, `error_id`).
`msting.http.errors` alone maps a class to an HTTP status and an error `type`.
"""

from __future__ import annotations

from typing import Any


class MstingError(Exception):
    """A failure with a code and a message meant for the client."""

    def __init__(self, code: str, message: str, *, retry_after: int | None = None, **details: Any):
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after  # seconds after which trying again makes sense
        self.details = details


class InvalidRequest(MstingError):
    """The request itself is wrong: a field, its type or its range (`param` names it)."""


class TooLarge(InvalidRequest):
    """The request is bigger than what is accepted."""


class NotFound(MstingError):
    """The named thing (model, profile, job, route) does not exist."""


class Conflict(MstingError):
    """The request is valid but clashes with the current state (a switch runs already)."""


class NotAllowed(MstingError):
    """The method is not allowed on this route."""


class Unavailable(MstingError):
    """The service cannot take the request now (full queue, failed model, shutting down);
    `retry_after` says when to try again, where that is known."""


class RateLimited(MstingError):
    """A rate limit has no room for the request (msting.policy.limits); `retry_after`
    says when it will, None when the request can never fit."""


class Timeout(MstingError):
    """Waiting for something (a model load) took longer than allowed."""


class ServerError(MstingError):
    """The service failed while serving a valid request (engine error, crashed worker)."""


class UpstreamError(ServerError):
    """A remote engine failed to answer: an error status, a reply of the wrong shape, or
    a stream cut short. `attempts` (in details) lists what was tried."""


def unknown_model(name: str, known: list[str], why: str | None = None) -> NotFound:
    message = why or f"model '{name}' is not known"
    return NotFound("model_not_found", f"{message}; known models: {', '.join(known) or 'none'}")
