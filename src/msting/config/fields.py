"""The validation framework of msting's configuration files.

A schema is a frozen dataclass whose fields are declared with :func:`opt` (a default
and a *spec*, the value checker; optionally required, or secret), :func:`section` (a
nested schema) or :func:`named` (a mapping of names to a nested schema, such as
config.yaml's ``llm.services``). :func:`build` turns parsed YAML into an instance,
appending a :class:`ConfigProblem` (dotted key, one-line message) for every unknown
key, missing required key, value that does not fit, or failed ``cross_checks(prefix)``
of the instance, so that all problems are reported at once. :func:`split_known` and
:func:`check` are the same steps on their own, for schemas whose keys are not all
plain fields (a profile's ``models``). :func:`plain` turns an instance back into
plain data, secrets masked.

config.yaml (:mod:`msting.config.schema`) and the profile files
(:mod:`msting.config.profiles.schema`) are both declared with it. Dependency-free.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any, Protocol

from msting.config.errors import ConfigProblem

#: ``unknown(prefix, key, known_keys) -> message``: what to say of an unknown key.
UnknownKey = Callable[[str, str, list[str]], str]


class BadValue(Exception):
    """Raised by a spec's ``check`` when a value does not fit. Without an argument the
    problem reads "must be <describe>, got <the value>"; with one, the argument says
    what is wrong in place of "got <the value>" (``BadValue("got an empty list")``,
    ``BadValue("but 'x' is listed twice")``)."""


class Spec(Protocol):
    """A value checker: ``check`` returns the value as stored, or raises BadValue;
    ``describe`` completes "must be ..."; a ``nullable`` spec also accepts null."""

    nullable: bool

    def describe(self) -> str: ...

    def check(self, v: Any) -> Any: ...


#: What :func:`plain` shows in place of a secret's value.
SECRET_MASK = "***"


# --------------------------------------------------------------------- formatting


def fmt_num(x: float) -> str:
    """A number for a message: 1048576, not 1.04858e+06."""
    if float(x).is_integer() and abs(x) < 1e15:
        return str(int(x))
    return f"{x:g}"


def show(v: Any) -> str:
    """A value as the user wrote it (YAML-ish), for error messages."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        r = repr(v)
        return r if len(r) <= 80 else r[:77] + "...'"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, Mapping):
        return "a mapping"
    if isinstance(v, (list, tuple)):
        return "a list"
    return type(v).__name__


