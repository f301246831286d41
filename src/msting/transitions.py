"""The one way a state machine here moves: an enum, a table of legal moves, and one
transition function built from them that raises on anything else, with a message
naming what was allowed (a supervision bug is loud, never a silent wrong state)."""

from __future__ import annotations

from enum import Enum
from typing import Generic, Mapping, TypeVar

S = TypeVar("S", bound=Enum)


class IllegalTransition(RuntimeError):
    def __init__(self, machine: str, current: Enum, target: Enum, allowed: frozenset):
        listed = ", ".join(sorted(s.value for s in allowed)) or "nothing"
        super().__init__(f"illegal {machine} transition {current.value} -> {target.value} (allowed from {current.value}: {listed})")
        self.current = current
        self.target = target


class Transitions(Generic[S]):
    def __init__(self, machine: str, table: Mapping[S, frozenset[S]]):
        self.machine = machine
        self.table = table

    def __call__(self, current: S, target: S) -> S:
        """`target` if the move is legal, else IllegalTransition."""
        allowed = self.table[current]
        if target not in allowed:
            raise IllegalTransition(self.machine, current, target, allowed)
        return target
