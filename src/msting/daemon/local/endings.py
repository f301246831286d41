"""How a worker process ended, and what a FATAL worker waits for."""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class FatalInfo:
    """Why a worker is FATAL and what will bring it back."""

    kind: str  # "boot" (the model cannot load) | "crashes" (too many start failures)
    reason: str
    retry_at: float | None  # wall-clock time of the next automatic try (kind "crashes")
    model: str

    def next_step(self) -> str:
        load = f"`msting llm load {self.model}`"
        if self.retry_at is not None:
            return f"tried again at {time.strftime('%H:%M:%S', time.localtime(self.retry_at))}, or at once on {load}"
        return f"tried again when the model file changes, or on {load}"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "reason": self.reason, "retry_at": self.retry_at, "next": self.next_step()}


class Exit(Exception):
    """Why an incarnation ended."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind  # "crash" | "boot" | "stopped"
        self.reason = reason


def describe_exit(rc: int | None) -> str:
    if rc is None:
        return "still running"
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exited with code {rc}"
