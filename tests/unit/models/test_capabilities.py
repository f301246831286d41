"""capabilities_of on real GGUF files: msting-tiny, stories260K, and small files written
here with the ``gguf`` package, one per rule."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

from msting.models.capabilities import FILE_TYPE_NAMES, capabilities_of, find_projector
from msting.models.gguf_file import ModelFileError


def write_gguf(path: Path, arch: str = "llama", *, name: str | None = "test model",
               setup: Callable[[Any], None] | None = None,
               shapes: tuple[tuple[int, ...], ...] = ((8, 32), (32,)),
               dtype: str = "float32") -> Path:
    """A small valid GGUF file: *shapes* (numpy order) as tensors, *setup(writer)*
    adding metadata."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), arch)
    try:
        if name is not None:
            writer.add_name(name)
        writer.add_context_length(4096)
        if setup is not None:
            setup(writer)
        for i, shape in enumerate(shapes):
            writer.add_tensor(f"t{i}.weight", np.zeros(shape, dtype=dtype))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return path


def test_builtin_model(builtin_model_path: Path):
    caps = capabilities_of(builtin_model_path)
    assert caps == {
        "type": "llm",
        "arch": "llama",
        "quantization": "F32",
        "context_length": 2048,
        "n_params": caps["n_params"],
        "size_bytes": builtin_model_path.stat().st_size,
        "instructed": True,  # msting-tiny has a ChatML template
        "tooling": False,  # that does not render tools
        "coding": False,
        "is_gguf": True,
        "is_mlx": False,
        "pooling": None,
        "projector": None,
    }
    # 640 x 64 embeddings and output, 4 blocks, the final norm
    per_block = 2 * 64 + 4 * 64 * 64 + 3 * 176 * 64
    assert caps["n_params"] == 2 * 640 * 64 + 4 * per_block + 64


def test_stories260k(stories_model_path: Path):
    caps = capabilities_of(stories_model_path)
    assert caps["type"] == "llm"
    assert caps["arch"] == "llama"
    assert caps["context_length"] == 2048
    # no general.file_type in this file: the weights' type, as llama.cpp guesses it
    assert caps["quantization"] == "F32"
    assert caps["n_params"] == 292_800  # stories260K: ~260K parameters
    assert caps["size_bytes"] == stories_model_path.stat().st_size
    assert caps["instructed"] is False and caps["tooling"] is False and caps["coding"] is False
    assert caps["is_gguf"] is True and caps["is_mlx"] is False


def test_n_params_sums_every_shape(tmp_path: Path):
    p = write_gguf(tmp_path / "m.gguf", shapes=((3, 32), (5, 7, 32), (32,)))
    assert capabilities_of(p)["n_params"] == 3 * 32 + 5 * 7 * 32 + 32


@pytest.mark.parametrize("ftype,name", [(15, "Q4_K_M"), (1, "F16"), (7, "Q8_0"), (18, "Q6_K"),
                                        (30, "IQ4_XS"), (32, "BF16"), (15 | 1024, "Q4_K_M")])
def test_quantization_from_file_type(tmp_path: Path, ftype: int, name: str):
    p = write_gguf(tmp_path / "m.gguf", setup=lambda w: w.add_file_type(ftype))
    assert capabilities_of(p)["quantization"] == name


def test_quantization_guessed_from_weights(tmp_path: Path):
    p = write_gguf(tmp_path / "m.gguf", shapes=((8, 32), (8, 32), (32,)), dtype="float16")
    assert capabilities_of(p)["quantization"] == "F16"


def test_file_type_table_matches_gguf_package():
    import gguf

    for member in gguf.LlamaFileType:
        if member.name == "GUESSED":
            continue
        expected = member.name.removeprefix("MOSTLY_").removeprefix("ALL_")
        assert FILE_TYPE_NAMES[member.value] == expected, member


def test_embeddings_from_pooling(tmp_path: Path):
    import gguf

    p = write_gguf(tmp_path / "e.gguf", "bert", setup=lambda w: w.add_pooling_type(gguf.PoolingType.MEAN))
    caps = capabilities_of(p)
    assert caps["type"] == "embeddings" and caps["pooling"] == "mean" and caps["arch"] == "bert"
    # pooling "none" is an LLM
    p = write_gguf(tmp_path / "n.gguf", setup=lambda w: w.add_pooling_type(gguf.PoolingType.NONE))
    assert capabilities_of(p)["type"] == "llm"
    assert capabilities_of(p)["pooling"] is None


