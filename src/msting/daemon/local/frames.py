"""The daemon's side of the worker protocol (msting.worker.protocol): a job into a
frame, and a worker's answer back into the typed results of msting.api.events."""

from __future__ import annotations

from msting.api.errors import InvalidRequest, MstingError, ServerError
from msting.api.events import Done, Embeddings, Usage
from msting.api.requests import ChatRequest, EmbeddingRequest
from msting.daemon.local.queue import LocalJob
from msting.worker import protocol
from msting.worker.protocol import MsgType


def request_frame(job: LocalJob) -> bytes:
    """The generate or embed frame for `job`; raises protocol.ProtocolError (or
    TypeError/ValueError) when it cannot be encoded."""
    r = job.request
    if isinstance(r, EmbeddingRequest):
        return protocol.encode(MsgType.EMBED, job.id, input=list(r.inputs))
    fields = r.sampling.as_dict()
    if not fields["choices"]:
        del fields["choices"]  # optional in the frame: only the router model's requests constrain the reply
    if isinstance(r, ChatRequest):
        fields["messages"] = [{"role": m.role, "content": m.content} for m in r.messages]
    else:
        fields["prompt"] = r.prompt
    return protocol.encode(MsgType.GENERATE, job.id, stream=job.stream, **fields)


def result(job: LocalJob, frame: dict) -> Done | Embeddings:
    """The typed result of a done frame, with the time the job waited in the queue."""
    usage = frame.get("usage") or {}
    timings = dict(frame.get("timings") or {})
    queue_ms = job.queue_ms()
    if queue_ms is not None:
        timings["queue_ms"] = queue_ms
    if job.embed:
        return Embeddings(job.model, frame.get("embeddings") or [], Usage(int(usage.get("prompt_tokens", 0))), timings)
    return Done(job.model, frame.get("text", ""), frame.get("finish_reason"),
                Usage(int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)), int(usage.get("cached_tokens", 0))),
                timings)


def error(frame: dict) -> MstingError:
    """The error of an error frame: the client's fault, or the engine's (its traceback,
    if any, went to the worker's stderr and the log, never to a client)."""
    message = frame.get("message") or "the engine failed"
    if frame.get("kind") == "bad_request":
        return InvalidRequest("invalid_request", message)
    return ServerError("engine_error", message)
