"""Profile switches: plan, then a state machine that loses no request.

    VALIDATE → PREFLIGHT → LOAD → VERIFY → ROUTE → DRAIN → DONE
                  │          │       │
                  ▼          └───────┴──→ ROLLBACK → FAILED   (the old profile keeps serving)
                FAILED

- LOAD starts the new profile's always-ready workers while the old ones keep serving,
  when memory allows both at once ("parallel"). Otherwise admission pauses: new
  requests are held, the old workers finish what they have and stop, then the new
  ones load ("drain-first").
- VERIFY runs a real generate on each new generating model, through its queue.
- ROUTE replaces the routing table in one assignment: requests resolved before it go
  to the old models (which finish them), requests after it to the new ones.
- DRAIN waits until the old models' queues are empty, then stops their workers.
A model whose spec is identical in both profiles keeps its workers: nothing reloads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from enum import Enum

from msting.config import ConfigError
from msting.daemon.model_runtime import ModelRuntime, specs_from_profile
from msting.daemon.requests import ApiError, GenerationRequest
from msting.daemon.service import Routing, Service, SwitchProgress

log = logging.getLogger("msting.daemon.switch")

STEPS = ["validate", "preflight", "load", "verify", "switch", "drain"]


class Phase(str, Enum):
    VALIDATE = "validate"
    PREFLIGHT = "preflight"
    LOAD = "load"
    VERIFY = "verify"
    ROUTE = "switch"
    DRAIN = "drain"
    DONE = "done"
    ROLLBACK = "rollback"
    FAILED = "failed"


_ALLOWED = {
    Phase.VALIDATE: {Phase.PREFLIGHT, Phase.FAILED},
    Phase.PREFLIGHT: {Phase.LOAD, Phase.FAILED},
    Phase.LOAD: {Phase.VERIFY, Phase.ROLLBACK},
    Phase.VERIFY: {Phase.ROUTE, Phase.ROLLBACK},
    Phase.ROUTE: {Phase.DRAIN},
    Phase.DRAIN: {Phase.DONE},
    Phase.ROLLBACK: {Phase.FAILED},
    Phase.DONE: set(),
    Phase.FAILED: set(),
}


def advance(current: Phase, target: Phase) -> Phase:
    if target not in _ALLOWED[current]:
        raise RuntimeError(f"illegal switch transition {current.value} -> {target.value}")
    return target


class SwitchFailed(Exception):
    pass


# ---- planning ---------------------------------------------------------------------


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
    budget = profile.memory_budget_mb * 1024 * 1024 if profile.memory_budget_mb else None
    if name == profile.name != "default":
        store.record_event("profile_restored", detail=profile.name)
    return Routing.build(profile.name, specs, config, store, budget, launcher=launcher)



def load_target(service: Service, name: str):
    """Find, parse and check a profile (files exist and are GGUF). Raises ConfigError with every problem."""
    from msting.config.profiles import check_files, load_named_profile

    profile = load_named_profile(service.paths, service.config, name)
    problems = check_files(profile, service.paths.models_dir)
    if problems:
        raise ConfigError(problems, profile.source)
    return profile


def build_plan(service: Service, profile) -> tuple[Routing, dict]:
    """The target routing (reusing identical runtimes) and a plan: what loads, what
    unloads, and the memory it needs against what is available."""
    from msting.models.gguf_file import read_gguf_info
    from msting.models.memory import estimate_model, preflight

    specs = specs_from_profile(profile, service.paths.models_dir)
    budget = profile.memory_budget_mb * 1024 * 1024 if profile.memory_budget_mb else None
    target = Routing.build(profile.name, specs, service.config, service.store, budget, reuse=service.routing.by_key(),
                            launcher=service.launcher)
    current = service.routing.runtimes()
    to_load = [rt for rt in target.models.values() if rt not in current and rt.spec.always_ready]
    kept = [rt for rt in target.runtimes() if rt in current]
    to_unload = [rt for rt in current if rt not in target.runtimes() and rt.started]
    estimates = [estimate_model(read_gguf_info(rt.spec.path), rt.spec.n_ctx, rt.spec.replicas, embedding=rt.spec.type == "embeddings")
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
        "on_demand": [rt.name for rt in target.models.values() if not rt.spec.always_ready],
        "default_model": target.default_model,
        "memory": {"needed_bytes": check.needed, "available_bytes": check.available, "freed_by_unload_bytes": freed,
                   "budget_bytes": budget, "message": check.message if to_load else "nothing to load: every always-ready model is kept"},
    }
    return target, plan


# ---- running ----------------------------------------------------------------------


def start_switch(service: Service, name: str) -> dict:
    """Start a switch in the background and return its job (409 if one is running)."""
    running = service.jobs.running("switch")
    if running is not None:
        raise ApiError(409, "invalid_request_error", "switch_in_progress",
                       f"a switch to '{running.target}' is already running (job {running.id})")
    if service.stopping:
        raise ApiError(503, "unavailable_error", "shutting_down", "the daemon is shutting down")
    if name != "default":
        from msting.config.profiles import find_profile

        try:
            find_profile(service.paths, name)  # a name that matches no file is a 404, not a failed job
        except ConfigError as exc:
            raise ApiError(404, "not_found_error", "profile_not_found", str(exc).strip()) from None
    job = service.jobs.create("switch", name, STEPS)
    service.spawn(run_switch(service, job, name), name=f"switch {name}")
    return job.to_dict()


async def dry_run(service: Service, name: str) -> dict:
    """The plan of a switch, changing nothing."""
    try:
        profile = await asyncio.to_thread(load_target, service, name)
    except ConfigError as exc:
        raise ApiError(400, "invalid_request_error", "invalid_profile", f"profile '{name}' is invalid:\n{exc}") from None
    _, plan = await asyncio.to_thread(build_plan, service, profile)
    return {**plan, "dry_run": True}



async def run_switch(service: Service, job, profile_name: str) -> None:
    jobs = service.jobs
    phase = Phase.VALIDATE
    started = time.monotonic()
    old = service.routing
    target: Routing | None = None
    plan: dict = {}
    try:
        jobs.begin(job, "validate")
        try:
            profile = await asyncio.to_thread(load_target, service, profile_name)
        except ConfigError as exc:
            raise SwitchFailed(f"profile '{profile_name}' is invalid:\n{exc}") from None
        jobs.end(job, "validate", f"{len(profile.models)} model(s), default {profile.default_model}")

        phase = advance(phase, Phase.PREFLIGHT)
        jobs.begin(job, "preflight")
        target, plan = await asyncio.to_thread(build_plan, service, profile)
        if plan["mode"] == "refused":
            raise SwitchFailed(f"not enough memory for profile '{profile_name}': {plan['memory']['message']}")
        jobs.end(job, "preflight", f"{plan['mode']}: {plan['memory']['message']}")

        phase = advance(phase, Phase.LOAD)
        service.switching = SwitchProgress(target, job.id, hold=plan["mode"] == "drain-first")
        jobs.begin(job, "load", f"loading {', '.join(plan['load']) or 'nothing (all models kept)'}")
        if service.switching.hold:
            await _drain_and_stop(service, [rt for rt in old.runtimes() if rt not in target.runtimes()])
        service.activate(target)
        timeout = service.config.llm_service.startup_timeout_sec
        for rt in target.models.values():
            if rt.started:
                state = await rt.wait_settled(timeout)
                if state != "ready":
                    raise SwitchFailed(f"model '{rt.name}' did not become ready ({state}): {rt.last_error or 'timed out'}")
        jobs.end(job, "load")

        phase = advance(phase, Phase.VERIFY)
        jobs.begin(job, "verify")
        verified = [rt for rt in target.models.values() if rt.started and rt.spec.type == "llm"]
        for rt in verified:
            await _verify(service, rt, timeout)
        jobs.end(job, "verify", f"generated on {', '.join(rt.name for rt in verified) or 'no model (none always-ready)'}")

        phase = advance(phase, Phase.ROUTE)
        jobs.begin(job, "switch")
        service.routing = target  # the atomic switch
        target.claim()
        service.store.set_meta("active_profile", profile.name)
        if service.switching.hold:
            service.release_held()
        service.switching = None
        switched_ms = (time.monotonic() - started) * 1000.0  # the new profile serves from here on
        jobs.end(job, "switch", f"routing now on profile '{profile.name}' after {switched_ms:.0f} ms")
        log.info("profile switched %s -> %s (%s)", old.profile, profile.name, plan["mode"])

        phase = advance(phase, Phase.DRAIN)
        jobs.begin(job, "drain")
        retired = [rt for rt in old.runtimes() if rt not in target.runtimes() and rt.started]
        await _drain_and_stop(service, retired)
        jobs.end(job, "drain", f"stopped {', '.join(rt.key for rt in retired) or 'nothing'}")
        phase = advance(phase, Phase.DONE)
        duration = (time.monotonic() - started) * 1000.0
        service.store.record_switch(old.profile, profile.name, True, duration, plan["mode"])
        service.store.record_event("profile_switched", detail=f"{old.profile} -> {profile.name} in {duration:.0f} ms ({plan['mode']})")
        jobs.finish(job, result={**plan, "duration_ms": round(duration, 1), "switched_ms": round(switched_ms, 1)})
    except (SwitchFailed, ApiError, OSError) as exc:
        message = str(exc) if not isinstance(exc, ApiError) else exc.message
        if phase in (Phase.LOAD, Phase.VERIFY):
            phase = advance(phase, Phase.ROLLBACK)
            await _rollback(service, old, target)
        service.switching = None
        duration = (time.monotonic() - started) * 1000.0
        service.store.record_switch(old.profile, profile_name, False, duration, message[:500])
        service.store.record_event("profile_switch_failed", detail=f"{old.profile} -> {profile_name}: {message[:300]}")
        log.warning("profile switch to %s failed: %s", profile_name, message)
        jobs.finish(job, error=message, result=plan or None)


async def _verify(service: Service, rt: ModelRuntime, timeout: float) -> None:
    probe = GenerationRequest(rt.name, {"prompt": "Hello", "max_tokens": 2, "temperature": 0.0}, internal=True)
    probe.runtime = rt
    rt.queue.put_front(probe)
    try:
        kind, payload = await asyncio.wait_for(probe.events.get(), timeout=timeout)
    except asyncio.TimeoutError:
        raise SwitchFailed(f"verification generate on '{rt.name}' timed out") from None
    if kind == "error":
        raise SwitchFailed(f"verification generate on '{rt.name}' failed: {payload.message}")


async def _drain_and_stop(service: Service, runtimes: list[ModelRuntime]) -> None:
    grace = service.config.llm_service.drain_grace_sec
    deadline = time.monotonic() + max(grace, 1.0)
    while time.monotonic() < deadline and any(
            (len(rt.queue) or rt.in_flight) and rt.state not in ("failed", "stopped") for rt in runtimes):
        await asyncio.sleep(0.02)
    await asyncio.gather(*(rt.stop() for rt in runtimes))


async def _rollback(service: Service, old: Routing, target: Routing | None) -> None:
    """Stop what the switch started, restart what it stopped, and put held requests back."""
    if target is not None:
        fresh = [rt for rt in target.runtimes() if rt not in old.runtimes()]
        if service.switching is not None:
            for rt in fresh:  # requests that already reached the new models go back through old routing
                service.switching.held.extend(rt.queue.drain_all())
        await asyncio.gather(*(rt.stop() for rt in fresh))
    service.activate(old)
    if service.switching is not None:
        service.release_held()
