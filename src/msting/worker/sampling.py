"""Per-sequence sampler chains, in C (llama.cpp's ``llama_sampler_chain``).

No ``llama_cpp`` import: the engine passes its module in. The chain is the one
``llama_cpp.Llama.create_completion`` builds with its defaults, so a seeded request
samples what it did before: the presence/frequency penalties over the last 64 sampled
tokens, then greedy at temperature 0, else top-k 40, top-p, min-p 0.05, the
temperature and a seeded draw. Each sequence has its own chain, so its seed and its
penalties' token history never depend on the other sequences in the batch.
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
) -> Any:
    """A new chain (free it with ``lib.llama_sampler_free``)."""
    chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
    add = lib.llama_sampler_chain_add
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