def kind(v: Any) -> str:
    """What sort of value ``v`` is, never the value itself: for messages about secrets."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true or false"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "a string" if v.strip() else "an empty string"
    return show(v) if isinstance(v, (Mapping, list, tuple)) else type(v).__name__


def join(prefix: str, key: str) -> str:
    """The dotted key ``prefix.key`` (just ``key`` at the top level)."""
    return f"{prefix}.{key}" if prefix else key


# -------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class Bool:
    nullable: bool = False

    def describe(self) -> str:
        return "true or false"

    def check(self, v: Any) -> Any:
        if type(v) is not bool:
            raise BadValue
        return v


@dataclass(frozen=True)
class Num:
    """An integer or a number (finite; a whole float passes as an integer), within
    ``lo``/``hi`` (each inclusive unless ``*_open``)."""

    integer: bool
    lo: float | None = None
    lo_open: bool = False  # True: lo itself is not allowed
    hi: float | None = None
    hi_open: bool = False
    nullable: bool = False

    def describe(self) -> str:
        base = "an integer" if self.integer else "a number"
        lo, hi = self.lo, self.hi
        if lo is not None and hi is not None and not self.lo_open and not self.hi_open:
            return f"{base} between {fmt_num(lo)} and {fmt_num(hi)}"
        parts = []
        if lo is not None:
            parts.append(f"{'>' if self.lo_open else '>='} {fmt_num(lo)}")
        if hi is not None:
            parts.append(f"{'<' if self.hi_open else '<='} {fmt_num(hi)}")
        return " ".join([base, " and ".join(parts)]) if parts else base

    def check(self, v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise BadValue
        if isinstance(v, float):
            if not math.isfinite(v):
                raise BadValue
            if self.integer:
                if not v.is_integer():
                    raise BadValue
                v = int(v)
        if not self.integer:
            v = float(v)
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            raise BadValue
        if self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi):
            raise BadValue
        return v


@dataclass(frozen=True)
class Str:
    """A non-empty string, optionally matching ``pattern`` (described as ``pattern_desc``)."""

    nullable: bool = False
    pattern: str | None = None
    pattern_desc: str | None = None

    def describe(self) -> str:
        return self.pattern_desc or "a non-empty string"

    def check(self, v: Any) -> Any:
        if not isinstance(v, str) or not v.strip():
            raise BadValue
        if self.pattern and not re.fullmatch(self.pattern, v):
            raise BadValue
        return v


@dataclass(frozen=True)
class Choice:
    """A string out of ``choices``, matched case-insensitively and stored in their case:
    upper-case when ``upper``, else lower-case."""

    choices: tuple[str, ...]
    upper: bool = False
    nullable: bool = False

    def describe(self) -> str:
        return "one of " + ", ".join(self.choices)

    def check(self, v: Any) -> Any:
        if not isinstance(v, str):
            raise BadValue
        folded = v.strip().upper() if self.upper else v.strip().lower()
        if folded not in self.choices:
            raise BadValue
        return folded


@dataclass(frozen=True)
class Text:
    """Any string, empty included, stored stripped."""

    nullable: bool = False

    def describe(self) -> str:
        return "a string"

    def check(self, v: Any) -> Any:
        if not isinstance(v, str):
            raise BadValue
        return v.strip()


@dataclass(frozen=True)
class StrList:
    nullable: bool = False

    def describe(self) -> str:
        return "a list of non-empty strings"

    def check(self, v: Any) -> Any:
        if not isinstance(v, list) or not all(isinstance(x, str) and x.strip() for x in v):
            raise BadValue
        return tuple(x.strip() for x in v)


#: An environment variable's name, for the ``*_env_var`` keys.
ENV_VAR_NAME = Str(pattern=r"[A-Za-z_][A-Za-z0-9_]*", pattern_desc="an environment variable name (letters, digits, _)")


# ------------------------------------------------------------------------- fields


def opt(default: Any, spec: Spec | None, *, required: str | None = None, secret: bool = False) -> Any:
    """A schema field: its default and its spec.

    ``required``: the key must be written; a missing one is the problem "is required:
    <required>" (say what it takes). ``secret``: the value is never shown: not in the
    dataclass repr, not in a problem's message (only its :func:`kind`), and
    :func:`plain` masks it."""
    metadata: dict[str, Any] = {"spec": spec}
    if required is not None:
        metadata["required"] = required
    if secret:
        metadata["secret"] = True
    return field(default=default, metadata=metadata, repr=not secret)


def section(cls: type) -> Any:
    """A schema field holding the nested schema ``cls`` (all its defaults by default)."""
    return field(default_factory=cls, metadata={"section": cls})


#: ``build_one(name, data, dotted, problems, unknown) -> instance``: builds one entry of
#: a :func:`named` mapping.
BuildOne = Callable[[str, Any, str, list[ConfigProblem], UnknownKey], Any]


@dataclass(frozen=True)
class Named:
    """How a :func:`named` field is checked (see there)."""

    cls: type
    describe: str
    name_problem: Callable[[Any], str | None]
    build_one: BuildOne | None = None


def named(
    cls: type, describe: str, name_problem: Callable[[Any], str | None], build_one: BuildOne | None = None
) -> Any:
    """A schema field holding a mapping of names to the nested schema ``cls``, such as
    ``services: {lan: {...}, gpu: {...}}``. Null or absent means none.

    It is stored as a tuple of ``cls`` instances in the order written, each with its
    name in its ``name`` field (``cls`` declares ``name: str = ""``, not a key). A name
    is checked by ``name_problem(name) -> message | None`` (the problem is at
    ``<prefix>.<name>``; that entry is left out, its settings still checked); an
    entry is built by ``build_one`` (default: :func:`build`, then the name set).
    ``describe`` completes "must be ..." when the value is not a mapping."""
    return field(default=(), metadata={"named": Named(cls, describe, name_problem, build_one)})


def same_as(cls: type, name: str) -> Any:
    """A schema field declared as ``cls``'s field ``name`` is: same default, same spec."""
    f = schema_fields(cls)[name]
    return field(default=f.default, metadata=f.metadata, repr=f.repr)


_KINDS = frozenset({"spec", "section", "named"})


def schema_fields(cls: type) -> dict[str, Any]:
    """name -> dataclass field, for the schema's keys (declared with opt, section or named)."""
    return {f.name: f for f in fields(cls) if _KINDS & f.metadata.keys()}


# --------------------------------------------------------------------- validation


def not_a_mapping(prefix: str, data: Any) -> ConfigProblem:
    if prefix:
        return ConfigProblem(prefix, f"must be a mapping of keys to values, got {show(data)}")
    return ConfigProblem(prefix, f"the top level must be a mapping of keys to values, got {show(data)}")


def check(
    spec: Spec, v: Any, dotted: str, problems: list[ConfigProblem], secret: bool = False
) -> tuple[bool, Any]:
    """``(True, value as stored)``, or ``(False, None)`` with a problem appended. The
    message of a ``secret`` value names only its :func:`kind`."""
    if v is None and spec.nullable:
        return True, None
    try:
        return True, spec.check(v)
    except BadValue as e:
        expected = spec.describe() + (" or null" if spec.nullable else "")
        if secret:
            got = f"got {kind(v)} (the value is not shown)"
        else:
            got = str(e.args[0]) if e.args else f"got {show(v)}"
        problems.append(ConfigProblem(dotted, f"must be {expected}, {got}"))
        return False, None


