"""Reading configuration text: a file as UTF-8 (:func:`read_text`) and YAML that rejects
duplicate keys (:func:`load_yaml`), both failing with a :class:`ConfigError` that names
the file (and, for YAML, the line and column).

``yaml`` is imported only inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from msting.config.errors import ConfigError, ConfigProblem


def _yaml_loader() -> Any:
    """A SafeLoader that also rejects duplicate keys (PyYAML silently keeps the last).

    Built per call (microseconds) rather than cached, so the module holds no state."""
    import yaml

    class _Loader(yaml.SafeLoader):
        pass

    def construct_mapping(loader: Any, node: Any, deep: bool = False) -> Any:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = loader.construct_object(key_node)
            try:
                first = seen.get(key)
            except TypeError:
                continue
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first defined at line {first})", key_node.start_mark
                )
            seen[key] = key_node.start_mark.line + 1
        return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

    _Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    return _Loader


def load_yaml(text: str, source: Path | None) -> Any:
    """Parse ``text`` (safe YAML, duplicate keys rejected). A syntax error is a
    ConfigError for ``source`` with one problem that carries the line."""
    import yaml

    try:
        return yaml.load(text, Loader=_yaml_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        what = getattr(e, "problem", None) or str(e)
        context = getattr(e, "context", None)
        context_mark = getattr(e, "context_mark", None)
        if context:
            if context_mark is not None and mark is not None and context_mark.line != mark.line:
                context = f"{context} that started at line {context_mark.line + 1}"
            what = f"{what} ({context})"
        if mark is not None:
            line = mark.line + 1
            msg = f"invalid YAML at line {line}, column {mark.column + 1}: {what}"
        else:
            line = None
            msg = f"invalid YAML: {what}"
        raise ConfigError([ConfigProblem("", msg, line=line)], source) from None


def read_text(path: Path) -> str:
    """The file's text (UTF-8); unreadable or undecodable is a ConfigError for ``path``."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError([ConfigProblem("", f"not valid UTF-8 text ({e.reason} at byte {e.start})")], path) from None
    except OSError as e:
        raise ConfigError([ConfigProblem("", f"cannot read: {e.strerror or e}")], path) from None
