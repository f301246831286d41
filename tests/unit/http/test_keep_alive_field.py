"""A request's `keep_alive`, as Ollama takes it: msting.api.durations (the duration
strings) and Fields.duration (the body field: seconds, a duration, negative = for ever)."""

from __future__ import annotations

import math
import re

import pytest

from msting.api import limits
from msting.api.durations import PATTERN, format_duration, parse_duration
from msting.api.errors import InvalidRequest
from msting.http.errors import Fields
from msting.http.parsing import request_meta


@pytest.mark.parametrize(("text", "seconds"), [
    ("0", 0.0), ("300", 300.0), ("-1", -1.0), ("5m", 300.0), ("1h30m", 5400.0), ("300s", 300.0), ("1.5h", 5400.0),
    ("300ms", 0.3), (".5s", 0.5), ("+2m", 120.0), ("-1m", -60.0), ("1h2m3.5s", 3723.5), ("2us", 2e-6), ("2µs", 2e-6), ("7ns", 7e-9),
])
def test_durations_as_go_writes_them(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)
    assert re.fullmatch(PATTERN, text)  # the OpenAPI document's pattern takes what the parser takes


@pytest.mark.parametrize("text", ["", "5x", "m", "1h 2m", " 5m", "--1", "1e3", "inf", "nan", "5 m", "1.2.3s", "h1", "5M"])
def test_what_is_not_a_duration(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)
    assert not re.fullmatch(PATTERN, text)


def test_durations_read_back() -> None:
    assert [format_duration(s) for s in (0, 0.5, 59, 90, 3600, 5400, math.inf)] == ["0s", "0.5s", "59s", "1m30s", "1h", "1h30m", "forever"]


def keep_alive(value: object) -> float | None:
    return request_meta({"headers": []}, Fields({"keep_alive": value}, {"keep_alive"})).keep_alive


@pytest.mark.parametrize(("value", "seconds"), [
    (None, None), (0, 0.0), ("0", 0.0), (300, 300.0), (2.5, 2.5), ("5m", 300.0), ("1h30m", 5400.0),
    (-1, math.inf), ("-1m", math.inf), (-0.5, math.inf), (limits.MAX_KEEP_ALIVE_SEC, limits.MAX_KEEP_ALIVE_SEC),
])
def test_the_body_field(value: object, seconds: float | None) -> None:
    assert keep_alive(value) == seconds


@pytest.mark.parametrize("value", ["5x", "", True, False, [], {}, [1], "1e3", limits.MAX_KEEP_ALIVE_SEC + 1, 10 ** 30,
                                   "99999999h", "9" * 65, "Infinity"])
def test_a_bad_value_is_a_400_naming_the_field(value: object) -> None:
    with pytest.raises(InvalidRequest) as err:
        keep_alive(value)
    assert err.value.details["param"] == "keep_alive"
    assert "duration" in err.value.message
