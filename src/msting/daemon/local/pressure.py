"""Memory pressure, for `llm_service.power_saving`: a pure test of the memory available
and of the profile's budget against the models loaded.

Under pressure the reaper unloads an idle on-demand model after `power_saving.idle_sec`
instead of its keep-alive; always-ready models are never unloaded.
"""

from __future__ import annotations

from msting.config.schema import PowerSaving
from msting.daemon.local.eviction import model_size
from msting.daemon.local.model import LocalModel

MIB = 1024 * 1024


def memory_pressure(settings: PowerSaving, loaded: list[LocalModel], *, budget: int | None, available: int) -> str | None:
    """Why memory is short now (a sentence), or None: less than `min_available_mb`
    available, or the loaded models' estimates at `budget_used_percent` of `budget` or more.
    None whenever power saving is off."""
    from msting.models.memory import format_bytes

    if not settings.enabled:
        return None
    if available < settings.min_available_mb * MIB:
        return f"{format_bytes(available)} available, below power_saving.min_available_mb ({settings.min_available_mb} MiB)"
    if budget:
        used = sum(model_size(m) for m in loaded)
        if used * 100 >= budget * settings.budget_used_percent:
            return (f"the loaded models use {format_bytes(used)} of the budget of {format_bytes(budget)}, "
                    f"at least power_saving.budget_used_percent ({settings.budget_used_percent:g} %)")
    return None
