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

from msting.api.errors import Conflict, InvalidRequest, MstingError, NotFound
from msting.config import ConfigError
from msting.daemon.jobs import Jobs
from msting.daemon.local import verify
from msting.daemon.local.admission import shutting_down
from msting.daemon.local.model import LocalModel, ModelState
from msting.daemon.local.plan import build_plan, load_target
from msting.daemon.local.routing import Routing
from msting.daemon.local.service import LocalService
from msting.transitions import Transitions

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


advance = Transitions("switch", _ALLOWED)


class SwitchFailed(Exception):
    pass


# ---- running ----------------------------------------------------------------------


def start_switch(service: LocalService, jobs: Jobs, name: str) -> dict:
    """Start a switch in the background and return its job (409 if one is running)."""
    running = jobs.running("switch")
    if running is not None:
        raise Conflict("switch_in_progress", f"a switch to '{running.target}' is already running (job {running.id})")
    if service.stopping:
        raise shutting_down()
    if name != "default":
        from msting.config.profiles import find_profile

        try:
            find_profile(service.paths, name)  # a name that matches no file is a 404, not a failed job
        except ConfigError as exc:
            raise NotFound("profile_not_found", str(exc).strip()) from None
    job = jobs.create("switch", name, STEPS)
    service.spawn(run_switch(service, jobs, job, name), name=f"switch {name}")
    return job.to_dict()


async def dry_run(service: LocalService, name: str) -> dict:
    """The plan of a switch, changing nothing."""
    try:
        profile = await asyncio.to_thread(load_target, service, name)
    except ConfigError as exc:
        raise InvalidRequest("invalid_profile", f"profile '{name}' is invalid:\n{exc}") from None
    _, plan = await asyncio.to_thread(build_plan, service, profile)
    return {**plan, "dry_run": True}



async def run_switch(service: LocalService, jobs: Jobs, job, profile_name: str) -> None:
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
        drain_first = plan["mode"] == "drain-first"
        service.begin_switch(target, job.id, pause=drain_first)
        jobs.begin(job, "load", f"loading {', '.join(plan['load']) or 'nothing (all models kept)'}")
        if drain_first:
            await _drain_and_stop(service, [m for m in old.all_models() if m not in target.all_models()])
        service.activate(target)
        timeout = service.config.llm_service.startup_timeout_sec
        for rt in target.models.values():
            if rt.started:
                state = await rt.wait_settled(timeout)
                if state is not ModelState.READY:
                    raise SwitchFailed(f"model '{rt.name}' did not become ready ({state.value}): {rt.last_error or 'timed out'}")
        jobs.end(job, "load")

        phase = advance(phase, Phase.VERIFY)
        jobs.begin(job, "verify")
        verified = [rt for rt in target.models.values() if rt.started and rt.spec.type == "llm"]
        for rt in verified:
            await _verify(rt, timeout)
        jobs.end(job, "verify", f"generated on {', '.join(rt.name for rt in verified) or 'no model (none always-ready)'}")

        phase = advance(phase, Phase.ROUTE)
        jobs.begin(job, "switch")
        service.commit_switch(target)  # the atomic switch
        service.store.set_meta("active_profile", profile.name)
        service.end_switch()
        switched_ms = (time.monotonic() - started) * 1000.0  # the new profile serves from here on
        jobs.end(job, "switch", f"routing now on profile '{profile.name}' after {switched_ms:.0f} ms")
        log.info("profile switched %s -> %s (%s)", old.profile, profile.name, plan["mode"])

        phase = advance(phase, Phase.DRAIN)
        jobs.begin(job, "drain")
        retired = [rt for rt in old.all_models() if rt not in target.all_models() and rt.started]
        await _drain_and_stop(service, retired)
        jobs.end(job, "drain", f"stopped {', '.join(rt.key for rt in retired) or 'nothing'}")
        phase = advance(phase, Phase.DONE)
        duration = (time.monotonic() - started) * 1000.0
        service.store.record_switch(old.profile, profile.name, True, duration, plan["mode"])
        service.store.record_event("profile_switched", detail=f"{old.profile} -> {profile.name} in {duration:.0f} ms ({plan['mode']})")
        jobs.finish(job, result={**plan, "duration_ms": round(duration, 1), "switched_ms": round(switched_ms, 1)})
    except (SwitchFailed, MstingError, OSError) as exc:
        message = str(exc) if not isinstance(exc, MstingError) else exc.message
        if phase in (Phase.LOAD, Phase.VERIFY):
            phase = advance(phase, Phase.ROLLBACK)
            await _rollback(service, old, target)
        service.end_switch()
        duration = (time.monotonic() - started) * 1000.0
        service.store.record_switch(old.profile, profile_name, False, duration, message[:500])
        service.store.record_event("profile_switch_failed", detail=f"{old.profile} -> {profile_name}: {message[:300]}")
        log.warning("profile switch to %s failed: %s", profile_name, message)
        jobs.finish(job, error=message, result=plan or None)


async def _verify(model: LocalModel, timeout: float) -> None:
    """The verify routine (msting.daemon.local.verify), through the model's own queue."""
    probe = verify.probe(model.name, embedding=False)
    probe.owner = model
    model.queue.put_front(probe)
    failed = await verify.outcome(probe, timeout)
    if failed is not None:
        raise SwitchFailed(f"verification generate on '{model.name}' failed: {failed}")


async def _drain_and_stop(service: LocalService, models: list[LocalModel]) -> None:
    await service.drain(models, max(service.config.llm_service.drain_grace_sec, 1.0))
    for leftover in await asyncio.gather(*(m.stop(retire=True) for m in models)):
        service.readmit(leftover)  # still queued after the grace: served by the routing in force


async def _rollback(service: LocalService, old: Routing, target: Routing | None) -> None:
    """Stop what the switch started, restart what it stopped, and put held requests back
    (`end_switch` queues them on the old routing)."""
    if target is not None:
        fresh = [m for m in target.all_models() if m not in old.all_models()]
        for m in fresh:  # requests that already reached the new models go back through old routing
            service.admission.hold(m.queue.drain_all())
        for leftover in await asyncio.gather(*(m.stop(retire=True) for m in fresh)):
            service.admission.hold(leftover)
    service.activate(old)
