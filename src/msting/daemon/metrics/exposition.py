"""The Prometheus text exposition format, written with the label text of each series
built once.

prometheus_client's own writer (`generate_latest`) formats every label set of every
sample on every scrape: 85 ms (p50, bench/ops.py) for the 10,900 lines of the request
metrics of 100 models x 3 services. These helpers keep a series' label text (and its histogram
buckets' label texts) as strings made when the series is created, so a scrape is
string concatenation. The output is parsed back with prometheus_client's parser in
the tests, and a real Prometheus scrapes it.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from typing import Iterable

INF = math.inf


def escape(value: str) -> str:
    """A label value as the text format writes it (backslash, double quote, newline)."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def label_text(pairs: Iterable[tuple[str, str]]) -> str:
    """`a="x",b="y"`: the inside of a label set (no braces), values escaped."""
    return ",".join(f'{name}="{escape(value)}"' for name, value in pairs)


def braced(inner: str) -> str:
    return f"{{{inner}}}" if inner else ""


def number(value: float | int) -> str:
    if type(value) is int:
        return str(value)
    if value != value:
        return "NaN"
    if value in (INF, -INF):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def header(name: str, kind: str, help_: str) -> str:
    text = help_.replace("\\", "\\\\").replace("\n", "\\n")
    return f"# HELP {name} {text}\n# TYPE {name} {kind}\n"


class Family:
    """One metric family's lines, for a collector that builds them at scrape time."""

    __slots__ = ("name", "kind", "help", "lines")

    def __init__(self, name: str, kind: str, help_: str):
        self.name = name
        self.kind = kind
        self.help = help_
        self.lines: list[str] = []

    def add(self, inner: str, value: float | int, suffix: str = "") -> None:
        self.lines.append(f"{self.name}{suffix}{braced(inner)} {number(value)}\n")

    def text(self) -> str:
        return header(self.name, self.kind, self.help) + "".join(self.lines)


class Histogram:
    """Observations counted into fixed buckets (their upper bounds, +Inf last)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)


def bucket_labels(inner: str, bounds: tuple[float, ...]) -> list[str]:
    """The label set of each bucket of a series: its own labels and `le`."""
    sep = "," if inner else ""
    return [f'{{{inner}{sep}le="{number(b)}"}}' for b in bounds]


def histogram_lines(name: str, inner: str, buckets: list[str], hist: Histogram) -> str:
    out = []
    total = 0
    for labels, count in zip(buckets, hist.counts):
        total += count
        out.append(f"{name}_bucket{labels} {total}\n")
    own = braced(inner)
    out.append(f"{name}_sum{own} {number(hist.sum)}\n{name}_count{own} {total}\n")
    return "".join(out)
