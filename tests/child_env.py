"""The environment for the processes tests start (the CLI, the daemon through it, workers).

Built from a short list rather than copied from ``os.environ``: a developer's own
``LLM_API_KEY``, ``MSTING_*`` (``MSTING_HOME``, ``MSTING_LLM_PORT``,
``MSTING_WORKER_FAILPOINTS``), ``NOTIFY_SOCKET``/``WATCHDOG_USEC``, proxies, ``OPENAI_*``
or terminal settings must not change what a test sees. What passes through is what a
process needs to run at all and to find the package, nothing the code under test reads
as configuration. A test adds its own variables (``MSTING_HOME`` …) on top.

Importable as ``child_env`` from any test: ``tests/`` is on ``sys.path`` because
``tests/conftest.py`` sits in a directory without ``__init__.py`` (pytest's prepend mode).
"""

from __future__ import annotations

import os
from typing import Mapping

# Exact names passed through when set.
KEEP = (
    "PATH",
    "HOME",  # ~ expansion; platformdirs (unused while MSTING_HOME is set)
    "TMPDIR",
    "TZ",
    "LANG",
    "LANGUAGE",
    "VIRTUAL_ENV",
    "LD_LIBRARY_PATH",  # where the machine keeps native libraries llama.cpp may load
    # how the interpreter finds msting and its dependencies, and where bytecode goes
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSAFEPATH",
    "PYTHONNOUSERSITE",
    "PYTHONUSERBASE",
    "PYTHONDONTWRITEBYTECODE",
    "PYTHONPYCACHEPREFIX",
)
# Name prefixes passed through: the locale, and the thread settings of the math
# libraries (a machine sets these on purpose; they change speed, not answers).
KEEP_PREFIXES = ("LC_", "OPENBLAS_", "OMP_")


def child_env(base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """The kept variables of `base` (default ``os.environ``), plus `extra`."""
    source = os.environ if base is None else base
    env = {k: v for k, v in source.items() if k in KEEP or k.startswith(KEEP_PREFIXES)}
    env.update(extra)
    return env
