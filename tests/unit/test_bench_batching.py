"""The pure helpers of bench/batching.py and bench/harness.py's F16 conversion: how a
stream's first text is found, which llama-server a ratio is taken against, and a converted
model keeping every tensor and key (only the matrices change type)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import batching  # noqa: E402 - bench/batching.py
import harness  # noqa: E402 - bench/harness.py


def test_first_text_reads_each_server_s_event_format():
    assert batching.first_text(b'data: {"choices":[{"text":" Once","index":0}]}')  # llama-server, msting
    assert not batching.first_text(b'data: {"choices":[{"text":"","index":0}]}')  # a role or empty chunk
    assert not batching.first_text(b"data: [DONE]")
    assert batching.first_text(b': ping\nevent: message\ndata: {"choices":[{"text":"x"}]}')  # sse-starlette, CRLF already folded
    with pytest.raises(RuntimeError, match="stream error"):
        batching.first_text(b'data: {"error":{"message":"worker is busy"}}')


def test_plan_alternates_the_levels_and_the_ttft_cell():
    assert batching.plan([1, 2, 4], 0) == ["1", "2", "4", "ttft"]
    assert batching.plan([1, 2, 4], 1) == ["ttft", "4", "2", "1"]


def _server(per_round: list[float]) -> dict:
    med = sorted(per_round)[len(per_round) // 2]
    return {"levels": {"4": {"agg_tps": {"median": med}, "per_round": per_round}}}


def test_ratios_are_taken_against_the_best_thread_count_of_the_same_slots():
    m = {"servers": {"msting (defaults)": _server([90.0, 100.0, 110.0]),
                     "llama-server -t 1 -np 4": _server([80.0, 80.0, 80.0]),
                     "llama-server -t 2 -np 4": _server([100.0, 125.0, 110.0]),
                     "llama-server -t 2 -np 8": _server([500.0, 500.0, 500.0])}}
    assert batching.best_peer(m, 4, "4") == "llama-server -t 2 -np 4"
    got = batching.ratio(m, "msting (defaults)", "llama-server -t 2 -np 4", "4")
    assert got["ratio"] == round(100.0 / 110.0, 3)
    assert (got["paired_min"], got["paired_max"]) == (0.8, 1.0)  # 100/125 and 110/110, round by round
    assert batching.best_peer(m, 1, "4") is None and batching.ratio(m, "msting (defaults)", None, "4") is None


def test_wanted_matches_whole_names_or_parts():
    spec = batching.Spec("llama-server -t 2 -np 4", "llama-server", {})
    assert batching.wanted(spec, None) and batching.wanted(spec, ["-t 2 -np 4"]) and not batching.wanted(spec, ["msting"])


def test_f16_conversion_keeps_every_tensor_and_key(tmp_path):
    import gguf
    import numpy as np

    from msting.models.builtin import write_tiny_model

    f32, f16 = tmp_path / "tiny.gguf", tmp_path / "tiny-f16.gguf"
    write_tiny_model(f32)
    harness.to_f16(f32, f16)
    a, b = gguf.GGUFReader(str(f32)), gguf.GGUFReader(str(f16))
    assert b.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_F16
    skip = {"general.file_type"}
    assert {k: f.contents() for k, f in a.fields.items() if k not in skip and not k.startswith("GGUF.")} == \
           {k: f.contents() for k, f in b.fields.items() if k not in skip and not k.startswith("GGUF.")}
    assert [t.name for t in a.tensors] == [t.name for t in b.tensors]
    for ta, tb in zip(a.tensors, b.tensors):
        want = gguf.GGMLQuantizationType.F16 if len(ta.data.shape) >= 2 else gguf.GGMLQuantizationType.F32
        assert tb.tensor_type == want, ta.name
        assert np.array_equal(np.asarray(ta.data).astype(np.float16), np.asarray(tb.data).astype(np.float16)), ta.name
    import llama_cpp

    llm = llama_cpp.Llama(str(f16), n_ctx=64, n_threads=1, verbose=False)  # llama.cpp loads it and generates from it
    assert llm.create_completion("Once upon a time", max_tokens=4, temperature=0.0)["usage"]["completion_tokens"] == 4
