"""Planning a profile switch: the routing the daemon starts with, the target profile
checked, and the plan (what loads, what is kept, what unloads, and the memory).
"""

from __future__ import annotations

import logging

from msting.config import ConfigError
from msting.daemon.local.model import specs_from_profile
from msting.daemon.local.routing import Routing

log = logging.getLogger("msting.daemon.switch")

def restore_routing(config, paths, store, launcher=None) -> Routing:
    """The routing the daemon starts with: the active profile from the store (it survives
    kill -9), or "default". A stored profile that became invalid falls back to "default",
    loudly. The default profile starts even with a broken model file: that model goes
    FATAL with the reason, and /health keeps answering."""
    from msting.config.profiles import check_files, load_named_profile

    name = store.get_meta("active_profile", "default")
    try:
        profile = load_named_profile(paths, config, name)
        problems = check_files(profile, paths.models_dir) if name != "default" else []
        if problems:
            raise ConfigError(problems, profile.source)
    except ConfigError as exc:
        if name == "default":
            raise
        log.error("cannot restore profile '%s', starting 'default' instead:\n%s", name, exc)
        store.record_event("profile_restore_failed", detail=f"{name}: {str(exc)[:300]}; started 'default'")
        store.set_meta("active_profile", "default")
        profile = load_named_profile(paths, config, "default")
    specs = specs_from_profile(profile, paths.models_dir)
    budget = profile.memory_budget_bytes
    if name == profile.name != "default":
        store.record_event("profile_restored", detail=profile.name)
    return Routing.build(profile.name, specs, config, store, budget, launcher=launcher)


def load_target(service, name: str):
    """Find, parse and check a profile (files exist and are GGUF). Raises ConfigError with every problem."""
    from msting.config.profiles import check_files, load_named_profile

    profile = load_named_profile(service.paths, service.config, name)
    problems = check_files(profile, service.paths.models_dir)
    if problems:
        raise ConfigError(problems, profile.source)
    return profile


def build_plan(service, profile) -> tuple[Routing, dict]:
    """The target routing (reusing identical runtimes) and a plan: what loads, what
    unloads, and the memory it needs against what is available."""
    from msting.models.gguf_file import read_gguf_info
    from msting.models.memory import estimate_model, preflight

    specs = specs_from_profile(profile, service.paths.models_dir)
    budget = profile.memory_budget_bytes
    target = Routing.build(profile.name, specs, service.config, service.store, budget, reuse=service.routing.by_key(),
                            launcher=service.launcher)
    current = service.routing.all_models()
    to_load = [rt for rt in target.models.values() if rt not in current and not rt.on_demand]
    kept = [rt for rt in target.all_models() if rt in current]
    to_unload = [rt for rt in current if rt not in target.all_models() and rt.started]
    estimates = [estimate_model(read_gguf_info(rt.spec.path), rt.spec.n_ctx, rt.spec.replicas, parallel=rt.parallel,
                                embedding=rt.spec.type == "embeddings")
                 for rt in to_load]
    check = preflight(estimates, budget_bytes=budget)
    freed = sum(sum(rt.worker_rss().values()) for rt in to_unload)
    if check.ok:
        mode = "parallel"
    elif check.needed <= check.available + freed and (budget is None or check.needed <= budget):
        mode = "drain-first"
    else:
        mode = "refused"
    plan = {
        "profile": profile.name,
        "from_profile": service.routing.profile,
        "mode": mode,
        "load": [rt.name for rt in to_load],
        "keep": [rt.key for rt in kept],
        "unload": [rt.key for rt in to_unload],
        "on_demand": [rt.name for rt in target.models.values() if rt.on_demand],
        "default_model": target.default_model,
        "memory": {"needed_bytes": check.needed, "available_bytes": check.available, "freed_by_unload_bytes": freed,
                   "budget_bytes": budget, "message": check.message if to_load else "nothing to load: every always-ready model is kept"},
    }
    return target, plan


