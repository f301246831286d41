"""Durations as Ollama's `keep_alive` takes them: a number of seconds, or a Go duration
string (`"300ms"`, `"1.5h"`, `"1h30m"`, `"-1m"`; units ns, us, µs, ms, s, m, h; `"0"` needs
none). A bare number in a string (`"300"`, `"-1"`) is seconds too, as Ollama's own
`OLLAMA_KEEP_ALIVE` reads it. Dependency-free: the HTTP layer and the config use it.
"""

from __future__ import annotations

import math
import re

UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_PART = re.compile(rf"({_NUMBER})(ns|us|µs|μs|ms|s|m|h)")
_DURATION = re.compile(rf"[-+]?(?:{_NUMBER}(?:ns|us|µs|μs|ms|s|m|h))+")
_BARE = re.compile(rf"[-+]?{_NUMBER}")
#: The strings `parse_duration` takes, as one regular expression (the OpenAPI document's pattern).
PATTERN = rf"^(?:[-+]?{_NUMBER}|[-+]?(?:{_NUMBER}(?:ns|us|µs|μs|ms|s|m|h))+)$"


def parse_duration(text: str) -> float:
    """Seconds in `text` (negative when it says so); ValueError when it is not a duration."""
    if _BARE.fullmatch(text):
        return float(text)
    if not _DURATION.fullmatch(text):
        raise ValueError(f"not a duration: {text!r}")
    sign = -1.0 if text.startswith("-") else 1.0
    seconds = sum(float(number) * UNIT_SECONDS[unit] for number, unit in _PART.findall(text.lstrip("+-")))
    if not math.isfinite(seconds):
        raise ValueError(f"not a duration: {text!r}")
    return sign * seconds


def format_duration(seconds: float) -> str:
    """`90` -> `1m30s`, `3600` -> `1h`, `0.5` -> `0.5s`; math.inf -> `forever`."""
    if math.isinf(seconds):
        return "forever"
    if seconds < 60:
        return f"{seconds:.3g}s" if seconds != int(seconds) else f"{int(seconds)}s"
    whole = int(round(seconds))
    h, rest = divmod(whole, 3600)
    m, s = divmod(rest, 60)
    return "".join(f"{v}{u}" for v, u in ((h, "h"), (m, "m"), (s, "s")) if v) or "0s"
