"""Readiness means "can generate": the one probe that proves it.

A new worker runs it on its own process before it takes traffic; a profile switch runs
it again through each new model's queue before routing moves. Both build the probe
here and judge its answer here.
"""

from __future__ import annotations

import asyncio

from msting.api.events import Failed
from msting.api.requests import CompletionRequest, EmbeddingRequest, SamplingParams
from msting.daemon.local.queue import LocalJob

PROMPT = "Hello"


def probe(model: str, *, embedding: bool) -> LocalJob:
    """One token of a greedy generate (or one embedding, for an embeddings worker)."""
    if embedding:
        request = EmbeddingRequest((PROMPT,), model)
    else:
        request = CompletionRequest(PROMPT, model, SamplingParams(max_tokens=1, temperature=0.0))
    return LocalJob(request, model, internal=True)


def failure(job: LocalJob) -> str | None:
    """Why a finished probe failed, or None when it succeeded."""
    event = job.events.get_nowait()
    return event.error.message if isinstance(event, Failed) else None


async def outcome(job: LocalJob, timeout: float) -> str | None:
    """Wait for a queued probe's answer: None when it generated, else why not."""
    try:
        event = await asyncio.wait_for(job.events.get(), timeout=timeout)
    except asyncio.TimeoutError:
        job.cancel()
        return "timed out"
    return event.error.message if isinstance(event, Failed) else None
