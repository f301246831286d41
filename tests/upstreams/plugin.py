"""pytest fixtures for the upstream servers. A test module (or its directory's conftest.py)
imports the ones it uses:

    from upstreams.plugin import standin, llama_cpp_server  # noqa: F401  (pytest fixtures)

``standin``          a factory: ``standin("openai", models=[...], token_delay=..., api_key=...,
                     reply_words=..., port=...) -> StandIn``; every stand-in it started is
                     stopped (and its directory removed) at the test's teardown.
``standin_module``   the same factory, its stand-ins shared by the module's tests (stopped at
                     the module's end; clear faults / requests between tests yourself).
``llama_cpp_server`` a started `LlamaCppServer` on tests/conftest.py's ``stories_model_path``
                     (the test is skipped when that model is absent), stopped at teardown.
"""

from __future__ import annotations

from typing import Callable, Iterator

import pytest

from .fixtures import LlamaCppServer, StandIn


def _factory() -> tuple[Callable[..., StandIn], list[StandIn]]:
    started: list[StandIn] = []

    def start(api: str, **kwargs) -> StandIn:  # type: ignore[no-untyped-def]
        standin = StandIn.start(api, **kwargs)
        started.append(standin)
        return standin

    return start, started


@pytest.fixture
def standin() -> Iterator[Callable[..., StandIn]]:
    start, started = _factory()
    yield start
    for s in started:
        s.close()


@pytest.fixture(scope="module")
def standin_module() -> Iterator[Callable[..., StandIn]]:
    start, started = _factory()
    yield start
    for s in started:
        s.close()


@pytest.fixture
def llama_cpp_server(stories_model_path) -> Iterator[LlamaCppServer]:  # type: ignore[no-untyped-def]
    server = LlamaCppServer(stories_model_path)
    try:
        yield server.start()
    finally:
        server.close()
