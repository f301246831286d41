"""Request metrics, per service and model: what the router saw each request end with.

`RequestMetrics` is the router's observer (msting.providers.router.RequestObserver):
every request, whatever its route or provider, ends in one `request_ended` call, which
counts it by outcome, adds its tokens, and observes its time to first token (streams)
and its duration (answered requests). Attempts give the retries within a service and
the fallbacks from one service to the next.

A series' text is kept between scrapes and made again only after it changed, and the
whole text is kept while no series changed: a scrape of hundreds of series costs the
series that saw a request since the last one, and a join.

Label values come from the services and models that answered; a name a client made up
(an unknown model) is counted under `(unknown)`, and a service has at most
MAX_MODELS_PER_SERVICE model labels (beyond: `(other)`), so no client can grow the
number of series without bound.
"""

from __future__ import annotations

import asyncio

from msting.api.errors import (Conflict, InvalidRequest, NotAllowed, NotFound, RateLimited, ServerError, Timeout, TooLarge,
                               Unavailable, UpstreamError)
from msting.daemon.metrics.exposition import (INF, Histogram, braced, bucket_labels, escape, header, histogram_lines, label_text,
                                              number)
from msting.providers.router import RequestEnded

MAX_MODELS_PER_SERVICE = 256
UNKNOWN = "(unknown)"
OTHER = "(other)"
NONE = "(none)"  # a request whose name resolved to no service

# Few buckets: every one is a line per series on every scrape (300 series: 300 lines each).
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, INF)
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, INF)

# Outcome labels: an error class says what kind of failure it was (most specific first).
OUTCOMES = ((TooLarge, "too_large"), (InvalidRequest, "invalid_request"), (NotFound, "not_found"), (Conflict, "conflict"),
            (NotAllowed, "not_allowed"), (RateLimited, "rate_limited"), (Unavailable, "unavailable"), (Timeout, "timeout"), (UpstreamError, "upstream_error"),
            (ServerError, "server_error"))

REQUESTS = "msting_requests_total"
PROMPT = "msting_prompt_tokens_total"
COMPLETION = "msting_completion_tokens_total"
TTFT = "msting_time_to_first_token_seconds"
DURATION = "msting_request_duration_seconds"
RETRIES = "msting_retries_total"
FALLBACKS = "msting_fallbacks_total"

FAMILIES = (
    (REQUESTS, "counter", "Requests that ended, by kind (generate, stream, embed) and outcome (ok, cancelled, or the error's kind)."),
    (PROMPT, "counter", "Prompt tokens of the answered requests."),
    (COMPLETION, "counter", "Completion tokens of the answered requests."),
    (TTFT, "histogram", "Seconds from a streamed request's arrival at the router to its first token."),
    (DURATION, "histogram", "Seconds from a request's arrival at the router to its answer's end (answered requests)."),
)


def outcome_of(ended: RequestEnded) -> str:
    if ended.cancelled or isinstance(ended.error, (asyncio.CancelledError, GeneratorExit)):
        return "cancelled"
    if ended.error is None:
        return "ok"
    for cls, name in OUTCOMES:
        if isinstance(ended.error, cls):
            return name
    return "server_error"  # not an error of the API's own: a bug, counted as the 500 it is


