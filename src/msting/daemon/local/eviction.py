"""Memory for an on-demand load: what to unload, least recently used first, or a refusal.

A pure policy: it is given the model to load, the models loaded now, the budget and
the memory available, and it names the idle on-demand models to unload (those a
request asked to keep loaded last). It refuses clearly rather than risk an
out-of-memory kill.
"""

from __future__ import annotations

import math

from msting.api.errors import Unavailable
from msting.daemon.local.model import LocalModel


def choose_victims(model: LocalModel, loaded: list[LocalModel], *, budget: int | None, available: int, now: float) -> list[LocalModel]:
    """The idle on-demand models to unload so that `model` fits (often none); raises
    Unavailable(insufficient_memory) when even unloading all of them is not enough."""
    from msting.models.memory import format_bytes

    need = model.estimated_bytes
    loaded = [m for m in loaded if m is not model]
    used = sum(model_size(m) for m in loaded)
    idle = sorted((m for m in loaded if m.on_demand and m.idle_for(now) > 0),
                  key=lambda m: (m.keep_alive_sec == math.inf, m.last_used))
    victims: list[LocalModel] = []

    def fits() -> bool:
        freed = sum(model_size(m) for m in victims)
        return need <= available + freed and (budget is None or used - freed + need <= budget)

    while not fits() and idle:
        victims.append(idle.pop(0))
    if not fits():
        limit = f"the budget of {format_bytes(budget)} ({format_bytes(used)} in use)" if budget is not None and used + need > budget \
            else f"{format_bytes(available)} available"
        raise Unavailable("insufficient_memory", f"model '{model.name}' needs about {format_bytes(need)} but there is only {limit}, "
                          "and no idle on-demand model to unload", retry_after=5)
    return victims


def model_size(model: LocalModel) -> int:
    """A loaded model's estimate; 0 when its file can no longer be read (it was replaced
    under a running worker: the worker holds its memory, but nothing better is known)."""
    from msting.models.gguf_file import ModelFileError

    try:
        return model.estimated_bytes
    except ModelFileError:
        return 0
