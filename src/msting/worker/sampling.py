"""Per-sequence sampler chains, in C (llama.cpp's ``llama_sampler_chain``).

No ``llama_cpp`` import: the engine passes its module in. The chain is the one
``llama_cpp.Llama.create_completion`` builds with its defaults, so a seeded request
samples what it did before: the presence/frequency penalties over the last 64 sampled
tokens, then greedy at temperature 0, else top-k 40, top-p, min-p 0.05, the
temperature and a seeded draw. Each sequence has its own chain, so its seed and its
penalties' token history never depend on the other sequences in the batch.

A request with `choices` (the router model's route names) gets a grammar sampler at
the front of its chain (:func:`choices_grammar`): every token it may sample keeps the
text on the way to one of the choices, and once one is complete only an end of
generation is left.
"""

from __future__ import annotations

from typing import Any

TOP_K = 40
MIN_P = 0.05
PENALTY_LAST_N = 64


def sampler_chain(
    lib: Any,
    n_vocab: int,
    temperature: float,
    top_p: float,
    presence_penalty: float,
    frequency_penalty: float,
    seed: int,
    grammar: str | None = None,
    ctx: Any = None,
) -> Any:
    """A new chain (free it with ``lib.llama_sampler_free``); a `grammar` (GBNF, rule
    ``root``) needs the context `ctx` whose model's vocabulary it is matched against."""
    chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
    add = lib.llama_sampler_chain_add
    if grammar is not None:
        constrained = lib.llama_sampler_init_grammar(lib.llama_model_get_vocab(lib.llama_get_model(ctx)),
                                                     grammar.encode("utf-8"), b"root")
        if not constrained:
            lib.llama_sampler_free(chain)
            raise ValueError("the grammar of the choices does not parse")
        add(chain, constrained)
    add(chain, lib.llama_sampler_init_penalties(n_vocab, PENALTY_LAST_N, 1.0, frequency_penalty, presence_penalty))
    if temperature == 0.0:
        add(chain, lib.llama_sampler_init_greedy())
    else:
        add(chain, lib.llama_sampler_init_top_k(TOP_K))
        add(chain, lib.llama_sampler_init_top_p(top_p, 1))
        add(chain, lib.llama_sampler_init_min_p(MIN_P, 1))
        add(chain, lib.llama_sampler_init_temp(temperature))
        add(chain, lib.llama_sampler_init_dist(seed))
    return chain


def choices_grammar(choices: list[str]) -> str:
    """A GBNF grammar whose only sentences are `choices`."""
    return "root ::= " + " | ".join(_literal(c) for c in choices)


def _literal(text: str) -> str:
    out = []
    for ch in text:
        if ch.isascii() and (ch.isalnum() or ch in " _-.:"):
            out.append(ch)
        elif ord(ch) <= 0xFFFF:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return '"' + "".join(out) + '"'