class Series:
    """One (service, model) pair's counters and histograms, and its text."""

    __slots__ = ("inner", "outcomes", "prompt_tokens", "completion_tokens", "ttft", "duration", "_ttft_buckets",
                 "_duration_buckets", "_text")

    def __init__(self, service: str, model: str):
        self.inner = label_text((("service", service), ("model", model)))
        self.outcomes: dict[tuple[str, str], int] = {}
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.ttft = Histogram(TTFT_BUCKETS)
        self.duration = Histogram(DURATION_BUCKETS)
        self._ttft_buckets = bucket_labels(self.inner, TTFT_BUCKETS)
        self._duration_buckets = bucket_labels(self.inner, DURATION_BUCKETS)
        self._text: tuple[str, ...] | None = None

    def record(self, kind: str, outcome: str, ended: RequestEnded) -> None:
        key = (kind, outcome)
        self.outcomes[key] = self.outcomes.get(key, 0) + 1
        if ended.usage is not None:
            self.prompt_tokens += ended.usage.prompt_tokens
            self.completion_tokens += ended.usage.completion_tokens
        if ended.first_token_sec is not None:
            self.ttft.observe(ended.first_token_sec)
        if outcome == "ok":
            self.duration.observe(ended.seconds)
        self._text = None

    def text(self) -> tuple[str, ...]:
        """This series' lines of each family of FAMILIES, in that order."""
        if self._text is None:
            inner = self.inner
            requests = "".join(f'{REQUESTS}{{{inner},kind="{kind}",outcome="{outcome}"}} {count}\n'
                               for (kind, outcome), count in sorted(self.outcomes.items()))
            own = braced(inner)
            self._text = (
                requests,
                f"{PROMPT}{own} {self.prompt_tokens}\n",
                f"{COMPLETION}{own} {self.completion_tokens}\n",
                histogram_lines(TTFT, inner, self._ttft_buckets, self.ttft) if self.ttft.count else "",
                histogram_lines(DURATION, inner, self._duration_buckets, self.duration),
            )
        return self._text


class RequestMetrics:
    def __init__(self) -> None:
        self._series: dict[tuple[str, str], Series] = {}
        self._models: dict[str, int] = {}  # model labels per service
        self._retries: dict[str, int] = {}
        self._fallbacks: dict[tuple[str, str], int] = {}
        self._text: bytes | None = None  # the whole text, until a request ends

    def _labels(self, ended: RequestEnded) -> tuple[str, str]:
        service = ended.service or NONE
        model = ended.model or "default"
        if isinstance(ended.error, NotFound) or ended.service is None:
            model = UNKNOWN
        return service, model

    def series(self, service: str, model: str) -> Series:
        found = self._series.get((service, model))
        if found is not None:
            return found
        if self._models.get(service, 0) >= MAX_MODELS_PER_SERVICE:
            model = OTHER
            found = self._series.get((service, model))
            if found is not None:
                return found
        found = self._series[(service, model)] = Series(service, model)
        self._models[service] = self._models.get(service, 0) + 1
        return found

    # ---- the router's observer ------------------------------------------------------

    def request_ended(self, ended: RequestEnded) -> None:
        self._text = None
        outcome = outcome_of(ended)
        self.series(*self._labels(ended)).record(ended.kind, outcome, ended)
        # Attempts in order: each extra one within a service is a retry, each change of
        # service a fallback from the one before.
        previous = None
        for attempt in ended.attempts:
            if attempt.service == previous:
                self._retries[previous] = self._retries.get(previous, 0) + 1
            elif previous is not None:
                key = (previous, attempt.service)
                self._fallbacks[key] = self._fallbacks.get(key, 0) + 1
            previous = attempt.service

    # ---- exposition -----------------------------------------------------------------

    def text(self) -> bytes:
        """The exposition text (ASCII but for label values, which are UTF-8)."""
        if self._text is None:
            self._text = self._render().encode("utf-8")
        return self._text

    def _render(self) -> str:
        series = list(self._series.values())
        texts = [s.text() for s in series]
        out = []
        for i, (name, kind, help_) in enumerate(FAMILIES):
            out.append(header(name, kind, help_))
            out.extend(t[i] for t in texts)
        out.append(header(RETRIES, "counter", "Attempts beyond the first within one service (the retry loop's)."))
        out.extend(f'{RETRIES}{{service="{escape(s)}"}} {number(n)}\n' for s, n in sorted(self._retries.items()))
        out.append(header(FALLBACKS, "counter", "Requests handed from one service to the next of the fallback chain."))
        out.extend(f'{FALLBACKS}{{service="{escape(a)}",to="{escape(b)}"}} {n}\n' for (a, b), n in sorted(self._fallbacks.items()))
        return "".join(out)
