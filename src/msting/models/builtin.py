"""The built-in offline default model ``msting-tiny``.

A tiny Llama-architecture GGUF written on demand with the ``gguf`` package: random
(but deterministic) weights and a real SentencePiece ("llama") tokenizer made of
control tokens, the 256 byte-fallback tokens and a few hundred common English word
pieces. It says nothing sensible, but llama.cpp loads it in milliseconds and
generates from it, so msting works offline out of the box and tests need no
download.

``gguf`` and ``numpy`` are imported only inside :func:`write_tiny_model`.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

from msting.models.gguf_file import ModelFileError, read_gguf_info

BUILTIN_SOURCE = "builtin:tiny"
BUILTIN_NAME = "msting-tiny"
BUILTIN_VERSION = 1
BUILTIN_FILENAME = f"{BUILTIN_NAME}.gguf"
VERSION_KEY = "msting.builtin_version"

# Architecture (kept small: about 1 MB of F32 weights).
N_VOCAB = 640
N_EMBD = 64
N_LAYER = 4
N_HEAD = 4
N_HEAD_KV = 4
N_FF = 176
N_CTX_TRAIN = 2048
RMS_EPS = 1e-5
ROPE_FREQ_BASE = 10000.0
SEED = 20240611

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# SentencePiece token types (llama.cpp's llama_token_type)
_NORMAL, _UNKNOWN, _CONTROL, _BYTE = 1, 2, 3, 6
_SPACE = "\u2581"  # "▁", SentencePiece's word-start marker

_BASE_CHARS = (
    _SPACE
    + "etaoinshrdlcumwfgypbvkjxqz"
    + "ETAOINSHRDLCUMWFGYPBVKJXQZ"
    + "0123456789"
    + ".,!?'\"-:;()"
)

# Common English words, most frequent first. Each word enters the vocabulary with
# every "▁"-prefixed prefix of it ("▁t", "▁th", "▁the"), so llama.cpp's SentencePiece
# merge loop can always reach the whole word piece.
_WORDS = """
the of and to a in is it you that he was for on are with as I his they be at one
have this from or had by not word but what some we can out other were all there
when up use your how said an each she which do their time if will way about many
then them write would like so these her long make thing see him two has look more
day could go come did number sound no most people my over know water than call
first who may down side been now find any new work part take get place made live
where after back little only round man year came show every good me give our under
name very through just form sentence great think say help low line before turn
cause much mean move right boy old too same tell does set three want air well also
play small end put home read hand large add even land here must big high such
follow act why ask men change went light kind off need house try us again animal
point mother world near build self earth father head stand own page should country
found answer school grow study still learn plant cover food sun four between state
keep eye never last let thought city tree cross farm hard start might story saw far
sea draw left late run while close night real life few north open seem together
next white children begin got walk example paper group always music those both mark
often letter until river car feet care second book carry took eat room friend began
idea fish mountain stop once base hear horse cut sure watch color face wood main
enough girl young ready above ever red list though feel talk bird soon body dog
family leave song door black short class wind question happen ship area half rock
order fire south problem piece told knew pass since top whole king space heard best
hour better true during hundred five remember step early hold west ground reach fast
sing listen six table travel less morning hello msting
""".split()


def _build_vocab() -> tuple[list[str], list[float], list[int]]:
    """Deterministic SentencePiece vocabulary: (tokens, scores, token types)."""
    tokens: list[str] = ["<unk>", "<s>", "</s>"]
    scores: list[float] = [0.0, 0.0, 0.0]
    types: list[int] = [_UNKNOWN, _CONTROL, _CONTROL]
    for b in range(256):
        tokens.append(f"<0x{b:02X}>")
        scores.append(0.0)
        types.append(_BYTE)
    for special in ("<|im_start|>", "<|im_end|>"):
        tokens.append(special)
        scores.append(0.0)
        types.append(_CONTROL)

    seen = set(tokens)
    pieces: list[str] = []

    def add(piece: str) -> None:
        seen.add(piece)
        pieces.append(piece)

    for ch in _BASE_CHARS:
        if ch not in seen:
            add(ch)
    room = N_VOCAB - len(tokens) - len(pieces)
    for word in _WORDS:
        full = _SPACE + word
        new = [full[:k] for k in range(2, len(full) + 1) if full[:k] not in seen]
        if len(new) > room:
            continue
        for piece in new:
            add(piece)
        room -= len(new)
        if room == 0:
            break
    # fill any remaining slots with "▁X" capitals (one slot each)
    for ch in "ABCDEFGHIJKLMNOPQRSTUVWXYZ":
        if room == 0:
            break
        piece = _SPACE + ch
        if piece not in seen:
            add(piece)
            room -= 1
    if room != 0:  # pragma: no cover - the word list is long enough
        raise RuntimeError(f"built-in vocabulary is {room} pieces short")

    # SentencePiece scores are log-probability-like: earlier (more frequent) pieces
    # score higher, and llama.cpp merges the highest-scoring pair first.
    for i, piece in enumerate(pieces):
        tokens.append(piece)
        scores.append(-float(i))
        types.append(_NORMAL)
    return tokens, scores, types


def write_tiny_model(
    path: Path,
    *,
    n_embd: int = N_EMBD,
    n_layer: int = N_LAYER,
    n_head: int = N_HEAD,
    n_head_kv: int = N_HEAD_KV,
    n_ff: int = N_FF,
    name: str = BUILTIN_NAME,
    description: str = "msting built-in offline model (random weights)",
    seed: int = SEED,
) -> None:
    """Write the msting-tiny GGUF to *path* (deterministic: same bytes every time).

    The dimensions are parameters so that the same recipe (vocabulary, tokenizer,
    deterministic weights) can write a larger model, e.g. for benchmarks where the
    engine's own work dominates; with the defaults the output is msting-tiny, byte
    for byte. Weight scales shrink with ``1/sqrt(n_embd)`` relative to the default
    width, so activations stay in the same range."""
    import gguf
    import numpy as np

    path = Path(path)
    tokens, scores, types = _build_vocab()
    assert len(tokens) == N_VOCAB
    if n_embd % n_head or n_head % n_head_kv:
        raise ValueError(f"n_embd ({n_embd}) must be a multiple of n_head ({n_head}), n_head of n_head_kv ({n_head_kv})")
    width = math.sqrt(N_EMBD / n_embd)  # 1.0 for the default width: same bytes
    w = 0.08 * width
    first_normal = types.index(_NORMAL)

    rng = np.random.default_rng(seed)

    def normal(shape: tuple[int, ...], scale: float) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    # numpy shapes are (rows, cols); GGUF stores them reversed (ne0 = cols).
    tensors: list[tuple[str, np.ndarray]] = []
    tensors.append(("token_embd.weight", normal((N_VOCAB, n_embd), 0.5)))
    for i in range(n_layer):
        p = f"blk.{i}."
        tensors += [
            (p + "attn_norm.weight", np.ones(n_embd, dtype=np.float32)),
            (p + "attn_q.weight", normal((n_embd, n_embd), w)),
            (p + "attn_k.weight", normal((n_embd * n_head_kv // n_head, n_embd), w)),
            (p + "attn_v.weight", normal((n_embd * n_head_kv // n_head, n_embd), w)),
            (p + "attn_output.weight", normal((n_embd, n_embd), w)),
            (p + "ffn_norm.weight", np.ones(n_embd, dtype=np.float32)),
            (p + "ffn_gate.weight", normal((n_ff, n_embd), w)),
            (p + "ffn_up.weight", normal((n_ff, n_embd), w)),
            (p + "ffn_down.weight", normal((n_embd, n_ff), w)),
        ]
    tensors.append(("output_norm.weight", np.ones(n_embd, dtype=np.float32)))
    output = normal((N_VOCAB, n_embd), 0.25 * width)
    # Predict only whole words and a little punctuation: a zero row gives a token
    # logit 0 while the best of the others score well above it, so greedy and top-k
    # sampling skip it. No control or byte tokens (lone bytes would make invalid
    # UTF-8, an early EOS would make output lengths unpredictable), no word prefixes
    # ("▁th"), so the output reads as word salad rather than fragments.
    speakable = {_SPACE + word for word in _WORDS} | {".", ","}
    for i, tok in enumerate(tokens):
        if i < first_normal or tok not in speakable:
            output[i] = 0.0
    tensors.append(("output.weight", output))

    writer = gguf.GGUFWriter(str(path), "llama")
    try:
        writer.add_name(name)
        writer.add_description(description)
        writer.add_uint32(VERSION_KEY, BUILTIN_VERSION)
        writer.add_file_type(gguf.LlamaFileType.ALL_F32)
        writer.add_context_length(N_CTX_TRAIN)
        writer.add_embedding_length(n_embd)
        writer.add_block_count(n_layer)
        writer.add_feed_forward_length(n_ff)
        writer.add_rope_dimension_count(n_embd // n_head)
        writer.add_rope_freq_base(ROPE_FREQ_BASE)
        writer.add_head_count(n_head)
        writer.add_head_count_kv(n_head_kv)
        writer.add_layer_norm_rms_eps(RMS_EPS)
        writer.add_vocab_size(N_VOCAB)

        writer.add_tokenizer_model("llama")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        writer.add_unk_token_id(0)
        writer.add_bos_token_id(1)
        writer.add_eos_token_id(2)
        writer.add_add_bos_token(True)
        writer.add_add_eos_token(False)
        writer.add_chat_template(CHAT_TEMPLATE)

        for name, data in tensors:
            writer.add_tensor(name, data)

        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


def _installed_version(path: Path) -> int | None:
    try:
        info = read_gguf_info(path)
    except ModelFileError:
        return None
    value = info.metadata.get(VERSION_KEY)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def ensure_builtin_model(models_dir: Path) -> Path:
    """Return ``models_dir/msting-tiny.gguf``, (re)writing it atomically when it is
    missing, unreadable, or from another BUILTIN_VERSION."""
    models_dir = Path(models_dir)
    target = models_dir / BUILTIN_FILENAME
    if target.is_file() and _installed_version(target) == BUILTIN_VERSION:
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{BUILTIN_NAME}.", suffix=".tmp", dir=models_dir)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write_tiny_model(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise
    return target
