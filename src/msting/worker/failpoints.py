"""Fault injection for reliability tests: make a real worker process die on cue.

The daemon's supervision (restarts, poison requests, FATAL and its retries) has to be
proven against workers that really die, yet no valid input may crash a worker. So the
worker reads ``MSTING_WORKER_FAILPOINTS`` (off when unset), a comma-separated list of
``name=argument``:

``crash_on_prompt=TEXT``
    the worker kills itself (SIGKILL) when a ``generate`` it is about to run has TEXT
    in its prompt or in one of its messages: a request that crashes every worker it
    reaches;
``slow_on_prompt=TEXT``
    the worker waits SLOW_SEC before it starts a ``generate`` that has TEXT in its
    prompt or in one of its messages: a model too slow for a time budget;
``crash_at_load_while=PATH``
    the worker aborts (SIGABRT) while loading its model, as long as PATH exists: a
    model whose workers die before they become ready, until PATH is removed.

Unknown names are ignored, so a test written for a newer worker cannot break an older
one. Dependency-free and cheap: read once per process.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, fields
from typing import Any, Mapping

ENV_VAR = "MSTING_WORKER_FAILPOINTS"
SLOW_SEC = 2.0


@dataclass(frozen=True)
class Failpoints:
    crash_on_prompt: str | None = None
    crash_at_load_while: str | None = None
    slow_on_prompt: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Failpoints:
        raw = environ.get(ENV_VAR, "")
        found: dict[str, str] = {}
        for item in raw.split(","):
            name, sep, arg = item.strip().partition("=")
            if sep and arg and name in _NAMES:
                found[name] = arg
        return cls(**found)

    def at_load(self) -> None:
        if self.crash_at_load_while and os.path.exists(self.crash_at_load_while):
            os.abort()

    def at_generate(self, args: Mapping[str, Any]) -> None:
        if not (self.crash_on_prompt or self.slow_on_prompt):
            return
        texts = [args.get("prompt") or ""] + [m.get("content") or "" for m in args.get("messages") or []]
        if self.slow_on_prompt and any(self.slow_on_prompt in text for text in texts):
            time.sleep(SLOW_SEC)
        if self.crash_on_prompt and any(self.crash_on_prompt in text for text in texts):
            os.kill(os.getpid(), signal.SIGKILL)


_NAMES = frozenset(f.name for f in fields(Failpoints))
