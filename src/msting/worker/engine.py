"""The inference engine: the only module that imports ``llama_cpp``.

``llama_cpp`` is imported inside the methods, so importing this module (for its
types) stays cheap. One :class:`Engine` holds one model and one llama.cpp context
with a slot (a sequence, its own KV stream of ``n_ctx`` cells) per parallel request,
built with llama.cpp's own API (``llama_cpp.Llama`` has one sequence per context),
and the decode loop that serves them all (:mod:`msting.worker.batch`).

The engine prepares requests (tokens, chat rendering by :mod:`msting.worker.chat`,
limits, stops) on the caller's thread and hands them to the loop:
:meth:`Engine.start_generate` and :meth:`Engine.start_embed` report to a sink on the
loop's thread; :meth:`Engine.generate` (a generator of :class:`Piece` events and,
last, one :class:`GenerationResult`) and :meth:`Engine.embed` are the same path for
a caller that waits.
"""

from __future__ import annotations

import collections
import ctypes
import os
import queue
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from msting.api import limits
from msting.models.gguf_file import ModelFileError, read_gguf_info
from msting.models.gguf_file import POOLING_NAMES
from msting.worker import chat, pooling, threads
from msting.worker.batch import PREFILL_ALONE, DecodeLoop, EmbeddingResult, EmbedJob, GenerationResult, GenJob
from msting.worker.params import DEFAULT_N_CTX
from msting.worker.reply import ReplyText
from msting.worker.sampling import choices_grammar


class EngineError(Exception):
    """llama.cpp failed to load the model or to run it."""


class RequestError(EngineError):
    """The request cannot be served by this model (e.g. the prompt is too long)."""


@dataclass(frozen=True)
class Piece:
    text: str
    n: int  # tokens this piece covers (may be 0 when text was held back earlier)


# ---- llama.cpp log capture -----------------------------------------------------------

_LOG_LINES: collections.deque[str] = collections.deque(maxlen=40)
_LOG_LOCK = threading.Lock()
_log_total = 0  # lines ever captured (the deque only keeps the last 40)
_log_callback: Any = None  # keep the ctypes callback alive
_LOG_QUIET = threading.Event()  # set while a model loads: its warnings are kept, not printed
# ggml_log_level: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5
_GGML_LOG_WARN, _GGML_LOG_ERROR, _GGML_LOG_CONT = 3, 4, 5


def _install_log_capture(llama_cpp: Any) -> None:
    """Route llama.cpp's log through us: keep recent warnings/errors for error
    messages (load failures are otherwise invisible with verbose=False) and pass
    them on to stderr (the daemon's log). Info and debug output is dropped."""
    global _log_callback
    if _log_callback is not None:
        return
    state = {"level": 0}

    @llama_cpp.llama_log_callback
    def _callback(level: int, text: bytes, user_data: Any) -> None:  # pragma: no cover - C callback
        global _log_total
        try:
            if level == _GGML_LOG_CONT:
                level = state["level"]
            state["level"] = level
            if level not in (_GGML_LOG_WARN, _GGML_LOG_ERROR):
                return
            line = text.decode("utf-8", errors="replace").rstrip()
            if not line:
                return
            with _LOG_LOCK:
                _LOG_LINES.append(line)
                _log_total += 1
            if _LOG_QUIET.is_set():
                return
            os.write(2, f"llama.cpp: {line}\n".encode("utf-8", errors="replace"))
        except Exception:
            pass

    _log_callback = _callback
    llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))


def _recent_log(since: int) -> list[str]:
    """Captured warning/error lines logged after the moment _log_total was *since*."""
    with _LOG_LOCK:
        new = min(_log_total - since, len(_LOG_LINES))
        return list(_LOG_LINES)[len(_LOG_LINES) - new :] if new > 0 else []


def import_backend() -> Any:
    """Import llama_cpp (about 0.2 s: numpy, jinja2, the shared library), route its
    log and initialise the backend. Idempotent. The worker calls it before timing
    the model load."""
    import llama_cpp

    if _log_callback is None:
        _install_log_capture(llama_cpp)
        llama_cpp.llama_backend_init()
    return llama_cpp


