"""What a request may hold: the body limits, the range of every numeric field, and the
sampling defaults.

Defined once, here. The HTTP routes (through :mod:`msting.http.body` and
:class:`msting.http.errors.Fields`) and the WebSocket enforce them; the worker
(:mod:`msting.worker.params`) checks the same ranges again before a frame reaches
llama.cpp; docs/api.md lists them for users, and an OpenAPI document can import them.

Dependency-free on purpose: the worker process imports it.

A range is a ``(minimum, maximum)`` pair, both ends included.
"""

from __future__ import annotations

# ---- the body, whatever the route -------------------------------------------------

# An HTTP body or one WebSocket message, in bytes. Larger is a 413 (on the WebSocket,
# an error message with code body_too_large). 1 MiB holds a prompt of about 250k
# tokens of English (170k of CJK text sent as \uXXXX escapes): more than the context
# window of any model a worker serves on a CPU; a generate frame to the worker (16 MiB
# at most) is never too big for a body that fits. It also bounds the parse: a hostile
# body of a million tiny arrays costs the event loop about 0.1 s.
MAX_BODY_BYTES = 1024 * 1024

# Objects and arrays nested in each other, the outermost object counting as 1.
# A chat request with content parts needs 5.
MAX_DEPTH = 32

# Every integer anywhere in a body, used or not, must fit a signed 64-bit integer.
INT64 = (-(2**63), 2**63 - 1)

# ---- sampling (generate, chat and text completions, execute, the WebSocket) -------

MAX_TOKENS = (1, 1_048_576)  # max_tokens / max_completion_tokens; the context window caps it too
TEMPERATURE = (0.0, 2.0)
TOP_P = (0.0, 1.0)
PRESENCE_PENALTY = (-2.0, 2.0)
FREQUENCY_PENALTY = (-2.0, 2.0)
# llama.cpp takes a uint32 seed and treats 0xFFFFFFFF (LLAMA_DEFAULT_SEED) as "pick one
# at random", so the fixed seeds are 0 .. 0xFFFFFFFE. -1 (like null, or leaving it
# out) asks for a random seed.
SEED = (-1, 0xFFFF_FFFE)
RANDOM_SEED = -1
N = (1, 1)  # the OpenAI routes' n: one choice per request
MAX_STOP_SEQUENCES = 16  # each is searched for after every token

# The defaults of what a request leaves out. A model's profile entry may set its own
# `temperature` and `max_tokens` (config.yaml's and a profile's default are these).
DEFAULT_MAX_TOKENS = 256
DEFAULT_TEMPERATURE = 0.7
DEFAULT_TOP_P = 0.95
DEFAULT_PRESENCE_PENALTY = 0.0
DEFAULT_FREQUENCY_PENALTY = 0.0

# ---- other fields ------------------------------------------------------------------

MAX_TOOLS = 128  # tools one chat request may declare (OpenAI's own limit)
TOOL_NAME_PATTERN = r"[A-Za-z0-9_-]{1,64}"  # a tool's name, as OpenAI takes it
MAX_EMBEDDING_INPUTS = 2048  # strings in one /v1/embeddings request (OpenAI's own limit)
LOAD_TIMEOUT_SEC = (0.0, 3600.0)  # /models/load "timeout"
MAX_NAME_CHARS = 256  # a model, profile or WebSocket request id
# A request's keep_alive (an on-demand model's idle time before it unloads): seconds, or a
# duration string as Ollama takes it ("5m", "1h30m"); any negative value keeps it loaded.
MAX_KEEP_ALIVE_SEC = 365 * 24 * 3600.0
MAX_DURATION_CHARS = 64

# Every numeric field by name, for documents generated from this module.
NUMERIC_FIELDS: dict[str, tuple[float, float]] = {
    "max_tokens": MAX_TOKENS,
    "max_completion_tokens": MAX_TOKENS,
    "temperature": TEMPERATURE,
    "top_p": TOP_P,
    "presence_penalty": PRESENCE_PENALTY,
    "frequency_penalty": FREQUENCY_PENALTY,
    "seed": SEED,
    "n": N,
    "timeout": LOAD_TIMEOUT_SEC,
}
