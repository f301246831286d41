"""What a configuration problem is: :class:`ConfigProblem` (one thing wrong, at a dotted
key) and :class:`ConfigError` (the exception that carries all of them).

Shared by config.yaml (:mod:`msting.config.schema`) and the profile files
(:mod:`msting.config.profiles`); dependency-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with a configuration.

    ``key`` is dotted (``"llm_service.port"``), an environment variable name, or ``""``
    for problems with the file as a whole (such as YAML syntax errors, which also set
    ``line``, 1-based).
    """

    key: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        return f"{self.key}: {self.message}" if self.key else self.message


class ConfigError(Exception):
    """A configuration is unusable. ``str()`` gives one line per problem:
    ``<file>: llm_service.port: must be an integer between 1 and 65535, got 'abc'``."""

    def __init__(self, problems: list[ConfigProblem], source: Path | str | None = None) -> None:
        self.problems = list(problems)
        self.source = Path(source) if source is not None else None
        super().__init__(self.problems, self.source)

    def __str__(self) -> str:
        prefix = f"{self.source}: " if self.source is not None else ""
        return "\n".join(prefix + str(p) for p in self.problems)