def test_vlm_from_projector_beside(tmp_path: Path):
    model = write_gguf(tmp_path / "gemma-3-4b-it-Q4_K_M.gguf")
    assert capabilities_of(model)["type"] == "llm"
    proj = write_gguf(tmp_path / "mmproj-gemma-3-4b-it-f16.gguf", "clip",
                      setup=lambda w: w.add_bool("clip.has_vision_encoder", True))
    caps = capabilities_of(model)
    assert caps["type"] == "vlm" and caps["projector"] == str(proj)
    # another model in the same folder does not get gemma's projector
    other = write_gguf(tmp_path / "qwen2.5-0.5b-instruct-q8_0.gguf")
    assert capabilities_of(other)["type"] == "llm"
    assert find_projector(proj) is None  # a projector is not its own


def test_anonymous_projector_needs_a_lone_model(tmp_path: Path):
    model = write_gguf(tmp_path / "model-Q4_K_M.gguf")
    write_gguf(tmp_path / "mmproj-F16.gguf", "clip")
    assert capabilities_of(model)["type"] == "vlm"
    write_gguf(tmp_path / "other.gguf")
    assert capabilities_of(model)["type"] == "llm"  # whose would it be?


def test_vlm_from_metadata(tmp_path: Path):
    p = write_gguf(tmp_path / "v.gguf", "gemma3", setup=lambda w: w.add_uint32("gemma3.vision.image_size", 896))
    assert capabilities_of(p)["type"] == "vlm"


def test_instructed_and_tooling(tmp_path: Path):
    plain = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    tools = ("{% if tools %}{% for t in tools %}{{ t | tojson }}{% endfor %}{% endif %}"
             "{% for m in messages %}{% if m.tool_calls %}{{ m.tool_calls }}{% endif %}{% endfor %}")
    p = write_gguf(tmp_path / "a.gguf", setup=lambda w: w.add_chat_template(plain))
    caps = capabilities_of(p)
    assert caps["instructed"] is True and caps["tooling"] is False
    p = write_gguf(tmp_path / "b.gguf", setup=lambda w: w.add_chat_template(tools))
    caps = capabilities_of(p)
    assert caps["instructed"] is True and caps["tooling"] is True
    # a named tool_use template (as Hermes and Command-R files carry)
    p = write_gguf(tmp_path / "c.gguf", setup=lambda w: w.add_chat_template(
        [{"name": "default", "template": plain}, {"name": "tool_use", "template": plain}]))
    caps = capabilities_of(p)
    assert caps["instructed"] is True and caps["tooling"] is True
    p = write_gguf(tmp_path / "d.gguf")
    assert capabilities_of(p)["instructed"] is False


@pytest.mark.parametrize("name,tags,fname,arch,coding", [
    ("Qwen2.5 Coder 1.5B Instruct", None, "m.gguf", "qwen2", True),
    ("CodeLlama 7B", None, "m.gguf", "llama", True),
    ("Llama 3.2 1B", ["code", "text-generation"], "m.gguf", "llama", True),
    ("some model", None, "deepseek-coder-1.3b-q4_k_m.gguf", "llama", True),
    ("StarCoder2", None, "m.gguf", "starcoder2", True),
    ("Decoder-only story model", ["text-generation"], "m.gguf", "llama", False),
    ("Llama 3.2 1B", None, "m.gguf", "llama", False),
])
def test_coding_hints(tmp_path: Path, name: str, tags: list[str] | None, fname: str, arch: str, coding: bool):
    def setup(w: Any) -> None:
        if tags:
            w.add_array("general.tags", tags)

    p = write_gguf(tmp_path / fname, arch, name=name, setup=setup)
    assert capabilities_of(p)["coding"] is coding


def test_not_gguf(tmp_path: Path):
    p = tmp_path / "x.gguf"
    p.write_bytes(b"PK\x03\x04" + b"\0" * 64)
    with pytest.raises(ModelFileError, match="is not a GGUF file"):
        capabilities_of(p)
    with pytest.raises(ModelFileError, match="does not exist"):
        capabilities_of(tmp_path / "missing.gguf")


# ---- MLX model folders ------------------------------------------------------------------


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]], metadata: dict | None = None) -> None:
    """A valid safetensors file of zeros: ``u64 header length | JSON header | data``."""
    import json
    import struct

    from msting.models.mlx_files import DTYPE_BYTES

    header: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        n = DTYPE_BYTES[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * offset)


def write_mlx(folder: Path, config: dict, tensors: dict, template: str | None = None, metadata: dict | None = None) -> Path:
    import json

    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    if template is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    write_safetensors(folder / "model.safetensors", tensors, metadata)
    return folder


