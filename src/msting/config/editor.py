"""The user's ``config.yaml``, written: :func:`write_user_config` creates it from the
shipped ``default.yaml`` and sets ``llm.model`` in it, editing the text in place so
that the user's comments and layout survive (re-dumping with yaml only when the
document's shape does not allow a safe textual edit). Files are replaced atomically.

``yaml`` is imported only inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from msting.config.errors import ConfigError, ConfigProblem
from msting.config.fields import show
from msting.config.paths import Paths
from msting.config.schema import default_config_text
from msting.config.yamlio import load_yaml, read_text


def _yaml_scalar(value: str) -> str:
    """``value`` as a YAML scalar: plain when that reads back unchanged, else quoted."""
    import json

    import yaml

    if "\n" not in value and "#" not in value:
        try:
            if yaml.safe_load(f"k: {value}\n") == {"k": value}:
                return value
        except yaml.YAMLError:
            pass
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a YAML double-quoted scalar


def _set_model_textually(text: str, scalar: str) -> str | None:
    """Set ``llm.model`` by editing ``text`` in place, keeping comments and layout.
    Returns None when the document's shape does not allow a safe textual edit."""
    import yaml

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    if root is None:  # empty, or only comments
        sep = "" if not text or text.endswith("\n") else "\n"
        return f"{text}{sep}llm:\n  model: {scalar}\n"
    if not isinstance(root, yaml.MappingNode) or root.flow_style:
        return None
    llm_node = None
    for k, v in root.value:
        if isinstance(k, yaml.ScalarNode) and k.value == "llm":
            llm_node = (k, v)
    if llm_node is None:
        sep = "" if text.endswith("\n") else "\n"
        return f"{text}{sep}llm:\n  model: {scalar}\n"
    llm_key, llm_val = llm_node

    if isinstance(llm_val, yaml.ScalarNode) and llm_val.tag == "tag:yaml.org,2002:null" and llm_val.value == "":
        # "llm:" with nothing under it: add the key on the next line.
        return _insert_after_colon_line(text, llm_key.end_mark.index, f"  model: {scalar}")
    if not isinstance(llm_val, yaml.MappingNode) or llm_val.flow_style or not llm_val.value:
        return None

    for k, v in llm_val.value:
        if isinstance(k, yaml.ScalarNode) and k.value == "model":
            if not isinstance(v, yaml.ScalarNode) or v.style in ("|", ">"):
                return None
            if v.value == "" and v.style is None:  # "model:" with no value
                colon = text.find(":", k.end_mark.index)
                if colon < 0:
                    return None
                return text[: colon + 1] + f" {scalar}" + text[colon + 1 :]
            return text[: v.start_mark.index] + scalar + text[v.end_mark.index :]

    # No model key under llm: add one, indented like the first existing key.
    first_key = llm_val.value[0][0]
    line_start = text.rfind("\n", 0, first_key.start_mark.index) + 1
    indent = text[line_start : first_key.start_mark.index]
    if indent.strip():
        return None
    return text[:line_start] + f"{indent}model: {scalar}\n" + text[line_start:]


def _insert_after_colon_line(text: str, pos: int, new_line: str) -> str:
    eol = text.find("\n", pos)
    if eol < 0:
        return f"{text}\n{new_line}\n"
    return text[: eol + 1] + new_line + "\n" + text[eol + 1 :]


def _model_of(text: str) -> Any:
    try:
        data = load_yaml(text, None)
    except ConfigError:
        return None
    if isinstance(data, Mapping) and isinstance(data.get("llm"), Mapping):
        return data["llm"].get("model")
    return None


def _atomic_write(path: Path, text: str, mode: int) -> None:
    import tempfile

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_user_config(paths: Paths, *, model: str | None = None) -> Path:
    """Make sure the user's config file exists (a copy of ``default.yaml``), and if
    ``model`` is given set ``llm.model`` to it (made absolute unless it is a
    ``builtin:`` name). Comments are kept when the file allows a textual edit;
    otherwise the file is re-written with yaml (and loses its comments).

    Idempotent: running it again with the same arguments changes nothing.
    Returns the path of the user's config file.
    """
    path = paths.config_file
    path.parent.mkdir(parents=True, exist_ok=True)
    if not (path.exists() or path.is_symlink()):
        _atomic_write(path, default_config_text(), 0o644)
    if model is None:
        return path

    value = model if model.startswith("builtin:") else os.path.abspath(os.path.expanduser(model))
    text = read_text(path)
    new = _set_model_textually(text, _yaml_scalar(value))
    if new is None or _model_of(new) != value:
        new = _set_model_by_dump(text, value, path)
    if new != text:
        try:
            mode = path.stat().st_mode & 0o777
        except OSError:
            mode = 0o644
        _atomic_write(path, new, mode)  # replaces a symlink rather than writing through it
    return path


def _set_model_by_dump(text: str, value: str, path: Path) -> str:
    import yaml

    data = load_yaml(text, path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([ConfigProblem("", f"the top level must be a mapping of keys to values, got {show(data)}")], path)
    llm = data.get("llm")
    if llm is None:
        llm = data["llm"] = {}
    elif not isinstance(llm, dict):
        raise ConfigError([ConfigProblem("llm", f"must be a mapping of keys to values, got {show(llm)}")], path)
    llm["model"] = value
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)