# ---- engine ---------------------------------------------------------------------------

# threads measured at load: this long in all (split over the thread counts, two
# rounds each), and at least this many timed decode steps per count and round
MEASURE_BUDGET_S = 0.5
MEASURE_MIN_STEPS = 3


class Engine:
    def __init__(
        self,
        model_path: str | os.PathLike[str],
        n_ctx: int = DEFAULT_N_CTX,
        n_threads: int | None = None,
        n_threads_batch: int | None = None,
        n_gpu_layers: int = 0,
        seed: int | None = None,
        embedding: bool = False,
        chat_format: str | None = None,
        parallel: int = 1,
    ) -> None:
        self.model_path = str(model_path)
        self.n_ctx = n_ctx  # of each slot
        self.n_threads = n_threads  # None: measured at load
        self.n_threads_batch = n_threads_batch
        self.n_gpu_layers = n_gpu_layers
        self.seed = seed
        self.embedding = embedding
        self.chat_format = chat_format  # the spec's override, or None
        self.parallel = parallel
        self.info = None
        self.metadata: dict[str, Any] | None = None
        self.pooling: str | None = None  # embedding workers: llama.cpp's pooling type
        self.threads: threads.ThreadChoice | None = None
        self._model: Any = None
        self._ctx: Any = None
        self._vocab: Any = None
        self._lib: Any = None  # the llama_cpp module, once loaded
        self._loop: DecodeLoop | None = None
        self._chat: chat.ChatFormat | None = None
        self._add_bos = True
        self._bos = -1
        self._n_ctx_slot = n_ctx
        self._n_batch = 0
        self._piece_buf = ctypes.create_string_buffer(64)
        self._rng = random.Random(seed) if seed is not None else random.Random()
        self._rng_lock = threading.Lock()

    @property
    def serves_generate(self) -> bool:
        """False for an embedding worker on a model that declares a pooling type (a
        dedicated embedding model such as BERT: it may have no output head)."""
        return not self.embedding or self.pooling == "none"

    @property
    def last_token_at(self) -> float | None:
        """time.monotonic() when the decode loop last sampled a token, or None."""
        return self._loop.last_token_at if self._loop is not None else None

    def load(self) -> dict[str, Any]:
        """Validate the file, load it into llama.cpp, choose the threads, start the
        decode loop; the model metadata.

        Raises ModelFileError for a missing/unreadable/corrupt file and EngineError
        when llama.cpp refuses a file that looked valid, for an unknown chat_format
        and for a reranker loaded for embeddings.
        """
        info = read_gguf_info(self.model_path)  # ModelFileError with a clear message
        self.info = info
        lib = import_backend()
        import llama_cpp.llama_chat_format as chat_formats

        names = chat.valid_names(chat_formats)
        if self.chat_format is not None and self.chat_format not in names:  # before the load
            raise EngineError(
                f"unknown chat_format {self.chat_format!r}; valid names: {', '.join(names)}"
            )
        self._lib = lib
        try:
            self._load_model(lib)
            self._vocab = lib.llama_model_get_vocab(self._model)
            self._add_bos = bool(lib.llama_vocab_get_add_bos(self._vocab))
            self._bos = int(lib.llama_vocab_bos(self._vocab))
            if self.embedding:
                kind = int(lib.llama_pooling_type(self._ctx))
                self.pooling = POOLING_NAMES.get(kind, f"type {kind}")
                if self.pooling not in pooling.EMBEDDING_POOLINGS:
                    raise EngineError(
                        f"{self.model_path} declares {self.pooling!r} pooling (a reranker?); "
                        "only none, mean, cls and last pooling can serve embeddings"
                    )
            eos = int(lib.llama_vocab_eos(self._vocab))
            try:
                self._chat = chat.select(
                    chat_formats,
                    self.chat_format,
                    info.chat_template,
                    bos_token=self._token_text(self._bos),
                    eos_token=self._token_text(eos),
                    eos_token_id=eos,
                )
            except ValueError as exc:
                raise EngineError(str(exc)) from None
            n_vocab = int(lib.llama_vocab_n_tokens(self._vocab))
            n_embd = int(lib.llama_model_n_embd(self._model))
            self._loop = DecodeLoop(
                lib, self._ctx, slots=self.parallel, n_batch=self._n_batch, n_vocab=n_vocab, n_embd=n_embd,
                token_piece=self._token_to_piece, is_eog=self._is_eog, embeddings=self.embedding,
            )
            self.threads = self._loop.start(prepare=self._choose_threads)
        except BaseException:
            self.close()
            raise
        gpu = self.n_gpu_layers != 0 and bool(lib.llama_supports_gpu_offload())
        self.metadata = {
            "path": str(Path(self.model_path).resolve()),
            "arch": info.arch,
            "n_ctx": self._n_ctx_slot,
            "n_ctx_train": int(lib.llama_model_n_ctx_train(self._model)),
            "n_vocab": n_vocab,
            "n_embd": n_embd,
            "n_params": int(lib.llama_model_n_params(self._model)),
            "size_bytes": info.size_bytes,
            "chat_template": info.chat_template,
            "chat_format": self._chat.name,
            "backend": "gpu" if gpu else "cpu",
            "embedding": self.embedding,
            "pooling": self.pooling,
            "parallel": self.parallel,
            "n_threads": self.threads.chosen,
            "threads": self.threads.as_metadata(),
        }
        return dict(self.metadata)

    def _load_model(self, lib: Any) -> None:
        """The model and one context: a non-unified KV cache of ``parallel`` streams,
        ``n_ctx`` cells each (llama.cpp splits its ``n_ctx`` evenly over the sequences)."""
        with _LOG_LOCK:
            mark = _log_total

        def refused(what: str) -> EngineError:
            detail = "; ".join(_recent_log(mark)[-5:])
            msg = f"llama.cpp could not load {self.model_path}: {what}"
            return EngineError(msg + (f" ({detail})" if detail else ""))

        mparams = lib.llama_model_default_params()
        mparams.n_gpu_layers = self.n_gpu_layers
        mparams.load_mode = lib.LLAMA_LOAD_MODE_MMAP  # as llama_cpp.Llama: the page cache's copy, shared
        _LOG_QUIET.set()  # llama.cpp's load warnings (odd metadata) only go into a load error
        try:
            model = lib.llama_model_load_from_file(self.model_path.encode("utf-8"), mparams)
        finally:
            _LOG_QUIET.clear()
        if not model:
            raise refused("the model did not load")
        self._model = model
        cparams = lib.llama_context_default_params()
        n_threads = self.n_threads or 1  # measured before the first request when None
        if self.embedding:
            # an input is embedded in one micro-batch (llama.cpp requires it for
            # non-causal models), so any input that fits the context can be embedded
            n_batch = max(self.n_ctx, PREFILL_ALONE + self.parallel)
            n_ubatch = n_batch
        else:
            n_batch = PREFILL_ALONE + self.parallel
            n_ubatch = min(512, n_batch)
        cparams.n_ctx = self.n_ctx * self.parallel
        cparams.n_seq_max = self.parallel
        cparams.kv_unified = False
        cparams.n_batch = n_batch
        cparams.n_ubatch = n_ubatch
        cparams.n_threads = n_threads
        cparams.n_threads_batch = self.n_threads_batch or n_threads
        cparams.embeddings = self.embedding
        cparams.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_AUTO  # as llama-server: llama.cpp uses it where the device supports it
        ctx = lib.llama_init_from_model(model, cparams)
        if not ctx:
            raise refused("llama.cpp could not create its context")
        self._ctx = ctx
        self._n_batch = int(lib.llama_n_batch(ctx))
        self._n_ctx_slot = int(lib.llama_n_ctx_seq(ctx))

    def _choose_threads(self) -> threads.ThreadChoice:
        """The spec's n_threads, or the fastest decode at 1..usable cores (threads.choose),
        set on the context. Runs on the decode thread, before its first job."""
        if self.n_threads:
            choice = threads.from_spec(self.n_threads)
        else:
            try:
                choice = self._measure_threads()
            except Exception as exc:  # the model serves anyway; its requests will say what is wrong
                choice = threads.ThreadChoice(1, "measured", f"1 thread: the decode speed could not be measured ({exc})")
        self._lib.llama_set_n_threads(self._ctx, choice.chosen, self.n_threads_batch or choice.chosen)
        return choice

    def _measure_threads(self) -> threads.ThreadChoice:
        cores = threads.usable_cores()
        if cores == 1:
            return threads.choose({1: self._time_decode(1, MEASURE_BUDGET_S)})
        counts = list(range(1, cores + 1))
        budget = MEASURE_BUDGET_S / (2 * len(counts))
        measured: dict[int, float] = {}
        for _ in range(2):  # two interleaved rounds, the best of each: a neighbour's burst hurts one
            for n in counts:
                measured[n] = max(measured.get(n, 0.0), self._time_decode(n, budget))
        return threads.choose(measured)

    def _time_decode(self, n: int, budget_s: float) -> float:
        self._lib.llama_set_n_threads(self._ctx, n, n)
        text = self._prompt_tokens("Once upon a time, there was a little girl who liked to play in the park. " * 8)
        tokens = text[: max(2, self._n_ctx_slot - 1)]
        return self._loop.time_decode(tokens, budget_s, MEASURE_MIN_STEPS, embeddings=not self.serves_generate)

    def close(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.stop(_CLOSE_TIMEOUT_S)
            if loop.is_alive():
                return  # a decode that ignored cancellation still uses the context
            loop.close()
        ctx, self._ctx = self._ctx, None
        if ctx is not None:
            self._lib.llama_free(ctx)
        model, self._model = self._model, None
        if model is not None:
            self._lib.llama_model_free(model)

    def stop(self, timeout: float) -> bool:
        """Cancel every job and stop the decode loop; False when it is still running
        after *timeout* seconds."""
        loop = self._loop
        if loop is None:
            return True
        loop.stop(timeout)
        return not loop.is_alive()

    # ---- requests ------------------------------------------------------------------

    def start_generate(
        self,
        sink: Any,
        cancelled: threading.Event,
        prompt: str | None = None,
        max_tokens: int = limits.DEFAULT_MAX_TOKENS,
        temperature: float = limits.DEFAULT_TEMPERATURE,
        top_p: float = limits.DEFAULT_TOP_P,
        stop: list[str] | str | None = None,
        seed: int | None = None,
        messages: list[dict[str, str]] | None = None,
        presence_penalty: float = limits.DEFAULT_PRESENCE_PENALTY,
        frequency_penalty: float = limits.DEFAULT_FREQUENCY_PENALTY,
        choices: list[str] | None = None,
    ) -> None:
        """Start a completion of *prompt*, or the assistant's reply to chat *messages*,
        in the decode loop; its text goes to *sink* (``piece``, then ``finish`` with a
        GenerationResult, or ``fail``), on the loop's thread.

        Setting *cancelled* stops it at the next step (finish_reason "cancelled").
        Text that could be the start of a stop sequence is held back until it is
        known not to be; the stop sequence itself is not returned. Raises
        RequestError, here, for requests the model cannot serve (prompt longer than
        the context window, messages the chat template rejects).

        Chat *messages* are rendered with the model's chat format (see
        msting.worker.chat); its stop strings join *stop*, those that are single
        special tokens (``<|im_end|>``) end generation as tokens, and the reply's
        leading whitespace (the space after "Assistant:", "[/INST]") is dropped.

        Sampling is ``Llama.create_completion``'s (msting.worker.sampling), in C, one
        chain per sequence; text is detokenized incrementally (``create_completion``
        re-detokenizes the whole completion for every token).
        """
        loop = self._loop
        if loop is None:
            raise EngineError("the engine is not loaded")
        if (prompt is None) == (messages is None):
            raise RequestError("exactly one of prompt and messages is required")
        stops = [stop] if isinstance(stop, str) and stop else [s for s in (stop or []) if s]
        t0 = time.perf_counter()
        stop_ids: set[int] = set()
        if messages is not None:
            rendered = self.render_chat(messages)
            prompt_tokens = self._prompt_tokens(rendered.prompt, is_chat=True)
            stop_ids.update(rendered.stop_token_ids)
            for s in rendered.stop:
                token = self._special_token(s)
                if token is not None:
                    stop_ids.add(token)
                elif s not in stops:
                    stops.append(s)
        else:
            prompt_tokens = self._prompt_tokens(prompt or "")
        n_ctx = self._n_ctx_slot
        if len(prompt_tokens) >= n_ctx:
            raise RequestError(
                f"the prompt is {len(prompt_tokens)} tokens, which does not fit the "
                f"{n_ctx}-token context window"
            )
        if seed is None:  # a random one of the fixed seeds (llama.cpp would take 0xFFFFFFFF as its own random pick)
            with self._rng_lock:
                seed = self._rng.randint(0, limits.SEED[1])
        loop.submit(GenJob(
            prompt=prompt_tokens,
            limit=max(1, min(max_tokens, n_ctx - len(prompt_tokens))),
            stop_ids=frozenset(stop_ids),
            reply=ReplyText(stops, strip_leading=messages is not None),
            sampling={
                "temperature": temperature, "top_p": top_p, "seed": seed,
                "presence_penalty": presence_penalty, "frequency_penalty": frequency_penalty,
                "grammar": choices_grammar(choices) if choices else None,  # the output is one of *choices*
            },
            sink=sink,
            cancelled=cancelled,
            t0=t0,
        ))

    def start_embed(self, sink: Any, cancelled: threading.Event, inputs: list[str]) -> None:
        """Start embedding *inputs* in the decode loop: one pooled, L2-normalized vector
        (n_embd floats) per input, to *sink* as an EmbeddingResult.

        Models that declare a pooling type are pooled by llama.cpp; models that
        declare none (most LLMs) give one vector per token, mean-pooled here. Each
        decode holds as many inputs as there are free slots, each in its own
        sequence. Setting *cancelled* stops between decodes. Raises RequestError for
        an input longer than the context window.
        """
        loop = self._loop
        if loop is None:
            raise EngineError("the engine is not loaded")
        if not self.embedding:
            raise RequestError("this worker was not started for embeddings")
        t0 = time.perf_counter()
        # tokenized as Llama.embed does (BOS/EOS as the model asks, no special parsing)
        tokens = [self._tokenize(text.encode("utf-8"), add_special=True, special=False) for text in inputs]
        limit = min(self._n_batch, self._n_ctx_slot)
        for i, t in enumerate(tokens):
            if len(t) > limit:
                raise RequestError(
                    f"input[{i}] is {len(t)} tokens, which does not fit the {limit}-token context window"
                )
            if not t:
                raise RequestError(f"input[{i}] has no tokens")
        loop.submit(EmbedJob(tokens, mean_pool=self.pooling == "none", sink=sink, cancelled=cancelled, t0=t0))

    def generate(self, *, cancelled: threading.Event | None = None, **request: Any) -> Iterator[Piece | GenerationResult]:
        """:meth:`start_generate` for a caller that waits: yields Piece events, then
        exactly one GenerationResult (the same keyword arguments)."""
        sink = _WaitingSink()
        self.start_generate(sink, cancelled if cancelled is not None else threading.Event(), **request)
        while True:
            kind, value = sink.events.get()
            if kind == "piece":
                yield value
            elif kind == "finish":
                yield value
                return
            else:
                raise value

    def embed(self, inputs: list[str], cancelled: threading.Event | None = None) -> EmbeddingResult:
        """:meth:`start_embed` for a caller that waits."""
        sink = _WaitingSink()
        self.start_embed(sink, cancelled if cancelled is not None else threading.Event(), inputs)
        kind, value = sink.events.get()
        if kind == "fail":
            raise value
        return value

    def render_chat(self, messages: list[dict[str, str]]) -> chat.ChatPrompt:
        """The prompt for chat *messages* in this model's chat format."""
        if self._chat is None:
            raise EngineError("the engine is not loaded")
        try:
            return self._chat.render(messages)
        except chat.ChatError as exc:
            raise RequestError(str(exc)) from None

    # ---- helpers -------------------------------------------------------------------

    def _tokenize(self, text: bytes, add_special: bool, special: bool) -> list[int]:
        lib = self._lib
        room = len(text) + 8
        buf = (lib.llama_token * room)()
        n = lib.llama_tokenize(self._vocab, text, len(text), buf, room, add_special, special)
        if n < 0:
            room = -n
            buf = (lib.llama_token * room)()
            n = lib.llama_tokenize(self._vocab, text, len(text), buf, room, add_special, special)
            if n < 0:
                raise EngineError(f"llama.cpp could not tokenize the text ({n})")
        return list(buf[:n])

    def _prompt_tokens(self, prompt: str, is_chat: bool = False) -> list[int]:
        """Tokenize like create_completion: BOS when the model asks for it, special
        tokens parsed; an empty prompt becomes just BOS. A chat prompt (*is_chat*) that a
        template already started with BOS does not get a second one."""
        bos = self._bos
        tokens = self._tokenize(prompt.encode("utf-8"), add_special=False, special=True) if prompt else []
        want = self._add_bos and not (is_chat and tokens[:1] == [bos])
        if bos != -1 and (want or not tokens):
            tokens = [bos] + tokens
        if not tokens:
            raise RequestError("the prompt is empty and the model has no BOS token")
        return tokens

    def _token_text(self, token: int) -> str:
        """A token's text as the vocabulary spells it ("<s>", "<|im_end|>"); "" for -1."""
        if token < 0:
            return ""
        raw = self._lib.llama_vocab_get_text(self._vocab, token)
        return raw.decode("utf-8", errors="replace") if raw else ""

    def _special_token(self, text: str) -> int | None:
        """The id of *text* when it is one special token that renders as nothing
        (so it can only end generation as a token, never as a text match)."""
        ids = self._tokenize(text.encode("utf-8"), add_special=False, special=True)
        if len(ids) == 1 and _piece(self._lib, self._vocab, ids[0], ctypes.create_string_buffer(64))[0] == b"":
            return ids[0]
        return None

    def _token_to_piece(self, token: int) -> bytes:
        """The bytes of one token (special tokens render as nothing, as in
        create_completion); may be part of a multi-byte UTF-8 character. Called on
        the decode loop's thread only, once loaded."""
        piece, self._piece_buf = _piece(self._lib, self._vocab, token, self._piece_buf)
        return piece

    def _is_eog(self, token: int) -> bool:
        return bool(self._lib.llama_vocab_is_eog(self._vocab, token))


_CLOSE_TIMEOUT_S = 10.0


def _piece(lib: Any, vocab: Any, token: int, buf: Any) -> tuple[bytes, Any]:
    """A token's bytes, and the buffer used (a larger one when *buf* was too small)."""
    n = lib.llama_token_to_piece(vocab, token, buf, len(buf), 0, False)
    if n < 0:  # buffer too small: -n is the size needed
        buf = ctypes.create_string_buffer(-n + 16)
        n = lib.llama_token_to_piece(vocab, token, buf, len(buf), 0, False)
    return buf.raw[: max(n, 0)], buf


class _WaitingSink:
    """A sink for a caller on another thread: the loop's calls, queued."""

    def __init__(self) -> None:
        self.events: queue.SimpleQueue = queue.SimpleQueue()

    def piece(self, text: str, n: int) -> None:
        self.events.put(("piece", Piece(text, n)))

    def finish(self, result: Any) -> None:
        self.events.put(("finish", result))

    def fail(self, exc: BaseException) -> None:
        self.events.put(("fail", exc))


__all__ = [
    "import_backend",
    "EmbeddingResult",
    "Engine",
    "EngineError",
    "GenerationResult",
    "ModelFileError",
    "Piece",
    "RequestError",
]
