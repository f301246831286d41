"""The routing table: which models the active profile serves, and name resolution.

`Routing` is one immutable value (profile, models, embeddings companions, default
model, memory budget) that a profile switch replaces in a single assignment, so a
request is resolved against either the old profile or the new one, never a mix.
"""

from __future__ import annotations

from dataclasses import dataclass

from msting.api.errors import InvalidRequest, unknown_model
from msting.api.requests import names_default
from msting.config import Config
from msting.daemon.local.model import LocalModel, ModelSpec, embeddings_spec
from msting.daemon.local.spares import WorkerLauncher
from msting.daemon.store import Store



@dataclass(frozen=True)
class Routing:
    profile: str
    models: dict[str, LocalModel]
    embedders: dict[str, LocalModel]  # embedding-enabled companions of the llm models
    default_model: str
    budget_bytes: int | None = None

    @classmethod
    def build(cls, profile: str, specs: list[ModelSpec], config: Config, store: Store, budget_bytes: int | None = None,
              reuse: dict[str, LocalModel] | None = None, launcher: WorkerLauncher | None = None) -> Routing:
        """Models for `specs`; a model in `reuse` with an identical spec is kept, not reloaded."""
        reuse = reuse or {}

        def model(spec: ModelSpec) -> LocalModel:
            old = reuse.get(f"{spec.type}:{spec.name}")
            return old if old is not None and old.spec == spec else LocalModel(spec, config, store, launcher, budget_bytes)

        models = {s.name: model(s) for s in specs}
        embedders = {s.name: model(embeddings_spec(s)) for s in specs if s.type == "llm"}
        return cls(profile, models, embedders, specs[0].name, budget_bytes)

    def claim(self) -> None:
        """Mark the models as this profile's (their state records in the store say so)."""
        for m in self.all_models():
            m.profile = self.profile

    def all_models(self) -> list[LocalModel]:
        return [*self.models.values(), *self.embedders.values()]

    def by_key(self) -> dict[str, LocalModel]:
        return {f"{m.spec.type}:{m.name}": m for m in self.all_models()}

    def find(self, name: str | None, also: Routing | None = None) -> LocalModel:
        """A model by name, or `default`/omitted for the default model. Never a silent
        substitute. `also`: the incoming profile during a switch, where a model that
        only it has is found (its requests wait in its queue while it loads)."""
        if names_default(name):
            return self.models[self.default_model]
        model = self.models.get(name)
        if model is None and also is not None:
            model = also.models.get(name)
        if model is None:
            raise unknown_model(name, sorted(self.models))
        return model

    def serving(self, name: str | None, *, embed: bool, also: Routing | None = None) -> LocalModel:
        """The model that serves a generate (or an embed) for `name`: an LLM's
        embeddings go to its embedding-enabled companion."""
        model = self.find(name, also)
        if embed and model.spec.type != "embeddings":
            companion = self.embedders.get(model.name)
            if companion is None and also is not None:
                companion = also.embedders.get(model.name)
            assert companion is not None
            return companion
        if not embed and model.spec.type == "embeddings":
            raise InvalidRequest("model_not_generative", f"model '{model.name}' is an embeddings model; it does not generate text")
        return model