def split_known(
    cls: type, data: Any, prefix: str, problems: list[ConfigProblem], unknown: UnknownKey
) -> dict[str, Any] | None:
    """The entries of ``data`` whose keys are ``cls``'s (each unknown key becomes a
    problem); ``{}`` for null; None when ``data`` is not a mapping (also a problem)."""
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        problems.append(not_a_mapping(prefix, data))
        return None
    known = list(schema_fields(cls))
    out: dict[str, Any] = {}
    for raw_key, v in data.items():
        if isinstance(raw_key, str) and raw_key in known:
            out[raw_key] = v
            continue
        key = raw_key if isinstance(raw_key, str) else show(raw_key)
        problems.append(ConfigProblem(join(prefix, key), unknown(prefix, key, known)))
    return out


def build(cls: type, data: Any, prefix: str, problems: list[ConfigProblem], unknown: UnknownKey) -> Any:
    """``data`` (parsed YAML; null means all defaults) as an instance of the schema
    ``cls``, its keys checked in the order written, sections and named mappings built
    the same way, then its required keys that are missing reported.
    What does not fit is left at its default and appended to ``problems``; the
    instance's ``cross_checks(prefix)`` run only when its own keys all fit (a problem
    inside one of its sections or named mappings does not stop them: those always
    hold an instance, with defaults where values did not fit)."""
    if data is None:  # "llm:" with nothing under it
        data = {}
    if not isinstance(data, Mapping):
        problems.append(not_a_mapping(prefix, data))
        return cls()
    known = schema_fields(cls)
    values: dict[str, Any] = {}
    before = len(problems)
    nested = 0  # problems inside sections and named mappings
    for raw_key, v in data.items():
        key = raw_key if isinstance(raw_key, str) else show(raw_key)
        dotted = join(prefix, key)
        f = known.get(raw_key) if isinstance(raw_key, str) else None
        if f is None:
            problems.append(ConfigProblem(dotted, unknown(prefix, key, list(known))))
            continue
        if "section" in f.metadata or "named" in f.metadata:
            start = len(problems)
            if "section" in f.metadata:
                values[f.name] = build(f.metadata["section"], v, dotted, problems, unknown)
            else:
                values[f.name] = build_named(f.metadata["named"], v, dotted, problems, unknown)
            nested += sum(1 for p in problems[start:] if p.key != dotted)
            continue
        ok, value = check(f.metadata["spec"], v, dotted, problems, f.metadata.get("secret", False))
        if ok:
            values[f.name] = value
    for name, f in known.items():
        if "required" in f.metadata and name not in data:
            problems.append(ConfigProblem(join(prefix, name), f"is required: {f.metadata['required']}"))
    obj = cls(**values)
    cross = getattr(obj, "cross_checks", None)
    if cross is not None and len(problems) - before == nested:
        problems.extend(cross(prefix))
    return obj


def build_named(
    spec: Named, data: Any, prefix: str, problems: list[ConfigProblem], unknown: UnknownKey
) -> tuple[Any, ...]:
    """``data``, a mapping of names to ``spec.cls`` (null: none), as the tuple a
    :func:`named` field stores; a badly named entry is reported and left out."""
    if data is None:
        return ()
    if not isinstance(data, Mapping):
        problems.append(ConfigProblem(prefix, f"must be {spec.describe}, got {show(data)}"))
        return ()
    out = []
    for raw_name, entry in data.items():
        name = raw_name if isinstance(raw_name, str) else show(raw_name)
        dotted = join(prefix, name)
        bad_name = spec.name_problem(raw_name)
        if bad_name:
            problems.append(ConfigProblem(dotted, bad_name))
        if spec.build_one is not None:
            obj = spec.build_one(name, entry, dotted, problems, unknown)
        else:
            obj = replace(build(spec.cls, entry, dotted, problems, unknown), name=name)
        if not bad_name:
            out.append(obj)
    return tuple(out)


# ------------------------------------------------------------------ plain data


def plain(obj: Any) -> Any:
    """A schema instance (or any value holding some) as plain data, as
    :func:`dataclasses.asdict` gives it, but with every secret that is set shown as
    :data:`SECRET_MASK`, and a :func:`named` field as the mapping it was written as
    (name -> entry, without the entry's ``name``)."""
    if is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        for f in fields(obj):
            v = getattr(obj, f.name)
            if f.metadata.get("secret") and v is not None:
                out[f.name] = SECRET_MASK
            elif "named" in f.metadata:
                out[f.name] = {e.name: {k: x for k, x in plain(e).items() if k != "name"} for e in v}
            else:
                out[f.name] = plain(v)
        return out
    if isinstance(obj, Mapping):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain(v) for v in obj)
    return copy.deepcopy(obj)
