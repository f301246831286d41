"""The models a remote service serves: its configured list, plus what discovery found
on each URL (each URL's latest list replaces its previous one, so a model removed
upstream disappears at the next refresh)."""

from __future__ import annotations

import time

from msting.api.errors import InvalidRequest
from msting.api.requests import names_default
from msting.providers.base import Capabilities, ModelInfo
from msting.providers.remote.wire import RemoteModel


class Catalog:
    def __init__(self, service: str, static: tuple[str, ...], default_model: str | None, capabilities: Capabilities):
        self.service = service
        self.static = tuple(static)
        self.default_model = default_model
        self.capabilities = capabilities
        self.found: dict[str, list[RemoteModel]] = {}  # url -> its latest list
        self.detailed: dict[str, RemoteModel] = {}  # name -> what the upstream said of it when asked (Ollama's /api/show)
        self.loaded: set[str] | None = None  # the models the upstream has in memory, where it says (Ollama's /api/ps)
        self.refreshed_at: float | None = None  # unix time of the last successful discovery
        self.last_error: str | None = None
        self.started = int(time.time())

    def update(self, url: str, models: list[RemoteModel]) -> None:
        self.found[url] = models
        self.refreshed_at = time.time()
        self.last_error = None

    def _all(self) -> dict[str, RemoteModel]:
        out = {name: RemoteModel(name) for name in self.static}
        for models in self.found.values():
            for model in models:
                out.setdefault(model.name, model)
        if self.default_model and self.default_model not in out:
            out[self.default_model] = RemoteModel(self.default_model)
        for name, model in self.detailed.items():
            if name in out:
                out[name] = model
        return out

    def names(self) -> list[str]:
        return list(self._all())

    def resolve(self, name: str | None) -> str:
        """The upstream model a request names (its default for None/"default")."""
        if not names_default(name):
            return name  # passed through: the upstream may serve models no list shows yet
        if self.default_model:
            return self.default_model
        names = self.names()
        if len(names) == 1:
            return names[0]
        raise InvalidRequest("model_required", f"the service '{self.service}' has no default model; name one as "
                             f"{self.service}~<model> (known: {', '.join(names) or 'none yet'})", param="model")

    def info(self, name: str, state: str) -> ModelInfo:
        model = self._all().get(name, RemoteModel(name))
        if state == "available" and self.loaded is not None and name in self.loaded:
            state = "loaded"
        return ModelInfo(id=name, service=self.service, state=state, type=model.type, context_length=model.context_length,
                         is_default=name == self.default_model, created=self.started, upstream=name,
                         capabilities=self.capabilities)

    def infos(self, state: str) -> list[ModelInfo]:
        return [self.info(name, state) for name in self._all()]
