"""Unit tests for msting.models.memory: per-model estimates and the preflight verdict."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from msting.models.gguf_file import GGUFInfo, read_gguf_info
from msting.models.memory import (
    GENERATE_UBATCH,
    VOCAB_BYTES_PER_TOKEN,
    WORKER_PROCESS_BYTES,
    GiB,
    MemoryEstimate,
    MiB,
    estimate_model,
    format_bytes,
    kv_bytes_per_token,
    padded_ctx,
    preflight,
)


def buffers(*, n_ctx: int, n_ub: int, heads: int, embd: int, n_ff: int, vocab: int, embedding: bool) -> int:
    """The documented buffer formula, written out independently of the module."""
    n_kv = padded_ctx(n_ctx)
    attention = n_kv * n_ub * 2  # flash attention: the f16 mask, no scores matrix
    if embedding:
        logits, output = n_ub * vocab * 4, n_ub * (vocab + embd) * 4
    else:
        logits, output = vocab * 4, (vocab + embd) * 4
    activations = n_ub * 4 * (8 * embd + 2 * n_ff)
    return max(attention, logits) + output + activations + vocab * VOCAB_BYTES_PER_TOKEN


def fake_info(metadata: dict, size: int = 1000, arch: str = "llama", path: str = "/m/fake.gguf") -> GGUFInfo:
    return GGUFInfo(path=path, size_bytes=size, version=3, tensor_count=0,
                    metadata={"general.architecture": arch, **metadata})


# ----------------------------------------------------------------------- estimates


def test_builtin_model_arithmetic(builtin_model_path: Path) -> None:
    info = read_gguf_info(builtin_model_path)
    size = builtin_model_path.stat().st_size
    e = estimate_model(info, n_ctx=2048, replicas=3)
    # msting-tiny: 4 layers, 4 heads of 64 / 4 = 16, 4 KV heads: kv_dim 64
    per_token = 2 * 4 * 64 * 2  # K and V * layers * kv_dim * f16
    assert per_token == 1024 == kv_bytes_per_token(info)
    per_replica_kv = 2048 * per_token  # llama.cpp reports "KV buffer size = 2.00 MiB"
    per_replica_buffers = buffers(n_ctx=2048, n_ub=512, heads=4, embd=64, n_ff=176, vocab=640, embedding=False)
    assert e == MemoryEstimate(
        name="msting-tiny",
        path=str(builtin_model_path),
        n_ctx=2048,
        replicas=3,
        embedding=False,
        weights_bytes=size,  # once: the replicas share the mmap'd pages
        kv_bytes=3 * per_replica_kv,
        overhead_bytes=3 * (WORKER_PROCESS_BYTES + per_replica_buffers),
        buffers_bytes=3 * per_replica_buffers,
        total_bytes=size + 3 * (per_replica_kv + WORKER_PROCESS_BYTES + per_replica_buffers),
    )
    assert e.kv_bytes_per_replica == per_replica_kv == 2 * MiB
    assert e.overhead_bytes_per_replica == WORKER_PROCESS_BYTES + per_replica_buffers
    # one replica: weights and all else once
    one = estimate_model(info, 2048)
    assert one.total_bytes == size + per_replica_kv + WORKER_PROCESS_BYTES + per_replica_buffers
    assert e.total_bytes - one.total_bytes == 2 * (per_replica_kv + WORKER_PROCESS_BYTES + per_replica_buffers)


def test_stories_model_arithmetic(stories_model_path: Path) -> None:
    info = read_gguf_info(stories_model_path)
    # stories260K: 5 layers, 8 heads over 64 dims, 4 KV heads: kv_dim = 64 / 8 * 4 = 32
    assert (info.block_count, info.embedding_length, info.head_count, info.head_count_kv) == (5, 64, 8, 4)
    per_token = 2 * 5 * 32 * 2
    assert kv_bytes_per_token(info) == per_token == 640
    e = estimate_model(info, n_ctx=2048, replicas=2, name="stories")
    assert e.name == "stories"
    assert e.weights_bytes == stories_model_path.stat().st_size
    assert e.kv_bytes == 2 * 2048 * per_token  # llama.cpp: "KV buffer size = 1.25 MiB" per worker
    assert e.kv_bytes_per_replica == int(1.25 * MiB)
    b = buffers(n_ctx=2048, n_ub=512, heads=8, embd=64, n_ff=172, vocab=512, embedding=False)
    assert e.buffers_bytes == 2 * b
    assert e.total_bytes == e.weights_bytes + 2 * (2048 * per_token + WORKER_PROCESS_BYTES + b)


def test_context_is_padded_like_llama_cpp(builtin_model_path: Path) -> None:
    info = read_gguf_info(builtin_model_path)
    assert [padded_ctx(n) for n in (16, 256, 257, 1000, 2048)] == [256, 256, 512, 1024, 2048]
    e = estimate_model(info, n_ctx=1000)
    assert e.n_ctx == 1000
    assert e.kv_bytes == 1024 * 1024  # llama.cpp: n_ctx 1000 -> 1024 cells, "KV buffer size = 1.00 MiB"
    small = estimate_model(info, n_ctx=100)  # the micro-batch is capped by n_ctx
    assert small.buffers_bytes == buffers(n_ctx=100, n_ub=100, heads=4, embd=64, n_ff=176, vocab=640, embedding=False)


def test_embedding_worker_batches_the_whole_context(builtin_model_path: Path) -> None:
    info = read_gguf_info(builtin_model_path)
    e = estimate_model(info, n_ctx=2048, embedding=True)
    assert e.embedding
    assert e.kv_bytes == 2048 * 1024
    b = buffers(n_ctx=2048, n_ub=2048, heads=4, embd=64, n_ff=176, vocab=640, embedding=True)
    assert e.buffers_bytes == b
    # with flash attention llama.cpp reserves 14.2 MiB of compute buffer for this
    # worker, against 3.5 MiB for generation at the same n_ctx (83.5 and 20.9 MiB
    # without): the estimate must see that growth
    generate = estimate_model(info, n_ctx=2048)
    assert e.buffers_bytes - generate.buffers_bytes > 10 * MiB


def test_head_sizes_from_key_and_value_length() -> None:
    # Qwen3-0.6B-like: heads of 128 although 1024 / 16 = 64
    meta = {"llama.block_count": 28, "llama.embedding_length": 1024, "llama.attention.head_count": 16,
            "llama.attention.head_count_kv": 8, "llama.attention.key_length": 128,
            "llama.attention.value_length": 128, "llama.vocab_size": 1000}
    info = fake_info(meta)
    assert kv_bytes_per_token(info) == 28 * 8 * (128 + 128) * 2
    e = estimate_model(info, 512)
    assert e.kv_bytes == 512 * 28 * 8 * 256 * 2


def test_encoder_only_embedding_model_has_no_kv_cache_or_logits() -> None:
    meta = {"bert.block_count": 12, "bert.embedding_length": 768, "bert.attention.head_count": 12,
            "bert.feed_forward_length": 3072, "bert.pooling_type": 1, "bert.vocab_size": 30522}
    info = fake_info(meta, arch="bert")
    e = estimate_model(info, 512, embedding=True)
    assert e.kv_bytes == 0
    n_ub = 512
    mask = n_ub * n_ub * 2  # flash attention: no scores matrix
    activations = n_ub * 4 * (8 * 768 + 2 * 3072)
    assert e.buffers_bytes == mask + activations + 30522 * VOCAB_BYTES_PER_TOKEN


def test_missing_metadata_is_noted_not_guessed() -> None:
    e = estimate_model(fake_info({}, size=5 * MiB), 2048)
    assert e.kv_bytes == 0
    assert e.weights_bytes == 5 * MiB
    assert e.total_bytes >= 5 * MiB + WORKER_PROCESS_BYTES
    assert any("KV cache size unknown" in n for n in e.notes)
    assert any("vocabulary size unknown" in n for n in e.notes)
    assert "KV cache size unknown" in e.line()


def test_bad_arguments() -> None:
    info = fake_info({})
    with pytest.raises(ValueError):
        estimate_model(info, 0)
    with pytest.raises(ValueError):
        estimate_model(info, 512, replicas=0)


def test_format_bytes() -> None:
    assert format_bytes(int(1.25 * GiB)) == "1.2 GiB"
    assert format_bytes(172 * MiB) == "172 MiB"
    assert format_bytes(int(12.5 * MiB)) == "12.5 MiB"
    assert format_bytes(512 * 1024) == "512.0 KiB"


# ----------------------------------------------------------------------- preflight


def _estimate(name: str, path: str, weights: int, kv: int, overhead: int, replicas: int = 1) -> MemoryEstimate:
    return MemoryEstimate(name=name, path=path, n_ctx=2048, replicas=replicas, embedding=False,
                          weights_bytes=weights, kv_bytes=kv, overhead_bytes=overhead, buffers_bytes=0,
                          total_bytes=weights + kv + overhead)


def test_preflight_refuses_with_a_clear_message(builtin_model_path: Path) -> None:
    e = estimate_model(read_gguf_info(builtin_model_path), 2048, name="story")
    result = preflight([e], available_bytes=10 * MiB)
    assert not result.ok
    assert result.needed == e.total_bytes
    assert result.available == 10 * MiB and result.budget is None
    assert result.message == (
        f"needs {format_bytes(e.total_bytes)} (weights {format_bytes(e.weights_bytes)}, KV cache 2.0 MiB, "
        f"overhead {format_bytes(e.overhead_bytes)}) but only 10.0 MiB is available"
    )
    assert result.lines == (e.line(),)
    assert result.lines[0].startswith(f"story: {format_bytes(e.total_bytes)} (weights ")
    assert str(builtin_model_path) in result.lines[0]
    assert str(result) == result.message + "\n  " + result.lines[0]


def test_preflight_message_in_gib() -> None:
    e = _estimate("story", "/m/a.gguf", int(0.9 * GiB), int(0.2 * GiB), int(0.1 * GiB))
    result = preflight([e], available_bytes=int(0.8 * GiB))
    assert result.message == "needs 1.2 GiB (weights 922 MiB, KV cache 205 MiB, overhead 102 MiB) but only 819 MiB is available"


def test_preflight_budget() -> None:
    e = _estimate("story", "/m/a.gguf", 600 * MiB, 100 * MiB, 100 * MiB)
    over = preflight([e], available_bytes=64 * GiB, budget_bytes=512 * MiB)
    assert not over.ok and over.budget == 512 * MiB
    assert over.message == "needs 800 MiB (weights 600 MiB, KV cache 100 MiB, overhead 100 MiB) but the memory budget is 512 MiB"
    both = preflight([e], available_bytes=256 * MiB, budget_bytes=512 * MiB)
    assert both.message.endswith("but only 256 MiB is available and the memory budget is 512 MiB")
    fits = preflight([e], available_bytes=64 * GiB, budget_bytes=GiB)
    assert fits.ok
    assert fits.message == "needs 800 MiB (weights 600 MiB, KV cache 100 MiB, overhead 100 MiB); 64.0 GiB is available and the memory budget is 1.0 GiB"


def test_preflight_exactly_enough_is_ok() -> None:
    e = _estimate("story", "/m/a.gguf", 100, 10, 1)
    assert preflight([e], available_bytes=111, budget_bytes=111).ok
    assert not preflight([e], available_bytes=110).ok


def test_preflight_counts_a_shared_file_once() -> None:
    a = _estimate("chat", "/m/same.gguf", 500 * MiB, 10 * MiB, 70 * MiB)
    b = _estimate("embed", "/m/same.gguf", 500 * MiB, 5 * MiB, 80 * MiB)
    c = _estimate("other", "/m/other.gguf", 200 * MiB, 1 * MiB, 65 * MiB)
    result = preflight([a, b, c], available_bytes=64 * GiB)
    assert result.ok
    assert result.weights_bytes == 700 * MiB
    assert result.kv_bytes == 16 * MiB and result.overhead_bytes == 215 * MiB
    assert result.needed == 931 * MiB
    assert len(result.lines) == 4 and "counted once" in result.lines[-1]


def test_preflight_reads_available_memory_from_psutil() -> None:
    import psutil

    e = _estimate("story", "/m/a.gguf", 1, 1, 1)
    result = preflight([e])
    assert result.ok
    assert 0 < result.available <= psutil.virtual_memory().total


def test_preflight_of_nothing() -> None:
    result = preflight([], available_bytes=0)
    assert result.ok and result.needed == 0 and result.lines == ()


# ------------------------------------------------- the estimate against a real worker


def _rss(pid: int) -> int:
    total = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Rss:"):
                total += int(line.split()[1]) * 1024
    return total


@pytest.mark.e2e
@pytest.mark.skipif(not os.path.exists("/proc/self/smaps_rollup"), reason="needs Linux /proc")
@pytest.mark.parametrize("embedding", [False, True])
def test_estimate_bounds_a_real_worker(builtin_model_path: Path, embedding: bool) -> None:
    """A worker that filled its context uses less than the estimate, but not far less:
    the measured constant and the buffer formula still describe llama.cpp."""
    from msting.worker import protocol

    n_ctx = 1024
    parent, child = socket.socketpair()
    spec = {"name": "m", "path": str(builtin_model_path), "n_ctx": n_ctx, "n_threads": 1,
            "n_gpu_layers": 0, "seed": 0, "embedding": embedding}
    proc = subprocess.Popen(
        [sys.executable, "-m", "msting.worker", "--fd", str(child.fileno()), "--spec", json.dumps(spec)],
        pass_fds=[child.fileno()], stderr=subprocess.DEVNULL,
    )
    child.close()
    reader = parent.makefile("rb")
    try:
        assert protocol.decode(reader.readline())["type"] == "hello"
        ready = protocol.decode(reader.readline())
        assert ready["type"] == "ready", ready
        text = " ".join(["the story of a little dog"] * 60)  # about 600 tokens with BOS
        if embedding:
            parent.sendall(protocol.encode("embed", "1", input=[text]))
        else:
            parent.sendall(protocol.encode("generate", "1", prompt=text, max_tokens=16, temperature=0.7))
        while True:
            frame = protocol.decode(reader.readline())
            if frame["type"] in ("done", "error"):
                break
        assert frame["type"] == "done", frame
        assert frame["usage"]["prompt_tokens"] > GENERATE_UBATCH  # a full micro-batch, deep into the context
        measured = _rss(proc.pid)
    finally:
        parent.sendall(protocol.encode("shutdown", None))
        proc.wait(10)
        parent.close()
    estimate = estimate_model(read_gguf_info(builtin_model_path), n_ctx, embedding=embedding).total_bytes
    assert measured <= estimate, f"worker RSS {measured / MiB:.1f} MiB > estimate {estimate / MiB:.1f} MiB"
    assert estimate <= 1.6 * measured, f"estimate {estimate / MiB:.1f} MiB vs worker RSS {measured / MiB:.1f} MiB"


# ------------------------------------------------------------------------- parallel


def test_each_slot_costs_one_kv_cache_of_n_ctx(builtin_model_path: Path) -> None:
    info = read_gguf_info(builtin_model_path)
    one = estimate_model(info, 512)
    four = estimate_model(info, 512, replicas=2, parallel=4)
    assert four.parallel == 4 and one.parallel == 1
    assert four.kv_bytes_per_replica == 4 * one.kv_bytes_per_replica
    assert four.kv_bytes == 2 * 4 * 512 * kv_bytes_per_token(info)
    # attention spans one slot's own KV stream; the output buffer gets one row per slot
    # (the logits share the attention scores' memory, which is larger here)
    vocab, embd = 640, 64
    assert four.buffers_bytes // 2 - one.buffers_bytes == 3 * (vocab + embd) * 4
    assert four.weights_bytes == one.weights_bytes  # the weights, once
    assert "4 slots" in four.line() and "slots" not in one.line()
    with pytest.raises(ValueError):
        estimate_model(info, 512, parallel=0)


def test_automatic_parallel_is_the_largest_of_8_4_2_1_that_fits(builtin_model_path: Path) -> None:
    from msting.models.memory import AUTO_PARALLEL, choose_parallel

    info = read_gguf_info(builtin_model_path)
    sizes = {p: estimate_model(info, 1024, parallel=p).total_bytes for p in AUTO_PARALLEL}
    assert sizes[8] > sizes[4] > sizes[2] > sizes[1]
    assert choose_parallel(info, 1024, budget_bytes=None, available_bytes=100 * GiB) == 8
    assert choose_parallel(info, 1024, budget_bytes=sizes[8], available_bytes=100 * GiB) == 8  # exactly fits
    assert choose_parallel(info, 1024, budget_bytes=sizes[8] - 1, available_bytes=100 * GiB) == 4
    assert choose_parallel(info, 1024, budget_bytes=None, available_bytes=sizes[2]) == 2  # the memory available bounds it too
    assert choose_parallel(info, 1024, budget_bytes=sizes[4], available_bytes=sizes[2]) == 2  # the smaller of the two
    assert choose_parallel(info, 1024, budget_bytes=1, available_bytes=100 * GiB) == 1  # nothing fits: 1, the preflight refuses
    # replicas multiply the per-worker part
    two = estimate_model(info, 1024, replicas=2, parallel=8).total_bytes
    assert choose_parallel(info, 1024, 2, budget_bytes=two - 1, available_bytes=100 * GiB) == 4
