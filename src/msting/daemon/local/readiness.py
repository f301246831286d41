"""Readiness: one word and a reason for the whole local service.

`ready` means every model that should be serving has a worker that generated a
token; otherwise the first problem found, worst first: failed, degraded, loading.
"""

from __future__ import annotations

from msting.daemon.local.model import LocalModel, ModelState

_REASONS = (
    (ModelState.FAILED, "failed", "model '{name}' failed (FATAL): {error}; {next}"),
    (ModelState.DEGRADED, "degraded", "model '{name}' is restarting after a crash: {error}"),
    (ModelState.LOADING, "loading", "model '{name}' is loading"),
    (ModelState.STOPPED, "loading", "model '{name}' is not loaded"),
)


def readiness(models: list[LocalModel], *, stopping: bool, always_ready: bool) -> tuple[str, str | None]:
    """(status, reason) of the profile's `models`: ready, idle, loading, degraded,
    failed or stopping."""
    if stopping:
        return "stopping", "the daemon is shutting down"
    active = [m for m in models if m.started or (always_ready and m.spec.always_ready)]
    if not active:
        return "idle", "no model is loaded; POST /models/load to load one"
    for m in active:
        if m.state is ModelState.FAILED:
            m.recheck()  # a fixed model file is noticed at once
    for state, status, reason in _REASONS:
        for m in active:
            if m.state is state:
                fatal = m.fatal or {}
                return status, reason.format(name=m.name, error=m.last_error, next=fatal.get("next") or "it is not retried automatically")
    return "ready", None
