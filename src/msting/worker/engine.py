"""The inference engine: the only module that imports ``llama_cpp``.

``llama_cpp`` is imported inside the methods, so importing this module (for its
types) stays cheap. One :class:`Engine` wraps one ``llama_cpp.Llama``.

``Engine.generate`` yields :class:`Piece` events (text plus how many tokens it
covers) and, last, one :class:`GenerationResult`; it takes a raw prompt or chat
messages (rendered by :mod:`msting.worker.chat`). ``Engine.embed`` returns one
pooled, unit-length vector per input (:class:`EmbeddingResult`).
"""

from __future__ import annotations

import codecs
import collections
import ctypes
import os
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from msting.api import limits
from msting.models.gguf_file import ModelFileError, read_gguf_info
from msting.models.gguf_file import POOLING_NAMES
from msting.worker import chat, pooling
from msting.worker.params import DEFAULT_N_CTX


class EngineError(Exception):
    """llama.cpp failed to load the model or to run it."""


class RequestError(EngineError):
    """The request cannot be served by this model (e.g. the prompt is too long)."""


@dataclass(frozen=True)
class Piece:
    text: str
    n: int  # tokens this piece covers (may be 0 when text was held back earlier)


@dataclass(frozen=True)
class GenerationResult:
    finish_reason: str  # "stop" | "length" | "cancelled"
    prompt_tokens: int
    completion_tokens: int
    prompt_ms: float
    predicted_ms: float

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


# ---- llama.cpp log capture -----------------------------------------------------------

_LOG_LINES: collections.deque[str] = collections.deque(maxlen=40)
_LOG_LOCK = threading.Lock()
_log_total = 0  # lines ever captured (the deque only keeps the last 40)
_log_callback: Any = None  # keep the ctypes callback alive
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
    """Import llama_cpp (about 0.2 s: numpy, jinja2, the shared library) and route
    its log. Idempotent. The worker calls it before timing the model load."""
    import llama_cpp

    _install_log_capture(llama_cpp)
    return llama_cpp


