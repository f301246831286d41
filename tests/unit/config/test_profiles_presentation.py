"""msting.config.profiles.presentation: every profile as JSON-ready data (describe_profiles)."""

from __future__ import annotations

from pathlib import Path

from config_testing import QWEN, write_profile

from msting.config.paths import Paths
from msting.config.profiles.presentation import describe_profiles
from msting.config.schema import Config


def test_describe_profiles(paths: Paths, home: Path, tmp_path: Path) -> None:
    from msting.models.gguf_file import read_gguf_info
    from msting.models.memory import estimate_model

    write_profile(paths.profiles_dir, "broken.yaml", "default_model: x\nmodels: {x: {source: builtin:tiny, replicas: 0}}\n")
    described = {d["name"]: d for d in describe_profiles(paths, Config())}
    assert list(described) == ["broken", "default", "embeddings", "small-instruct"]

    default = described["default"]
    assert default["implicit"] and not default["shipped"] and default["source"] is None
    assert default["valid"] and default["problems"] == [] and default["default_model"] == "msting-tiny"
    info = read_gguf_info(paths.models_dir / "msting-tiny.gguf")
    tiny = estimate_model(info, 2048, parallel=8)  # parallel automatic: 8 slots fit, with memory to spare
    assert default["estimated_bytes"] == default["always_ready_bytes"] == tiny.total_bytes
    assert default["models"] == [{
        "name": "msting-tiny", "type": "llm", "source": "builtin:tiny", "n_ctx": 2048, "replicas": 1,
        "parallel": None, "estimated_parallel": 8, "always_ready": True, "keep_alive_sec": 300.0, "estimated_bytes": tiny.total_bytes,
        "params": {"temperature": 0.7, "max_tokens": 256, "n_threads": None, "n_gpu_layers": 0, "chat_format": None},
    }]

    emb = described["embeddings"]
    assert emb["valid"] and emb["shipped"] and not emb["implicit"]
    embed = estimate_model(info, 512, embedding=True, parallel=8)
    assert emb["always_ready_bytes"] == tiny.total_bytes
    assert emb["estimated_bytes"] == tiny.total_bytes + embed.total_bytes - info.size_bytes  # one file, once

    small = described["small-instruct"]
    assert not small["valid"] and small["estimated_bytes"] is None
    assert len(small["problems"]) == 1 and small["problems"][0].startswith(f"models.{QWEN}.source: ")
    assert [m["estimated_bytes"] is None for m in small["models"]] == [True, False]

    broken = described["broken"]
    assert not broken["valid"] and broken["models"] == [] and broken["default_model"] is None
    assert broken["problems"] == ["models.x.replicas: must be an integer between 1 and 64, got 0"]
    assert broken["source"] == str(paths.profiles_dir / "broken.yaml")
    import json

    json.dumps(list(described.values()))  # JSON-ready
