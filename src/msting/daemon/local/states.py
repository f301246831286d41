"""The worker state machine: one enum, one table, one transition function.

    STOPPED → STARTING → LOADING → VERIFYING → READY ⇄ BUSY → DRAINING → STOPPED
    plus BACKOFF (waiting to restart after a crash) and FATAL (gave up; see last_error).

A worker has `parallel` slots: it is READY while none holds a request and BUSY while
one or more do (READY → BUSY as its first request begins, BUSY → READY as its last one
ends); how many are busy is the supervisor's count, not a state.

Any live state can crash into BACKOFF or FATAL. An illegal transition raises, so a
supervision bug shows up as a loud error instead of a worker in a state it cannot be in.
"""

from __future__ import annotations

from enum import Enum

from msting.transitions import IllegalTransition, Transitions

__all__ = ["IllegalTransition", "WorkerState", "transition"]


class WorkerState(str, Enum):
    STOPPED = "STOPPED"
    STARTING = "STARTING"  # process spawned, no hello yet
    LOADING = "LOADING"  # hello received, loading the model
    VERIFYING = "VERIFYING"  # loaded; a real generate proves it can serve before it takes traffic
    READY = "READY"  # idle: no slot holds a request
    BUSY = "BUSY"  # serving one or more requests (a free slot still takes another)
    DRAINING = "DRAINING"  # finishing its requests, then exits
    BACKOFF = "BACKOFF"  # crashed, waiting before the next start
    FATAL = "FATAL"  # will not be restarted automatically

    @property
    def alive(self) -> bool:
        return self in _ALIVE

    @property
    def serving(self) -> bool:
        return self in (WorkerState.READY, WorkerState.BUSY)


_ALIVE = frozenset({WorkerState.STARTING, WorkerState.LOADING, WorkerState.VERIFYING, WorkerState.READY, WorkerState.BUSY, WorkerState.DRAINING})

_S = WorkerState
_CRASH = {_S.BACKOFF, _S.FATAL}
_ALLOWED: dict[WorkerState, frozenset[WorkerState]] = {
    _S.STOPPED: frozenset({_S.STARTING}),
    _S.STARTING: frozenset({_S.LOADING, _S.DRAINING, *_CRASH}),
    _S.LOADING: frozenset({_S.VERIFYING, _S.DRAINING, *_CRASH}),
    _S.VERIFYING: frozenset({_S.READY, _S.DRAINING, *_CRASH}),
    _S.READY: frozenset({_S.BUSY, _S.DRAINING, *_CRASH}),
    _S.BUSY: frozenset({_S.READY, _S.DRAINING, *_CRASH}),
    _S.DRAINING: frozenset({_S.STOPPED, *_CRASH}),
    _S.BACKOFF: frozenset({_S.STARTING, _S.STOPPED, _S.FATAL}),
    _S.FATAL: frozenset({_S.STARTING, _S.STOPPED}),
}


transition = Transitions("worker", _ALLOWED)