# ---- engine ---------------------------------------------------------------------------


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
    ) -> None:
        self.model_path = str(model_path)
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.n_threads_batch = n_threads_batch
        self.n_gpu_layers = n_gpu_layers
        self.seed = seed
        self.embedding = embedding
        self.chat_format = chat_format  # the spec's override, or None
        self.info = None
        self.metadata: dict[str, Any] | None = None
        self.pooling: str | None = None  # embedding workers: llama.cpp's pooling type
        self._llm: Any = None
        self._vocab: Any = None
        self._lib: Any = None  # the llama_cpp module, once loaded
        self._chat: chat.ChatFormat | None = None
        self._add_bos = True
        self._piece_buf = ctypes.create_string_buffer(64)
        self._rng = random.Random(seed) if seed is not None else random.Random()

    @property
    def serves_generate(self) -> bool:
        """False for an embedding worker on a model that declares a pooling type (a
        dedicated embedding model such as BERT: it may have no output head)."""
        return not self.embedding or self.pooling == "none"

    def load(self) -> dict[str, Any]:
        """Validate the file, load it into llama.cpp, return the model metadata.

        Raises ModelFileError for a missing/unreadable/corrupt file and EngineError
        when llama.cpp refuses a file that looked valid, for an unknown chat_format
        and for a reranker loaded for embeddings.
        """
        info = read_gguf_info(self.model_path)  # ModelFileError with a clear message
        self.info = info
        llama_cpp = import_backend()
        import llama_cpp.llama_chat_format as chat_formats

        names = chat.valid_names(chat_formats)
        if self.chat_format is not None and self.chat_format not in names:  # before the load
            raise EngineError(
                f"unknown chat_format {self.chat_format!r}; valid names: {', '.join(names)}"
            )
        with _LOG_LOCK:
            mark = _log_total
        kwargs: dict[str, Any] = {
            "n_ctx": self.n_ctx,
            "n_gpu_layers": self.n_gpu_layers,
            "verbose": False,
        }
        if self.n_threads:
            kwargs["n_threads"] = self.n_threads
        if self.n_threads_batch:
            kwargs["n_threads_batch"] = self.n_threads_batch
        if self.seed is not None:
            kwargs["seed"] = self.seed
        if self.embedding:
            # an input is embedded in one micro-batch (llama.cpp requires it for
            # non-causal models), so any input that fits the context can be embedded
            kwargs.update(embedding=True, n_batch=self.n_ctx, n_ubatch=self.n_ctx)
        try:
            llm = llama_cpp.Llama(self.model_path, **kwargs)
        except Exception as exc:
            detail = "; ".join(_recent_log(mark)[-5:])
            msg = f"llama.cpp could not load {self.model_path}: {exc}"
            if detail:
                msg += f" ({detail})"
            raise EngineError(msg) from None
        self._llm = llm
        self._lib = llama_cpp
        self._vocab = llama_cpp.llama_model_get_vocab(llm.model)
        self._add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self._vocab))
        if self.embedding:
            kind = int(llama_cpp.llama_pooling_type(llm.ctx))
            self.pooling = POOLING_NAMES.get(kind, f"type {kind}")
            if self.pooling not in pooling.EMBEDDING_POOLINGS:
                self.close()
                raise EngineError(
                    f"{self.model_path} declares {self.pooling!r} pooling (a reranker?); "
                    "only none, mean, cls and last pooling can serve embeddings"
                )
        try:
            self._chat = chat.select(
                chat_formats,
                self.chat_format,
                info.chat_template,
                bos_token=self._token_text(llm.token_bos()),
                eos_token=self._token_text(llm.token_eos()),
                eos_token_id=llm.token_eos(),
            )
        except ValueError as exc:
            self.close()
            raise EngineError(str(exc)) from None
        gpu = self.n_gpu_layers != 0 and bool(llama_cpp.llama_supports_gpu_offload())
        self.metadata = {
            "path": str(Path(self.model_path).resolve()),
            "arch": info.arch,
            "n_ctx": llm.n_ctx(),
            "n_ctx_train": int(llama_cpp.llama_model_n_ctx_train(llm.model)),
            "n_vocab": llm.n_vocab(),
            "n_embd": llm.n_embd(),
            "n_params": int(llama_cpp.llama_model_n_params(llm.model)),
            "size_bytes": info.size_bytes,
            "chat_template": info.chat_template,
            "chat_format": self._chat.name,
            "backend": "gpu" if gpu else "cpu",
            "embedding": self.embedding,
            "pooling": self.pooling,
        }
        return dict(self.metadata)

    def close(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            try:
                llm.close()
            except Exception:
                pass

    def generate(
        self,
        prompt: str | None = None,
        max_tokens: int = limits.DEFAULT_MAX_TOKENS,
        temperature: float = limits.DEFAULT_TEMPERATURE,
        top_p: float = limits.DEFAULT_TOP_P,
        stop: list[str] | str | None = None,
        seed: int | None = None,
        cancelled: threading.Event | None = None,
        messages: list[dict[str, str]] | None = None,
        presence_penalty: float = limits.DEFAULT_PRESENCE_PENALTY,
        frequency_penalty: float = limits.DEFAULT_FREQUENCY_PENALTY,
    ) -> Iterator[Piece | GenerationResult]:
        """Stream a completion of *prompt*, or the assistant's reply to chat *messages*.

        Yields Piece events as text becomes available, then exactly one
        GenerationResult. Setting *cancelled* stops generation before the next token
        (finish_reason "cancelled"). Text that could be the start of a stop sequence
        is held back until it is known not to be; the stop sequence itself is not
        returned. Raises RequestError for requests the model cannot serve (prompt
        longer than the context window, messages the chat template rejects).

        Chat *messages* are rendered with the model's chat format (see
        msting.worker.chat); its stop strings join *stop*, those that are single
        special tokens (``<|im_end|>``) end generation as tokens, and the reply's
        leading whitespace (the space after "Assistant:", "[/INST]") is dropped.

        Sampling matches ``Llama.create_completion`` (top_k 40, min_p 0.05,
        repeat_penalty 1.0, the same BOS/special-token handling), but the token loop
        is driven here on ``Llama.generate`` with incremental detokenization:
        ``create_completion(stream=True)`` re-detokenizes the whole completion for
        every token (quadratic), which halves throughput at 100 tokens on a small
        model and is 3x slower at 1000, and it does not expose exact token counts
        while streaming.
        """
        llm = self._llm
        if llm is None:
            raise EngineError("the engine is not loaded")
        if (prompt is None) == (messages is None):
            raise RequestError("exactly one of prompt and messages is required")
        if cancelled is None:
            cancelled = threading.Event()
        stops = [stop] if isinstance(stop, str) and stop else [s for s in (stop or []) if s]

        t0 = time.perf_counter()
        stop_ids: set[int] = set()
        strip_leading = messages is not None
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
        n_ctx = llm.n_ctx()
        if len(prompt_tokens) >= n_ctx:
            raise RequestError(
                f"the prompt is {len(prompt_tokens)} tokens, which does not fit the "
                f"{n_ctx}-token context window"
            )
        limit = max(1, min(max_tokens, n_ctx - len(prompt_tokens)))
        # no seed: a random one of the fixed seeds (llama.cpp would take 0xFFFFFFFF as its own random pick)
        llm.set_seed(seed if seed is not None else self._rng.randint(0, limits.SEED[1]))
        if self.embedding:
            self._lib.llama_set_embeddings(llm.ctx, False)  # logits only, as a plain worker

        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        to_piece = self._token_to_piece
        is_eog = self._is_eog
        held = ""  # decoded text that may be the start of a stop sequence
        unreported = 0  # tokens not yet attributed to a yielded piece
        completion = 0
        finish = "length"
        stopped_by_sequence = False
        t_first: float | None = None
        tokens = llm.generate(
            prompt_tokens,
            top_k=40,
            top_p=top_p,
            min_p=0.05,
            typical_p=1.0,
            temp=temperature,
            repeat_penalty=1.0,
            presence_penalty=presence_penalty,
            frequency_penalty=frequency_penalty,
        )
        try:
            if cancelled.is_set():
                finish = "cancelled"
            else:
                for token in tokens:
                    if t_first is None:
                        t_first = time.perf_counter()
                    if is_eog(token) or token in stop_ids:
                        finish = "stop"
                        break
                    completion += 1
                    unreported += 1
                    text = held + decoder.decode(to_piece(token))
                    if strip_leading:
                        text = text.lstrip()
                        strip_leading = not text
                    keep = 0
                    if stops:
                        cut = _find_stop(text, stops)
                        if cut is not None:
                            if cut:
                                yield Piece(text[:cut], unreported)
                                unreported = 0
                            held = ""
                            finish = "stop"
                            stopped_by_sequence = True
                            break
                        keep = _stop_prefix_len(text, stops)
                    if keep:
                        emit, held = text[:-keep], text[-keep:]
                    else:
                        emit, held = text, ""
                    if emit:
                        yield Piece(emit, unreported)
                        unreported = 0
                    if completion >= limit:
                        finish = "length"
                        break
                    if cancelled.is_set():
                        finish = "cancelled"
                        break
        finally:
            tokens.close()
        t_end = time.perf_counter()

        if not stopped_by_sequence:
            # held-back text (it was not a stop after all) and an incomplete UTF-8 tail
            rest = held + decoder.decode(b"", final=True)
            if strip_leading:
                rest = rest.lstrip()
            cut = _find_stop(rest, stops) if stops and rest else None
            if cut is not None:
                rest, finish = rest[:cut], "stop"
            if rest or unreported:
                yield Piece(rest, unreported)

        if t_first is None:
            t_first = t_end
        yield GenerationResult(
            finish_reason=finish,
            prompt_tokens=len(prompt_tokens),
            completion_tokens=completion,
            prompt_ms=(t_first - t0) * 1000.0,
            predicted_ms=max(t_end - t_first, 0.0) * 1000.0,
        )

    def render_chat(self, messages: list[dict[str, str]]) -> chat.ChatPrompt:
        """The prompt for chat *messages* in this model's chat format."""
        if self._chat is None:
            raise EngineError("the engine is not loaded")
        try:
            return self._chat.render(messages)
        except chat.ChatError as exc:
            raise RequestError(str(exc)) from None

    def embed(
        self, inputs: list[str], cancelled: threading.Event | None = None
    ) -> EmbeddingResult:
        """One pooled, L2-normalized vector (n_embd floats) per input.

        Models that declare a pooling type are pooled by llama.cpp, several inputs
        per decode. Models that declare none (most LLMs) give one vector per token;
        they are mean-pooled here, one input per decode (llama-cpp-python's
        ``Llama.embed`` misplaces the token vectors of every input but the first
        when it batches several such inputs). Setting *cancelled* stops between
        decodes. Raises RequestError for an input longer than the context window.
        """
        llm = self._llm
        if llm is None:
            raise EngineError("the engine is not loaded")
        if not self.embedding:
            raise RequestError("this worker was not started for embeddings")
        if cancelled is None:
            cancelled = threading.Event()
        t0 = time.perf_counter()
        # tokenized as Llama.embed does (BOS/EOS as the model asks, no special parsing)
        counts = [len(llm.tokenize(text.encode("utf-8"))) for text in inputs]
        limit = llm.n_batch
        for i, n in enumerate(counts):
            if n > limit:
                raise RequestError(
                    f"input[{i}] is {n} tokens, which does not fit the {limit}-token context window"
                )
        self._lib.llama_set_embeddings(llm.ctx, True)
        per_token = self.pooling == "none"
        vectors: list[list[float]] = []
        done_tokens = 0
        groups = pooling.decode_groups(
            counts, llm.n_batch, llm.context_params.n_seq_max, one_each=per_token
        )
        for group in groups:
            if cancelled.is_set():
                return EmbeddingResult([], done_tokens, (time.perf_counter() - t0) * 1000.0, True)
            for raw in llm.embed([inputs[i] for i in group]):
                try:
                    vectors.append(pooling.unit_vector(raw, mean_pool=per_token))
                except ValueError as exc:
                    raise EngineError(str(exc)) from None
            done_tokens += sum(counts[i] for i in group)
        return EmbeddingResult(vectors, done_tokens, (time.perf_counter() - t0) * 1000.0)

    # ---- helpers -------------------------------------------------------------------

    def _prompt_tokens(self, prompt: str, is_chat: bool = False) -> list[int]:
        """Tokenize like create_completion: BOS when the model asks for it, special
        tokens parsed; an empty prompt becomes just BOS. A chat prompt (*is_chat*) that a
        template already started with BOS does not get a second one."""
        llm = self._llm
        bos = llm.token_bos()
        tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True) if prompt else []
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
        ids = self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        if len(ids) == 1 and self._token_to_piece(ids[0]) == b"":
            return ids[0]
        return None

    def _token_to_piece(self, token: int) -> bytes:
        """The bytes of one token (special tokens render as nothing, as in
        create_completion); may be part of a multi-byte UTF-8 character."""
        buf = self._piece_buf
        n = self._lib.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        if n < 0:  # buffer too small: -n is the size needed
            self._piece_buf = buf = ctypes.create_string_buffer(-n + 16)
            n = self._lib.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        return buf.raw[: max(n, 0)]

    def _is_eog(self, token: int) -> bool:
        return bool(self._lib.llama_vocab_is_eog(self._vocab, token))


def _find_stop(text: str, stops: list[str]) -> int | None:
    best: int | None = None
    for s in stops:
        i = text.find(s)
        if i != -1 and (best is None or i < best):
            best = i
    return best


def _stop_prefix_len(text: str, stops: list[str]) -> int:
    """Length of the longest suffix of *text* that is a proper prefix of a stop."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


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
