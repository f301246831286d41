"""Helpers of the msting.daemon.local and msting.providers tests: a Config with the
shipped defaults, ModelSpecs on a real GGUF file, routings, and stopping whatever a
test started (an on-demand start spawns a real worker process)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from msting.api import limits
from msting.config import Config, parse_config
from msting.daemon.local.model import LocalModel, ModelSpec
from msting.daemon.local.routing import Routing
from msting.daemon.store import Store


def make_config(**llm_service: object) -> Config:
    """config.yaml's defaults (msting.config.schema), with `llm_service` keys set."""
    return parse_config({"llm_service": llm_service} if llm_service else None, None)


def spec(name: str, path: Path, *, n_ctx: int = 256, type: str = "llm", always_ready: bool = True, replicas: int = 1,
         parallel: int | None = 1, temperature: float = limits.DEFAULT_TEMPERATURE, max_tokens: int = limits.DEFAULT_MAX_TOKENS,
         keep_alive_sec: float = 300.0) -> ModelSpec:
    return ModelSpec(name=name, source=str(path), path=Path(path), builtin=False, n_ctx=n_ctx, n_threads=1, n_gpu_layers=0,
                     replicas=replicas, parallel=parallel, always_ready=always_ready, type=type, temperature=temperature, max_tokens=max_tokens,
                     keep_alive_sec=keep_alive_sec)


def build(store: Store, config: Config, *specs: ModelSpec, profile: str = "p", budget: int | None = None,
          reuse: dict[str, LocalModel] | None = None) -> Routing:
    return Routing.build(profile, list(specs), config, store, budget, reuse=reuse)


async def stop_all(*routings: Routing) -> None:
    """Stop every model a test started (in parallel); a model never started costs nothing.
    Jobs still queued are cancelled first: nothing is left waiting for a worker."""
    models = {id(m): m for r in routings for m in r.all_models()}
    for m in models.values():
        for job in m.queue.drain_all():
            job.cancel()
    await asyncio.gather(*(m.stop() for m in models.values() if m.started))
    assert not any(m.started for m in models.values())
