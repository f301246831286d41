"""How much memory a model needs, and whether it fits: a refusal beats an OOM.

:func:`estimate_model` works from a GGUF header (:class:`GGUFInfo`) alone: nothing
is loaded. A model served by ``replicas`` worker processes costs

* **weights**: the file size, once. llama.cpp maps the file (mmap), so its pages
  live in the page cache and are shared by every process that maps the same file:
  the replicas of a model, and other models on the same file (:func:`preflight`
  counts each file once).
* **KV cache**, per replica: ``parallel * pad(n_ctx) * kv_bytes_per_token`` with f16
  keys and values (llama.cpp's default), the context padded to a multiple of 256, as
  llama.cpp does, and one context of ``n_ctx`` for each of the worker's ``parallel``
  slots (the sequences it decodes together in one batch).
* **overhead**, per replica: the worker process itself (:data:`WORKER_PROCESS_BYTES`,
  measured), llama.cpp's vocabulary tables, and llama.cpp's compute, work and output
  buffers for a full batch at a full context (see :func:`_buffers_per_replica`).

:func:`choose_parallel` picks a model's ``parallel`` when the configuration leaves it
automatic: the largest of :data:`AUTO_PARALLEL` whose estimate fits the memory limit.

The figures are for CPU inference (flash attention off, as llama-cpp-python
defaults): offloading layers to a GPU (``n_gpu_layers``) only lowers what RAM must
hold, so the estimate stays on the safe side.

``psutil`` is imported inside :func:`preflight`; importing this module is cheap.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from msting.models.gguf_file import GGUFInfo

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

# The resident memory of one worker process (`python -m msting.worker`, spawned with a
# socketpair as the daemon does) apart from the model file's pages and the buffers
# estimated per model below. Measured with llama-cpp-python 0.3.36 (CPU build), Python
# 3.11, Linux x86_64, from /proc/<pid>/smaps after a ready worker served a generate:
#   python itself 8.6 MiB; + msting.worker 16 MiB; + llama_cpp imported 41 MiB;
#   msting-tiny loaded (n_ctx 512): 46.5 MiB outside the model mapping, 48.2 MiB after
#   a 20-token-prompt generate (of which KV cache 0.5 MiB); stories260K the same
#   within 0.2 MiB.
# Rounded up to 64 MiB: the margin covers malloc arenas, thread stacks and the
# Python objects of requests in flight.
WORKER_PROCESS_BYTES = 64 * MiB

# llama.cpp's vocabulary tables (token texts, scores, lookup maps) grow with the
# vocabulary: a 50,000-token model measured 7.9 MiB more than a 640-token one
# (168 bytes a token), rounded up.
VOCAB_BYTES_PER_TOKEN = 256

# llama.cpp pads the context (the KV cache's cells) to a multiple of this.
CTX_PAD = 256

# The micro-batch (n_ubatch) of a generation worker: llama-cpp-python's default,
# capped by n_ctx. An embeddings worker uses n_batch = n_ubatch = n_ctx, so that any
# input that fits the context is one micro-batch (see msting.worker.engine).
GENERATE_UBATCH = 512

# Encoder-only architectures: llama.cpp gives them no KV cache (every input is
# attended to within its micro-batch) and no output head.
NON_CAUSAL_ARCHS = frozenset(
    {"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "neo-bert", "modern-bert", "t5encoder"}
)

_F32 = 4
_F16 = 2

# The slot counts an automatic ``parallel`` chooses from, largest first.
AUTO_PARALLEL = (8, 4, 2, 1)


@dataclass(frozen=True)
class MemoryEstimate:
    """The memory one model needs, in bytes, for all of its replicas.

    ``weights_bytes`` is counted once (shared mmap pages); ``kv_bytes`` and
    ``overhead_bytes`` are per replica times ``replicas`` (the per-replica figures are
    properties). ``overhead_bytes`` includes ``buffers_bytes`` (llama.cpp's compute,
    work and output buffers, and its vocabulary tables). ``notes`` say what could not
    be estimated from the file.
    """

    name: str
    path: str
    n_ctx: int
    replicas: int
    embedding: bool
    weights_bytes: int
    kv_bytes: int
    overhead_bytes: int
    buffers_bytes: int
    total_bytes: int
    notes: tuple[str, ...] = ()
    parallel: int = 1  # slots per replica: each has its own KV cache of n_ctx

    @property
    def kv_bytes_per_replica(self) -> int:
        return self.kv_bytes // self.replicas

    @property
    def overhead_bytes_per_replica(self) -> int:
        return self.overhead_bytes // self.replicas

    def line(self) -> str:
        """One human line: ``story: 1.2 GiB (weights 0.9 GiB, KV cache 2 x 96.0 MiB, ...)``."""
        times = f"{self.replicas} x " if self.replicas > 1 else ""
        kind = (f", {self.parallel} slots" if self.parallel > 1 else "") + (", embeddings" if self.embedding else "")
        text = (
            f"{self.name}: {format_bytes(self.total_bytes)} (weights {format_bytes(self.weights_bytes)}, "
            f"KV cache {times}{format_bytes(self.kv_bytes_per_replica)}, "
            f"overhead {times}{format_bytes(self.overhead_bytes_per_replica)}; "
            f"n_ctx {self.n_ctx}{kind}; {self.path})"
        )
        if self.notes:
            text += "; " + "; ".join(self.notes)
        return text


@dataclass(frozen=True)
class Preflight:
    """The verdict on a set of models: ``ok``, the figures (all in bytes), and the words.

    ``needed`` counts the weights of each file once. ``available`` is what was
    checked against (psutil's ``available`` unless given); ``budget`` is the
    configured budget or None. ``message`` is one sentence; ``lines`` has one line
    per model; ``str()`` gives both.
    """

    ok: bool
    needed: int
    available: int
    budget: int | None
    weights_bytes: int
    kv_bytes: int
    overhead_bytes: int
    message: str
    lines: tuple[str, ...]
    estimates: tuple[MemoryEstimate, ...]

    def __str__(self) -> str:
        return "\n".join([self.message, *("  " + line for line in self.lines)])


def format_bytes(n: float) -> str:
    """``1.2 GiB``, ``172 MiB``, ``12.5 MiB`` or ``512.0 KiB``."""
    if n >= GiB:
        return f"{n / GiB:.1f} GiB"
    if n >= 100 * MiB:
        return f"{n / MiB:.0f} MiB"
    if n >= MiB:
        return f"{n / MiB:.1f} MiB"
    return f"{n / KiB:.1f} KiB"


def padded_ctx(n_ctx: int) -> int:
    """The context llama.cpp allocates for ``n_ctx``: rounded up to a multiple of 256."""
    return -(-n_ctx // CTX_PAD) * CTX_PAD


def _int(info: GGUFInfo, key: str) -> int | None:
    value = info.metadata.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return None
    return value


def _arch_int(info: GGUFInfo, suffix: str) -> int | None:
    return _int(info, f"{info.arch}.{suffix}") if info.arch else None


def kv_bytes_per_token(info: GGUFInfo) -> int | None:
    """f16 KV-cache bytes per context cell, all layers: ``block_count * head_count_kv
    * (key_length + value_length) * 2``.

    The head sizes are ``{arch}.attention.key_length`` / ``value_length`` when the
    file gives them (Gemma, Qwen3 and others have heads wider than
    ``embedding_length / head_count``), else ``embedding_length / head_count``. None
    when the metadata lacks the numbers (or gives per-layer arrays).
    """
    blocks, embd = info.block_count, info.embedding_length
    heads, heads_kv = info.head_count, info.head_count_kv
    if not blocks or not embd or not heads or not heads_kv:
        return None
    k_len = _arch_int(info, "attention.key_length")
    v_len = _arch_int(info, "attention.value_length")
    head = embd / heads
    return int(blocks * heads_kv * ((k_len or head) + (v_len or head)) * _F16)


def n_vocab(info: GGUFInfo) -> int | None:
    """The vocabulary size: ``{arch}.vocab_size``, else the tokenizer's token count."""
    value = _arch_int(info, "vocab_size")
    if value is not None:
        return value
    tokens = info.metadata.get("tokenizer.ggml.tokens")
    if isinstance(tokens, dict):
        count = tokens.get("array_len")
        if isinstance(count, int) and count > 0:
            return count
    return None


def _is_non_causal(info: GGUFInfo) -> bool:
    if info.arch in NON_CAUSAL_ARCHS:
        return True
    causal = info.metadata.get(f"{info.arch}.attention.causal")
    return causal is False


def _pools(info: GGUFInfo) -> bool:
    """True when the model declares a pooling type (a dedicated embedding model:
    llama.cpp outputs one vector per sequence and no per-token logits)."""
    value = _arch_int(info, "pooling_type")
    return value is not None and value != 0


def _buffers_per_replica(info: GGUFInfo, n_ctx: int, embedding: bool, parallel: int = 1) -> tuple[int, list[str]]:
    """llama.cpp's buffers for one worker at its worst: a full micro-batch attending
    to a full context (a long prompt's last chunk). With ``parallel`` slots, each slot
    has its own KV stream of ``n_ctx`` cells (a non-unified cache), so attention still
    spans one slot's cells (``n_kv`` below), while a generation step outputs one row of
    logits per slot. Each term was checked against
    llama.cpp's own "compute buffer size" and the RSS of real workers (msting-tiny,
    stories260K and 50,000-token test vocabularies; generate and embed):

    * attention: the worker lets llama.cpp use flash attention (its ``auto``, which a
      CPU always supports), so no scores of every head for every (token, cell) pair
      are kept: only the f16 mask, ``n_kv * n_ubatch * 2`` (without flash attention
      the scores and their f16 copy in the CPU work buffer would add
      ``n_kv * n_ubatch * (4 * (head_count + 1) + 2 * head_count)``: several times
      more for an embeddings worker, whose micro-batch is its whole context);
    * logits: one row of ``n_vocab`` floats for generation; for embeddings from a
      model without pooling (an LLM), every token of the micro-batch gets a row, both
      in the compute buffer and in the output buffer: ``2 * n_ubatch * n_vocab * 4``;
      the scores and the logits reuse the same compute memory, so the larger counts;
    * activations: ``n_ubatch * 4 * (8 * embedding_length + 2 * feed_forward_length)``;
    * the vocabulary tables: ``n_vocab * 256``.
    """
    notes: list[str] = []
    embd = info.embedding_length or 0
    heads = info.head_count or 0
    if not embd or not heads:
        notes.append("buffer sizes unknown (the file does not give embedding_length and head_count)")
    vocab = n_vocab(info) or 0
    if not vocab:
        notes.append("vocabulary size unknown")
    n_ff = _arch_int(info, "feed_forward_length") or 4 * embd

    n_ub = n_ctx if embedding else min(n_ctx, GENERATE_UBATCH)
    n_kv = n_ub if (embedding and _is_non_causal(info)) else padded_ctx(n_ctx)
    attention = n_kv * n_ub * _F16  # the mask (flash attention: no scores matrix)
    if embedding and (_pools(info) or _is_non_causal(info)):
        logits = output = 0
    elif embedding:
        logits = n_ub * vocab * _F32
        output = n_ub * (vocab + embd) * _F32
    else:
        logits = parallel * vocab * _F32
        output = parallel * (vocab + embd) * _F32
    activations = n_ub * _F32 * (8 * embd + 2 * n_ff)
    return max(attention, logits) + output + activations + vocab * VOCAB_BYTES_PER_TOKEN, notes


def estimate_model(
    info: GGUFInfo, n_ctx: int, replicas: int = 1, embedding: bool = False, name: str | None = None, parallel: int = 1
) -> MemoryEstimate:
    """The memory a model needs when served by ``replicas`` workers of ``parallel``
    slots each, with context ``n_ctx`` per slot; ``embedding`` for an embeddings
    worker (its micro-batch is the whole context). ``name`` labels the estimate
    (default: the file's general.name or stem).
    """
    if n_ctx < 1:
        raise ValueError(f"n_ctx must be >= 1, got {n_ctx}")
    if replicas < 1:
        raise ValueError(f"replicas must be >= 1, got {replicas}")
    if parallel < 1:
        raise ValueError(f"parallel must be >= 1, got {parallel}")
    notes: list[str] = []
    per_token = kv_bytes_per_token(info)
    if embedding and _is_non_causal(info):
        kv = 0  # llama.cpp allocates no KV cache for encoder-only models
    elif per_token is None:
        kv = 0
        notes.append("KV cache size unknown (the file does not give block_count, embedding_length and head counts)")
    else:
        kv = parallel * padded_ctx(n_ctx) * per_token
    buffers, buffer_notes = _buffers_per_replica(info, n_ctx, embedding, parallel)
    notes.extend(buffer_notes)
    overhead = WORKER_PROCESS_BYTES + buffers
    weights = info.size_bytes
    return MemoryEstimate(
        name=name or info.name or Path(info.path).stem,
        path=info.path,
        n_ctx=n_ctx,
        replicas=replicas,
        embedding=embedding,
        weights_bytes=weights,
        kv_bytes=kv * replicas,
        overhead_bytes=overhead * replicas,
        buffers_bytes=buffers * replicas,
        total_bytes=weights + (kv + overhead) * replicas,
        notes=tuple(notes),
        parallel=parallel,
    )


def choose_parallel(info: GGUFInfo, n_ctx: int, replicas: int = 1, *, budget_bytes: int | None, embedding: bool = False,
                    available_bytes: int | None = None) -> int:
    """The automatic ``parallel``: the largest of :data:`AUTO_PARALLEL` (8, 4, 2, 1)
    whose estimate (weights + replicas x (parallel x KV(n_ctx) + overhead)) fits in
    what :func:`preflight` checks against: the memory available (psutil's
    ``available`` unless given) and ``budget_bytes`` when there is a budget. 1 when
    none fits (the preflight then refuses the model, with the figures)."""
    if available_bytes is None:
        import psutil

        available_bytes = int(psutil.virtual_memory().available)
    limit = available_bytes if budget_bytes is None else min(available_bytes, budget_bytes)
    for parallel in AUTO_PARALLEL:
        if estimate_model(info, n_ctx, replicas, embedding=embedding, parallel=parallel).total_bytes <= limit:
            return parallel
    return 1


def preflight(
    estimates: Iterable[MemoryEstimate],
    available_bytes: int | None = None,
    budget_bytes: int | None = None,
) -> Preflight:
    """Whether ``estimates`` fit in the available memory (psutil's
    ``virtual_memory().available`` when ``available_bytes`` is None) and within
    ``budget_bytes`` (no budget when None).

    The weights of a file used by several estimates are counted once (mmap shares
    them). The caller passes, in ``available_bytes``, memory that would be freed
    first (workers about to be stopped) on top of what is free now.
    """
    estimates = tuple(estimates)
    if available_bytes is None:
        import psutil

        available_bytes = int(psutil.virtual_memory().available)
    seen: set[str] = set()
    weights = 0
    for e in estimates:
        if e.path not in seen:
            seen.add(e.path)
            weights += e.weights_bytes
    kv = sum(e.kv_bytes for e in estimates)
    overhead = sum(e.overhead_bytes for e in estimates)
    needed = weights + kv + overhead

    breakdown = (
        f"needs {format_bytes(needed)} (weights {format_bytes(weights)}, KV cache {format_bytes(kv)}, "
        f"overhead {format_bytes(overhead)})"
    )
    over_available = needed > available_bytes
    over_budget = budget_bytes is not None and needed > budget_bytes
    if over_available and over_budget:
        message = (
            f"{breakdown} but only {format_bytes(available_bytes)} is available "
            f"and the memory budget is {format_bytes(budget_bytes)}"
        )
    elif over_available:
        message = f"{breakdown} but only {format_bytes(available_bytes)} is available"
    elif over_budget:
        message = f"{breakdown} but the memory budget is {format_bytes(budget_bytes)}"
    else:
        message = f"{breakdown}; {format_bytes(available_bytes)} is available"
        if budget_bytes is not None:
            message += f" and the memory budget is {format_bytes(budget_bytes)}"
    lines = [e.line() for e in estimates]
    if len(seen) < len(estimates):
        lines.append("(the weights of a file used by several models are counted once: mmap shares them)")
    return Preflight(
        ok=not (over_available or over_budget),
        needed=needed,
        available=available_bytes,
        budget=budget_bytes,
        weights_bytes=weights,
        kv_bytes=kv,
        overhead_bytes=overhead,
        message=message,
        lines=tuple(lines),
        estimates=estimates,
    )
