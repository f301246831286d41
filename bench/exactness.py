"""How far llama.cpp's numbers move with the shape of a batch: the logits of one token
computed in a batch of one and in a batch of several, and of a prompt's last token with
the prompt decoded whole or in chunks. Not part of `bench/run.py`; it explains why a
temperature-0 reply batched with others can differ from the same request alone.

    .venv/bin/python bench/exactness.py [--model PATH] [--threads N] [--flash-attn on|off]

It uses llama-cpp-python's low-level API with the worker's context settings (a
non-unified KV cache, one stream per sequence) and prints, per case, the largest
absolute logit difference and whether the logits are bitwise equal. Run it with a
llama-cpp-python built with other CMake options (`CMAKE_ARGS=-DGGML_LLAMAFILE=OFF`)
to compare builds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, help="a GGUF (default: the bench's generated 180M F16 model)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--flash-attn", choices=["on", "off"], default="on")
    args = ap.parse_args(argv)
    import llama_cpp as L

    if args.model is None:
        from harness import realistic_model
        args.model = realistic_model()
    L.llama_backend_init()
    model = L.llama_model_load_from_file(str(args.model).encode(), L.llama_model_default_params())
    cp = L.llama_context_default_params()
    cp.n_ctx, cp.n_seq_max, cp.kv_unified = 512 * 2, 2, False
    cp.n_batch, cp.n_ubatch = 514, 512
    cp.n_threads = cp.n_threads_batch = args.threads
    cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_ENABLED if args.flash_attn == "on" else L.LLAMA_FLASH_ATTN_TYPE_DISABLED
    ctx = L.llama_init_from_model(model, cp)
    mem = L.llama_get_memory(ctx)
    vocab = L.llama_model_get_vocab(model)
    n_vocab = L.llama_vocab_n_tokens(vocab)
    batch = L.llama_batch_init(514, 0, 2)

    def tokens(text: str, n: int) -> list[int]:
        raw = text.encode()
        buf = (L.llama_token * 8192)()
        got = L.llama_tokenize(vocab, raw, len(raw), buf, 8192, True, False)
        return list(buf[:got])[:n]

    def decode(items: list[tuple[int, int, int, bool]]) -> None:  # (token, position, sequence, logits)
        for i, (t, p, s, out) in enumerate(items):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.seq_id[i][0], batch.logits[i] = t, p, 1, s, out
        batch.n_tokens = len(items)
        if L.llama_decode(ctx, batch) != 0:
            raise SystemExit("llama_decode failed")

    def logits(i: int) -> np.ndarray:
        return np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, i), shape=(n_vocab,)).copy()

    def prompt_in(chunks: list[int], prompt: list[int], seq: int = 0) -> np.ndarray:
        L.llama_memory_seq_rm(mem, seq, -1, -1)
        bounds = [0, *chunks, len(prompt)]
        for a, b in zip(bounds, bounds[1:]):
            decode([(prompt[p], p, seq, p == len(prompt) - 1) for p in range(a, b)])
        return logits(len(prompt) - 1 - bounds[-2])

    story = "Once upon a time, there was a little girl who liked to play in the park. " * 12
    short, long = tokens("Once upon a time", 64), tokens(story, 200)
    results = {}

    def case(name: str, a: np.ndarray, b: np.ndarray) -> None:
        results[name] = {"max_abs_logit_diff": float(np.abs(a - b).max()), "bitwise_equal": bool((a == b).all())}

    whole = prompt_in([], short)
    case(f"a prompt's last token alone in its batch vs among the prompt's ({len(short)} tokens)",
         prompt_in([len(short) - 1], short), whole)
    # the next token of sequence 0, in a batch of its own and beside sequence 1's
    prompt_in([], short, seq=1)
    prompt_in([], short, seq=0)
    decode([(5, len(short), 0, True)])
    alone = logits(0)
    L.llama_memory_seq_rm(mem, 0, len(short), -1)
    decode([(5, len(short), 0, True), (5, len(short), 1, True)])
    case("a generated token alone vs beside another sequence's", alone, logits(0))
    whole = prompt_in([], long)
    for cut in (100, 136, 137, 150):
        case(f"a {len(long)}-token prompt whole vs in chunks of {cut} and {len(long) - cut}", prompt_in([cut], long), whole)
    info = L.llama_print_system_info().decode()
    print(json.dumps({"model": str(args.model), "threads": args.threads, "flash_attn": args.flash_attn,
                      "llamafile": "LLAMAFILE = 1" in info, "cases": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
