"""msting.config.fields: the validation framework config.yaml and the profiles share."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from msting.config.errors import ConfigProblem
from msting.config.fields import (
    SECRET_MASK,
    BadValue,
    Bool,
    Choice,
    Num,
    Str,
    StrList,
    Text,
    build,
    check,
    kind,
    named,
    opt,
    plain,
    same_as,
    schema_fields,
    section,
    show,
    split_known,
)
from msting.config.profiles.schema import ModelParams, ProfileModel
from msting.config.schema import LLMConfig

CONFIG_PACKAGE = Path(__file__).resolve().parents[3] / "src" / "msting" / "config"


def _unknown(prefix: str, key: str, known: list[str]) -> str:
    return f"unknown under {prefix or 'top'}: {', '.join(known)}"


@dataclass(frozen=True)
class _Inner:
    n: int = opt(1, Num(integer=True, lo=0))

    def cross_checks(self, prefix: str) -> list[ConfigProblem]:
        return [ConfigProblem(prefix, "cross")] if self.n == 7 else []


@dataclass(frozen=True)
class _Outer:
    flag: bool = opt(False, Bool())
    name: str | None = opt(None, Str(nullable=True))
    inner: _Inner = section(_Inner)
    not_a_key: int = 0


@dataclass(frozen=True)
class _Entry:
    kind: str = opt("a", Choice(("a", "b")), required="a or b")
    token: str | None = opt(None, Str(nullable=True), secret=True)
    inner: _Inner = section(_Inner)
    name: str = ""


def _entry_name(name: Any) -> str | None:
    return None if isinstance(name, str) and name.isalpha() else f"bad name {show(name)}"


@dataclass(frozen=True)
class _Holder:
    limit: int = opt(1, Num(integer=True, lo=0))
    entries: tuple[_Entry, ...] = named(_Entry, "a mapping of names to entries", _entry_name)

    def cross_checks(self, prefix: str) -> list[ConfigProblem]:
        names = [e.name for e in self.entries]
        return [ConfigProblem("limit", f"{len(names)} > {self.limit}")] if len(names) > self.limit else []


@pytest.mark.parametrize(
    ("spec", "described"),
    [
        (Num(integer=True), "an integer"),
        (Num(integer=False, lo=0, lo_open=True), "a number > 0"),
        (Num(integer=False, lo=0, hi=1, hi_open=True), "a number >= 0 and < 1"),
        (Num(integer=True, lo=1, hi=1048576), "an integer between 1 and 1048576"),
        (Num(integer=False, hi=2.5), "a number <= 2.5"),
        (Choice(("llm", "embeddings")), "one of llm, embeddings"),
        (Str(), "a non-empty string"),
        (Str(pattern="[a-z]+", pattern_desc="lower-case letters"), "lower-case letters"),
        (Text(), "a string"),
        (StrList(), "a list of non-empty strings"),
        (Bool(), "true or false"),
    ],
)
def test_describe(spec: Any, described: str) -> None:
    assert spec.describe() == described


def test_values_as_stored() -> None:
    assert Num(integer=True).check(3.0) == 3 and type(Num(integer=True).check(3.0)) is int
    assert type(Num(integer=False).check(3)) is float
    assert Choice(("DEBUG", "INFO"), upper=True).check(" info ") == "INFO"
    assert Choice(("llm", "embeddings")).check("LLM ") == "llm"
    assert Text().check("  hi ") == "hi" and Text().check("") == ""
    assert StrList().check([" a", "b "]) == ("a", "b")


def test_check_appends_one_problem_and_knows_null() -> None:
    problems: list[ConfigProblem] = []
    assert check(Num(integer=True, lo=1, nullable=True), None, "k", problems) == (True, None)
    assert check(Num(integer=True, lo=1, nullable=True), 0, "k", problems) == (False, None)
    assert check(Bool(), "yes", "b", problems) == (False, None)
    assert problems == [
        ConfigProblem("k", "must be an integer >= 1 or null, got 0"),
        ConfigProblem("b", "must be true or false, got 'yes'"),
    ]


def test_show() -> None:
    assert [show(v) for v in (None, True, 1.5, "x", {}, [], object())] == ["null", "true", "1.5", "'x'", "a mapping", "a list", "object"]
    assert show("x" * 200).endswith("...'") and len(show("x" * 200)) == 81


def test_build_checks_in_written_order_and_keeps_defaults() -> None:
    problems: list[ConfigProblem] = []
    got = build(_Outer, {"inner": {"n": -1, "m": 2}, 3: 1, "flag": "no", "name": None, "not_a_key": 5}, "", problems, _unknown)
    assert got == _Outer(flag=False, name=None, inner=_Inner())
    assert [str(p) for p in problems] == [
        "inner.n: must be an integer >= 0, got -1",
        "inner.m: unknown under inner: n",
        "3: unknown under top: flag, name, inner",
        "flag: must be true or false, got 'no'",
        "not_a_key: unknown under top: flag, name, inner",
    ]


def test_build_cross_checks_only_when_the_keys_fit() -> None:
    problems: list[ConfigProblem] = []
    build(_Outer, {"inner": {"n": 7}}, "", problems, _unknown)
    assert problems == [ConfigProblem("inner", "cross")]
    problems = []
    build(_Outer, {"inner": {"n": 7, "x": 1}}, "", problems, _unknown)
    assert [p.key for p in problems] == ["inner.x"]


@pytest.mark.parametrize(("prefix", "message"), [("", "the top level must be a mapping of keys to values, got a list"),
                                                  ("a.b", "must be a mapping of keys to values, got a list")])
def test_not_a_mapping(prefix: str, message: str) -> None:
    problems: list[ConfigProblem] = []
    assert build(_Inner, [1], prefix, problems, _unknown) == _Inner()
    assert split_known(_Inner, [1], prefix, problems, _unknown) is None
    assert problems == [ConfigProblem(prefix, message)] * 2


def test_split_known_keeps_the_known_keys_and_reports_the_others_first() -> None:
    problems: list[ConfigProblem] = []
    assert split_known(_Outer, None, "p", problems, _unknown) == {}
    assert split_known(_Outer, {"x": 1, "flag": "bad", None: 2}, "p", problems, _unknown) == {"flag": "bad"}
    assert [p.key for p in problems] == ["p.x", "p.null"]


def test_profile_parameters_are_declared_as_the_llm_section_is() -> None:
    llm = schema_fields(LLMConfig)
    for cls, names in ((ModelParams, list(schema_fields(ModelParams))), (ProfileModel, ["n_ctx", "replicas", "parallel"])):
        for name in names:
            mine = schema_fields(cls)[name]
            assert mine.default == llm[name].default and mine.metadata["spec"] is llm[name].metadata["spec"], name
    f = same_as(_Inner, "n")
    assert f.default == 1 and f.metadata["spec"] == Num(integer=True, lo=0)


def test_no_config_module_imports_another_ones_private_names() -> None:
    for path in sorted(CONFIG_PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("msting."):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.relative_to(CONFIG_PACKAGE)} imports {private} from {node.module}"


def test_required_keys_are_reported_after_the_written_ones() -> None:
    problems: list[ConfigProblem] = []
    assert build(_Entry, {"token": "x", "zz": 1}, "e", problems, _unknown) == _Entry(token="x")
    assert [str(p) for p in problems] == ["e.zz: unknown under e: kind, token, inner", "e.kind: is required: a or b"]


def test_a_secret_is_never_shown() -> None:
    assert "tok" not in repr(_Entry(token="tok"))
    problems: list[ConfigProblem] = []
    build(_Entry, {"kind": "a", "token": 12345}, "e", problems, _unknown)
    assert [str(p) for p in problems] == ["e.token: must be a non-empty string or null, got a number (the value is not shown)"]
    assert [kind(v) for v in (None, True, 1, "", "x", {}, [])] == [
        "null", "true or false", "a number", "an empty string", "a string", "a mapping", "a list"]


def test_a_bad_value_can_say_why() -> None:
    @dataclass(frozen=True)
    class Even:
        nullable: bool = False

        def describe(self) -> str:
            return "an even integer"

        def check(self, v: Any) -> Any:
            if not isinstance(v, int):
                raise BadValue
            if v % 2:
                raise BadValue(f"but {v} is odd")
            return v

    problems: list[ConfigProblem] = []
    assert check(Even(), 3, "k", problems) == (False, None)
    assert check(Even(), "x", "k", problems) == (False, None)
    assert [p.message for p in problems] == ["must be an even integer, but 3 is odd", "must be an even integer, got 'x'"]


def test_named_entries_keep_their_order_and_names() -> None:
    problems: list[ConfigProblem] = []
    got = build(_Holder, {"limit": 5, "entries": {"b": {"kind": "b"}, "a": None}}, "", problems, _unknown)
    assert [str(p) for p in problems] == ["entries.a.kind: is required: a or b"]
    assert [(e.name, e.kind) for e in got.entries] == [("b", "b"), ("a", "a")]
    problems = []
    assert build(_Holder, {"entries": None}, "", problems, _unknown) == _Holder() and problems == []
    build(_Holder, {"entries": [1]}, "", problems, _unknown)
    assert [str(p) for p in problems] == ["entries: must be a mapping of names to entries, got a list"]


def test_a_badly_named_entry_is_reported_and_left_out_its_settings_still_checked() -> None:
    problems: list[ConfigProblem] = []
    got = build(_Holder, {"limit": 5, "entries": {"x1": {"kind": "c"}, 2: {"kind": "a"}, "ok": {"kind": "a"}}}, "", problems, _unknown)
    assert [str(p) for p in problems] == [
        "entries.x1: bad name 'x1'",
        "entries.x1.kind: must be one of a, b, got 'c'",
        "entries.2: bad name 2",
    ]
    assert [e.name for e in got.entries] == ["ok"]


def test_cross_checks_run_despite_problems_inside_sections_and_named_mappings() -> None:
    problems: list[ConfigProblem] = []
    build(_Holder, {"limit": 0, "entries": {"a": {"kind": "z", "inner": {"n": -1}}}}, "", problems, _unknown)
    assert [str(p) for p in problems] == [
        "entries.a.kind: must be one of a, b, got 'z'",
        "entries.a.inner.n: must be an integer >= 0, got -1",
        "limit: 1 > 0",
    ]
    problems = []
    build(_Holder, {"limit": -1, "entries": {"a": {}, "b": {}}}, "", problems, _unknown)  # its own key: no cross checks
    assert [p.key for p in problems] == ["limit", "entries.a.kind", "entries.b.kind"]
    problems = []
    build(_Holder, {"limit": 0, "entries": 3}, "", problems, _unknown)  # the mapping itself is wrong: no cross checks
    assert [p.key for p in problems] == ["entries"]


def test_plain_masks_secrets_and_gives_named_mappings_back() -> None:
    holder = _Holder(entries=(_Entry(kind="b", token="tok", name="x"), _Entry(name="y")))
    assert plain(holder) == {
        "limit": 1,
        "entries": {"x": {"kind": "b", "token": SECRET_MASK, "inner": {"n": 1}}, "y": {"kind": "a", "token": None, "inner": {"n": 1}}},
    }
    assert plain(_Outer()) == {"flag": False, "name": None, "inner": {"n": 1}, "not_a_key": 0}
