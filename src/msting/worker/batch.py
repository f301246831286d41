"""The decode loop: every sequence a worker serves, in one llama.cpp context.

One thread (:class:`DecodeLoop`) owns the context. Each step is one ``llama_decode``
over one batch that holds the next token of every generating sequence and, after
them, a bounded chunk of pending prompt prefill: at most :data:`PREFILL_ALONE` prompt
tokens when no sequence is generating, and :data:`PREFILL_SHARED` while others are
(so a long prompt delays their next token by at most one such chunk). Then each
sequence that got its logits samples its next token with its own sampler chain
(:mod:`msting.worker.sampling`) and its text goes out through its job's sink. When
prompts of more than one token join generating sequences, the step is two decodes,
the prompts first (see :meth:`DecodeLoop._generate_step`).

Slots: the context has ``n_seq_max`` = slots and, with a non-unified KV cache, a
separate KV stream of ``n_ctx`` cells per slot; a slot's index is its llama.cpp
sequence id. A new job joins at the next step in a free slot: the free slot whose
kept tokens (the previous sequence's prompt and reply, still in its KV) share the
longest prefix with the job's prompt, so only the rest of the prompt is decoded
(``cached_tokens``). A prefix shorter than :data:`CACHE_MIN_TOKENS` (a BOS and a
space) saves nothing: such a job takes the slot that keeps the busy sequence ids
consecutive, then an empty slot, else the one used least recently, rather than destroy
a cache another prompt may want. A job that finishes, fails or is cancelled (checked at the start
of every step) leaves its slot at once.

Embedding jobs run in the same loop, one decode per step (embeddings switched on for
that decode alone): the next inputs of the oldest jobs, as many as there are sequences (the
jobs' slots and the free ones) and room in the batch, each in its own sequence,
pooled per sequence (the mean of its token vectors here for
a model that declares no pooling; llama.cpp's pooling otherwise, one input per decode
when the model has a KV cache, since llama.cpp pools per micro-batch).

Sinks (the worker server's) are called on this thread: ``piece(text, n)``,
``finish(result)``, ``fail(exc)``. No ``llama_cpp`` import: the engine passes its
module in.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from msting.timeslice import JOB_SLICE_US, set_time_slice
from msting.worker import pooling
from msting.worker.log import internal_error
from msting.worker.reply import ReplyText

PREFILL_ALONE = 512  # prompt tokens per step when no sequence is generating
PREFILL_SHARED = 128  # prompt tokens per step while other sequences generate
CACHE_MIN_TOKENS = 8  # a shorter common prefix does not choose the slot (it saves nothing)


class DecodeError(Exception):
    """llama.cpp failed to decode a batch."""


class Sink(Protocol):
    def piece(self, text: str, n: int) -> None: ...
    def finish(self, result: Any) -> None: ...
    def fail(self, exc: BaseException) -> None: ...


@dataclass(frozen=True)
class GenerationResult:
    finish_reason: str  # "stop" | "length" | "cancelled"
    prompt_tokens: int
    completion_tokens: int
    prompt_ms: float
    predicted_ms: float
    cached_tokens: int = 0  # prompt tokens reused from the slot's KV cache

    @property
    def predicted_per_second(self) -> float:
        # tokens after the first one, over the time spent producing them
        if self.completion_tokens > 1 and self.predicted_ms > 0:
            return (self.completion_tokens - 1) * 1000.0 / self.predicted_ms
        return 0.0

    @property
    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "cached_tokens": self.cached_tokens,
        }

    @property
    def timings(self) -> dict[str, float]:
        return {
            "prompt_ms": round(self.prompt_ms, 3),
            "predicted_ms": round(self.predicted_ms, 3),
            "predicted_per_second": round(self.predicted_per_second, 2),
        }


@dataclass(frozen=True)
class EmbeddingResult:
    embeddings: list[list[float]]  # one unit-length vector per input ([] if cancelled)
    prompt_tokens: int
    prompt_ms: float
    cancelled: bool = False

    @property
    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "total_tokens": self.prompt_tokens}

    @property
    def timings(self) -> dict[str, float]:
        return {"prompt_ms": round(self.prompt_ms, 3)}


@dataclass(eq=False)
class GenJob:
    """One generate request, prepared by the engine (tokens, limits, stops)."""

    prompt: list[int]
    limit: int  # completion tokens at most
    stop_ids: frozenset[int]
    reply: ReplyText
    sampling: dict[str, Any]  # temperature, top_p, presence_penalty, frequency_penalty, seed
    sink: Sink
    cancelled: threading.Event
    t0: float
    # the loop's
    sampler: Any = None
    fed: int = 0  # prompt tokens in the slot's KV
    next_token: int | None = None  # sampled, to be decoded at the next step
    completion: int = 0
    cached: int = 0
    t_first: float | None = None


@dataclass(eq=False)
class EmbedJob:
    """One embed request: the tokens of each input."""

    inputs: list[list[int]]
    mean_pool: bool  # the model declares no pooling: mean of the token vectors
    sink: Sink
    cancelled: threading.Event
    t0: float
    vectors: list[list[float]] = field(default_factory=list)
    tokens_done: int = 0


@dataclass(eq=False)
class Slot:
    index: int  # the llama.cpp sequence id
    tokens: list[int] = field(default_factory=list)  # what this slot's KV holds, by position
    job: GenJob | EmbedJob | None = None
    since: int = 0  # admission order of its job


class DecodeLoop:
    def __init__(
        self,
        lib: Any,
        ctx: Any,
        *,
        slots: int,
        n_batch: int,
        n_vocab: int,
        n_embd: int,
        token_piece: Callable[[int], bytes],
        is_eog: Callable[[int], bool],
        embeddings: bool,
    ) -> None:
        self._lib = lib
        self._ctx = ctx
        self._mem = lib.llama_get_memory(ctx) or None  # None: no KV cache (e.g. BERT)
        self._n_batch = n_batch
        self._n_vocab = n_vocab
        self._n_embd = n_embd
        self._token_piece = token_piece
        self._is_eog = is_eog
        self._batch = lib.llama_batch_init(n_batch, 0, 1)
        self._slots = [Slot(i) for i in range(slots)]
        self._embeddings_on = embeddings  # as the context was created
        self._admitted = 0
        self._cond = threading.Condition()
        self._inbox: list[GenJob | EmbedJob] = []
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.last_token_at: float | None = None  # time.monotonic() of the last token sampled

    # ---- any thread --------------------------------------------------------------

    def start(self, prepare: Callable[[], Any] | None = None) -> Any:
        """Start the decode thread. It first runs *prepare* (such as timing the
        threads with :meth:`time_decode`) and this call returns its result, or raises
        what it raised (the thread then ends). Every decode of the context runs on
        this one thread: llama.cpp's CPU backend keeps a team of compute threads per
        calling thread (OpenMP's), and a second team idle beside the first makes
        OpenMP count more threads than cores and stop spinning at its barriers, which
        costs about a quarter of the decode speed on 2 cores."""
        prepared: Future = Future()

        def run() -> None:
            set_time_slice(JOB_SLICE_US)
            try:
                prepared.set_result(prepare() if prepare is not None else None)
            except BaseException as exc:  # handed to start()'s caller; the thread ends
                prepared.set_exception(exc)
                return
            self._run()

        self._thread = threading.Thread(target=run, name="decode", daemon=True)
        self._thread.start()
        return prepared.result()

    def submit(self, job: GenJob | EmbedJob) -> None:
        with self._cond:
            self._inbox.append(job)
            self._cond.notify()

    def stop(self, timeout: float) -> None:
        """Cancel every job and end the loop (waits up to *timeout* seconds)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def close(self) -> None:
        """Free the batch and every sampler (after :meth:`stop`, or if never started)."""
        if self.is_alive():
            return
        for slot in self._slots:
            job = slot.job
            if isinstance(job, GenJob) and job.sampler is not None:
                self._lib.llama_sampler_free(job.sampler)
                job.sampler = None
        if self._batch is not None:
            self._lib.llama_batch_free(self._batch)
            self._batch = None

    # ---- the decode thread -------------------------------------------------------

    def _run(self) -> None:
        # start() gave this thread a long slice: whoever wakes up on this core while it
        # decodes (the client reading the stream, this process's frame reader) runs at
        # once (msting.timeslice).
        while True:
            with self._cond:
                while not self._inbox and not self._stopping and not self._busy():
                    self._cond.wait()
                inbox, self._inbox = self._inbox, []
                stopping = self._stopping
            for job in inbox:
                try:
                    self._admit(job)
                except Exception as exc:  # a bug in admitting it: that job fails
                    _safely(job.sink.fail, exc)
            if stopping:
                for slot in self._slots:
                    if slot.job is not None:
                        self._cancel(slot)
                return
            try:
                self._step()
            except Exception as exc:  # a bug in a step: its jobs fail, the loop goes on
                for slot in self._slots:
                    if slot.job is not None:
                        self._fail(slot, exc)

    def time_decode(self, tokens: list[int], budget_s: float, min_steps: int, embeddings: bool = False) -> float:
        """Decode tok/s of generation-shaped steps (one token, one sequence, its
        logits, or its embedding for a model that only embeds) on the calling thread,
        before the loop starts: *tokens* one by one, for *budget_s* seconds and at
        least *min_steps* steps (the first one, which wakes the compute threads, is
        not timed). A model without a KV cache decodes each token on its own. Only
        from :meth:`start`'s *prepare*, on the decode thread."""
        lib, batch, slot = self._lib, self._batch, self._slots[0]
        self._set_embeddings(embeddings)
        self._forget(slot, 0)
        alone = self._mem is None
        steps, t0 = -1, 0.0
        try:
            for p, t in enumerate(tokens):
                if steps == 0:
                    t0 = time.perf_counter()
                batch.token[0], batch.pos[0], batch.n_seq_id[0], batch.seq_id[0][0], batch.logits[0] = t, 0 if alone else p, 1, 0, 1
                batch.n_tokens = 1
                if lib.llama_decode(self._ctx, batch) != 0:
                    raise DecodeError("llama.cpp could not decode while timing the threads")
                steps += 1
                if steps >= min_steps and time.perf_counter() - t0 >= budget_s:
                    break
        finally:
            self._forget(slot, 0)
        elapsed = time.perf_counter() - t0
        return steps / elapsed if steps > 0 and elapsed > 0 else 0.0

    def _busy(self) -> bool:
        return any(slot.job is not None for slot in self._slots)

    def _admit(self, job: GenJob | EmbedJob) -> None:
        free = [slot for slot in self._slots if slot.job is None]
        if not free:  # the server admits at most one job per slot
            _safely(job.sink.fail, DecodeError("no free slot in the worker"))
            return
        self._admitted += 1
        if isinstance(job, EmbedJob):
            slot = free[0]
            slot.job, slot.since = job, self._admitted
            return
        # the longest common prefix worth keeping; else the slot that keeps the busy
        # sequence ids in the fewest runs of consecutive ids (llama.cpp decodes each run
        # of a non-unified cache in a pass of its own: a gap costs every step a pass),
        # then an empty slot, then the one used least recently (its cache is the least
        # likely to be asked for again)
        shared = {s.index: _common_prefix(s.tokens, job.prompt) for s in free}
        busy = {s.index for s in self._slots if s.job is not None}
        slot = max(free, key=lambda s: (
            shared[s.index] if shared[s.index] >= CACHE_MIN_TOKENS else 0, -_runs(busy | {s.index}),
            not s.tokens, -s.since, -s.index,
        ))
        keep = min(shared[slot.index], len(job.prompt) - 1)
        if keep < len(slot.tokens) and not self._forget(slot, keep):
            keep = 0
        job.fed = job.cached = keep
        s = job.sampling
        try:
            job.sampler = self._sampler(s)
        except Exception as exc:
            _safely(job.sink.fail, exc)
            return
        slot.job, slot.since = job, self._admitted

    def _sampler(self, s: dict[str, Any]) -> Any:
        from msting.worker.sampling import sampler_chain

        return sampler_chain(
            self._lib, self._n_vocab, s["temperature"], s["top_p"],
            s["presence_penalty"], s["frequency_penalty"], s["seed"], grammar=s.get("grammar"), ctx=self._ctx,
        )

    def _forget(self, slot: Slot, keep: int) -> bool:
        """Drop the slot's KV from position *keep* on (all of it when that is refused)."""
        ok = True
        if self._mem is not None:
            ok = bool(self._lib.llama_memory_seq_rm(self._mem, slot.index, keep, -1))
            if not ok:
                self._lib.llama_memory_seq_rm(self._mem, slot.index, -1, -1)
        del slot.tokens[keep if ok else 0 :]
        return ok

    def _step(self) -> None:
        for slot in self._slots:
            job = slot.job
            if job is not None and job.cancelled.is_set():
                self._cancel(slot)
        embedding = sorted((s for s in self._slots if isinstance(s.job, EmbedJob)), key=lambda s: s.since)
        if embedding:
            self._embed_step(embedding)
        self._generate_step()

    # ---- generation --------------------------------------------------------------

    def _generate_step(self) -> None:
        active = [s for s in self._slots if isinstance(s.job, GenJob)]
        if not active:
            return
        joining = [s for s in active if s.job.next_token is None]
        if len(joining) == len(active):
            self._decode(active, PREFILL_ALONE)
            return
        if joining and all(len(s.job.prompt) - s.job.fed > 1 for s in joining):
            # llama.cpp splits a batch of a non-unified cache into micro-batches with as
            # many tokens of every sequence: prompt tokens beside one-token sequences cost
            # a pass of their own whatever the order. Decoded first, a prompt that ends
            # here has its first token now and generates in this step's second pass.
            self._decode(joining, PREFILL_SHARED)
            active = [s for s in self._slots if isinstance(s.job, GenJob)]
            self._decode(active, 0)
            return
        self._decode(active, PREFILL_SHARED)

    def _decode(self, active: list[Slot], budget: int) -> None:
        """One llama_decode: the next token of every generating sequence in *active*,
        then up to *budget* prompt tokens of the others; then each output sampled."""
        lib, batch = self._lib, self._batch
        token, pos, n_seq, seq_id, logits = batch.token, batch.pos, batch.n_seq_id, batch.seq_id, batch.logits
        budget = min(budget, self._n_batch - sum(1 for s in active if s.job.next_token is not None))
        n = 0
        outputs: list[tuple[int, Slot]] = []
        for slot in active:  # in sequence id order: llama.cpp splits a batch by consecutive ids
            job = slot.job
            kept = slot.tokens
            if job.next_token is not None:
                t = job.next_token
                job.next_token = None
                token[n], pos[n], n_seq[n], seq_id[n][0], logits[n] = t, len(kept), 1, slot.index, 1
                kept.append(t)
                outputs.append((n, slot))
                n += 1
                continue
            take = min(len(job.prompt) - job.fed, budget)
            if take <= 0:
                continue
            budget -= take
            start = job.fed
            for t in job.prompt[start : start + take]:
                token[n], pos[n], n_seq[n], seq_id[n][0], logits[n] = t, len(kept), 1, slot.index, 0
                kept.append(t)
                n += 1
            job.fed += take
            if job.fed == len(job.prompt):
                logits[n - 1] = 1
                outputs.append((n - 1, slot))
        if n == 0:
            return
        batch.n_tokens = n
        self._set_embeddings(False)
        rc = lib.llama_decode(self._ctx, batch)
        if rc != 0:
            error = DecodeError(f"llama.cpp could not decode the batch (llama_decode returned {rc})")
            for slot in active:
                if slot.job is not None:
                    self._fail(slot, error)
            return
        now = time.perf_counter()
        self.last_token_at = time.monotonic()
        sample = lib.llama_sampler_sample
        for i, slot in outputs:
            job = slot.job
            try:
                self._on_token(slot, job, sample(job.sampler, self._ctx, i), now)
            except Exception as exc:
                self._fail(slot, exc)

    def _on_token(self, slot: Slot, job: GenJob, token: int, now: float) -> None:
        if job.t_first is None:
            job.t_first = now
        if self._is_eog(token) or token in job.stop_ids:
            self._end(slot, "stop")
            return
        job.completion += 1
        out = job.reply.feed(self._token_piece(token))
        if out is not None:
            job.sink.piece(*out)
        if job.reply.stopped:
            self._end(slot, "stop")
        elif job.completion >= job.limit:
            self._end(slot, "length")
        else:
            job.next_token = token

    def _end(self, slot: Slot, finish: str) -> None:
        job = slot.job
        assert isinstance(job, GenJob)
        t_end = time.perf_counter()
        if not job.reply.stopped:
            out = job.reply.end()
            if job.reply.stopped:
                finish = "stop"
            if out is not None:
                job.sink.piece(*out)
        t_first = job.t_first if job.t_first is not None else t_end
        result = GenerationResult(
            finish_reason=finish,
            prompt_tokens=len(job.prompt),
            completion_tokens=job.completion,
            prompt_ms=(t_first - job.t0) * 1000.0,
            predicted_ms=max(t_end - t_first, 0.0) * 1000.0,
            cached_tokens=job.cached,
        )
        self._release(slot)
        _safely(job.sink.finish, result, job.sink)

    def _release(self, slot: Slot) -> None:
        job, slot.job = slot.job, None
        if isinstance(job, GenJob):
            if job.sampler is not None:
                self._lib.llama_sampler_free(job.sampler)
                job.sampler = None

    def _cancel(self, slot: Slot) -> None:
        job = slot.job
        try:
            if isinstance(job, GenJob):
                self._end(slot, "cancelled")
            else:
                assert job is not None
                self._release(slot)
                ms = (time.perf_counter() - job.t0) * 1000.0
                _safely(job.sink.finish, EmbeddingResult([], job.tokens_done, ms, cancelled=True), job.sink)
        except Exception as exc:
            self._fail(slot, exc)

    def _fail(self, slot: Slot, exc: BaseException) -> None:
        job = slot.job
        if job is None:
            return
        try:
            self._release(slot)
            self._forget(slot, 0)
        except Exception as inner:
            internal_error(inner, f"freeing slot {slot.index}")
        _safely(job.sink.fail, exc)

    # ---- embeddings --------------------------------------------------------------

    def _embed_step(self, jobs: list[Slot]) -> None:
        """One decode for the embedding jobs in *jobs* (oldest first): their next inputs,
        in order, one sequence each (the jobs' slots, then the free ones), as many as
        there are sequences and room in the batch."""
        lib, batch = self._lib, self._batch
        seqs = jobs + [s for s in self._slots if s.job is None]
        mean_pool = jobs[0].job.mean_pool  # the model's: the same for every job
        # llama.cpp pools a sequence per micro-batch, and a non-unified KV cache splits
        # sequences of unequal lengths over several: its own pooling (mean, cls, last)
        # gets one input per decode unless the model has no KV cache (BERT)
        room = 1 if not mean_pool and self._mem is not None else len(seqs)
        budget = self._n_batch
        picked: list[tuple[Slot, list[int]]] = []  # (the job's slot, an input's tokens)
        for owner in jobs:
            job = owner.job
            assert isinstance(job, EmbedJob)
            for tokens in job.inputs[len(job.vectors) :]:
                if len(picked) == room or len(tokens) > budget:
                    break
                picked.append((owner, tokens))
                budget -= len(tokens)
            else:
                continue
            break
        if not picked:
            return
        token, pos, n_seq, seq_id, logits = batch.token, batch.pos, batch.n_seq_id, batch.seq_id, batch.logits
        n = 0
        spans: list[tuple[Slot, int, int]] = []  # (sequence, first row, rows)
        for seq, (_, tokens) in zip(seqs, picked):
            self._forget(seq, 0)
            for p, t in enumerate(tokens):
                token[n], pos[n], n_seq[n], seq_id[n][0], logits[n] = t, p, 1, seq.index, 1
                n += 1
            spans.append((seq, n - len(tokens), len(tokens)))
        batch.n_tokens = n
        self._set_embeddings(True)
        try:
            rc = lib.llama_decode(self._ctx, batch)
            if rc != 0:
                raise DecodeError(f"llama.cpp could not embed the inputs (llama_decode returned {rc})")
            vectors = self._pooled(spans, n, mean_pool)
        except Exception as exc:
            for owner in {id(o): o for o, _ in picked}.values():
                self._fail(owner, exc)
            return
        finally:
            for seq, _, _ in spans:
                self._forget(seq, 0)
        for (owner, tokens), vector in zip(picked, vectors):
            job = owner.job
            job.vectors.append(vector)
            job.tokens_done += len(tokens)
            if len(job.vectors) == len(job.inputs):
                self._release(owner)
                ms = (time.perf_counter() - job.t0) * 1000.0
                _safely(job.sink.finish, EmbeddingResult(job.vectors, job.tokens_done, ms), job.sink)

    def _pooled(self, spans: list[tuple[Slot, int, int]], rows: int, mean_pool: bool) -> list[list[float]]:
        import numpy as np

        lib, n_embd = self._lib, self._n_embd
        out = []
        if mean_pool:
            table = np.ctypeslib.as_array(lib.llama_get_embeddings(self._ctx), shape=(rows, n_embd))
            for _, first, count in spans:
                out.append(pooling.unit_vector(table[first : first + count], mean_pool=True))
        else:
            for seq, _, _ in spans:
                ptr = lib.llama_get_embeddings_seq(self._ctx, seq.index)
                if not ptr:
                    raise DecodeError("llama.cpp returned no pooled embedding")
                out.append(pooling.unit_vector(np.ctypeslib.as_array(ptr, shape=(n_embd,)), mean_pool=False))
        return out

    def _set_embeddings(self, on: bool) -> None:
        if on != self._embeddings_on:
            self._lib.llama_set_embeddings(self._ctx, on)
            self._embeddings_on = on


def _runs(ids: set[int]) -> int:
    """How many runs of consecutive integers *ids* make ({0, 1, 3}: 2)."""
    return sum(1 for i in ids if i - 1 not in ids)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _safely(call: Callable, arg: Any, sink: Any = None) -> None:
    """Call a sink; a sink that raises is logged (its job is over either way)."""
    try:
        call(arg)
    except Exception as exc:
        if sink is not None:
            try:
                sink.fail(exc)
                return
            except Exception:
                pass
        internal_error(exc, "answering a job")


__all__ = ["DecodeLoop", "EmbedJob", "EmbeddingResult", "GenJob", "GenerationResult"]
