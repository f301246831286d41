"""Embedding helpers for the engine: llama.cpp pooling types and the pooled,
unit-length vector that goes on the wire.

No ``llama_cpp`` here; ``numpy`` is imported inside :func:`unit_vector` (the worker
has it loaded by then, and importing this module stays cheap).
"""

from __future__ import annotations

from typing import Any

# what an embedding worker can serve ("rank" is a reranker's relevance score)
EMBEDDING_POOLINGS = ("none", "mean", "cls", "last")


def unit_vector(raw: Any, mean_pool: bool) -> list[float]:
    """Mean-pool per-token vectors (when asked), scale to unit length (L2, as
    OpenAI's embeddings are) and return floats that keep float32 precision in at
    most 9 significant digits (the embeddings frame stays about half as large).

    Raises ValueError for a vector that is not finite.
    """
    import numpy as np

    v = np.asarray(raw, dtype=np.float64)
    if mean_pool:
        v = v.mean(axis=0)
    if v.ndim != 1 or not np.all(np.isfinite(v)):
        raise ValueError(f"llama.cpp returned an unusable embedding (shape {v.shape})")
    norm = float(np.linalg.norm(v))
    if norm > 0.0:
        v = v / norm
    return [float(f"{x:.9g}") for x in v.tolist()]