def test_a_quantized_mlx_folder(tmp_path: Path):
    tools = "{% if tools %}{{ tools | tojson }}{% endif %}{% for m in messages %}{{ m.content }}{% endfor %}"
    folder = write_mlx(
        tmp_path / "Qwen2.5-Coder-1.5B-Instruct-4bit",
        {"model_type": "qwen2", "max_position_embeddings": 32768, "quantization": {"group_size": 64, "bits": 4}},
        {"model.layers.0.mlp.down_proj.weight": ("U32", [64, 8]),  # 64 x 64 4-bit values, packed 8 to a U32
         "model.layers.0.mlp.down_proj.scales": ("F16", [64, 1]),
         "model.layers.0.mlp.down_proj.biases": ("F16", [64, 1]),
         "model.norm.weight": ("F16", [64])},
        template=tools)
    caps = capabilities_of(folder)
    assert caps == {
        "type": "llm", "arch": "qwen2", "quantization": "4bit", "context_length": 32768,
        "n_params": 64 * 64 + 64, "size_bytes": (folder / "model.safetensors").stat().st_size,
        "instructed": True, "tooling": True, "coding": True, "is_gguf": False, "is_mlx": True,
        "pooling": None, "projector": None,
    }


def test_an_unquantized_mlx_vlm_folder(tmp_path: Path):
    folder = write_mlx(tmp_path / "gemma-3-4b-it-bf16",
                       {"model_type": "gemma3", "vision_config": {"image_size": 896},
                        "text_config": {"model_type": "gemma3_text", "max_position_embeddings": 131072}},
                       {"a.weight": ("BF16", [16, 32]), "b.weight": ("BF16", [16, 32]), "n.weight": ("F32", [32])},
                       metadata={"format": "mlx"})
    (folder / "chat_template.jinja").write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    caps = capabilities_of(folder)
    assert caps["type"] == "vlm" and caps["arch"] == "gemma3" and caps["quantization"] == "BF16"
    assert caps["context_length"] == 131072 and caps["n_params"] == 2 * 16 * 32 + 32
    assert caps["instructed"] is True and caps["tooling"] is False and caps["coding"] is False and caps["is_mlx"] is True


def test_folders_that_are_not_mlx_models(tmp_path: Path):
    plain = write_mlx(tmp_path / "hf", {"model_type": "llama"}, {"w": ("F16", [4, 4])})  # Hugging Face's own weights
    with pytest.raises(ModelFileError, match="not MLX's"):
        capabilities_of(plain)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelFileError, match="without a config.json"):
        capabilities_of(empty)
    broken = write_mlx(tmp_path / "broken", {"model_type": "llama", "quantization": {"bits": 4}}, {})
    (broken / "model.safetensors").write_bytes(b"\xff" * 8 + b"junk")
    with pytest.raises(ModelFileError, match="corrupt|not a safetensors"):
        capabilities_of(broken)


def test_the_cache_reads_a_file_again_only_when_it_or_its_folder_changed(tmp_path: Path):
    import os

    from msting.models.capabilities import CapabilitiesCache

    cache = CapabilitiesCache()
    model = write_gguf(tmp_path / "model-Q4_K_M.gguf", setup=lambda w: w.add_file_type(15))
    first = cache.get(model)
    assert first is not None and first["quantization"] == "Q4_K_M"
    assert cache.get(model) is first  # unchanged: not read again
    write_gguf(tmp_path / "mmproj-F16.gguf", "clip")  # a projector appears beside it
    assert cache.get(model)["type"] == "vlm"
    stat = model.stat()
    write_gguf(model, setup=lambda w: w.add_file_type(7))  # the file is replaced
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert cache.get(model)["quantization"] == "Q8_0"
    model.write_bytes(b"junk")
    assert cache.get(model) is None  # unreadable: None, tried again next time
    model.unlink()
    assert cache.get(model) is None


def test_cached_touches_no_file_and_refresh_reads_only_what_changed(tmp_path: Path):
    """The daemon's event loop only calls `cached`; `refresh` (in a thread) does the reads,
    keyed by the file's size and mtime."""
    import os

    from msting.models.capabilities import CapabilitiesCache

    cache = CapabilitiesCache()
    model = write_gguf(tmp_path / "model-Q4_K_M.gguf", setup=lambda w: w.add_file_type(15))
    assert cache.cached(model) is None  # nothing read yet, and cached() reads nothing
    cache.refresh([str(model)])
    first = cache.cached(model)
    assert first is not None and first["quantization"] == "Q4_K_M"
    cache.refresh([str(model)])
    assert cache.cached(model) is first  # unchanged: not read again
    stat = model.stat()
    write_gguf(model, setup=lambda w: w.add_file_type(7))  # replaced: another size or mtime
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert cache.cached(model) is first  # still the last read: cached() does not look at the file
    cache.refresh([str(model)])
    assert cache.cached(model)["quantization"] == "Q8_0"
    model.unlink()
    cache.refresh([str(model)])
    assert cache.cached(model) is None
