"""A pure-Python reader of an MLX model folder's metadata (mlx-lm's layout): no model
is loaded, only ``config.json``, ``tokenizer_config.json`` and the JSON headers of the
``*.safetensors`` files are read.

A safetensors file is ``u64 header length | JSON header | tensor data``; the header
maps each tensor's name to ``{"dtype", "shape", "data_offsets"}`` and may hold
``"__metadata__"`` (MLX writes ``{"format": "mlx"}``). A folder is an MLX model when
it has a ``config.json`` and safetensors files, and either their metadata says
``"format": "mlx"`` or the config has MLX's ``quantization`` section: a folder of
plain Hugging Face weights is not one.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from msting.models.gguf_file import ModelFileError

MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit
# bytes per element of the safetensors dtypes
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4,
               "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


@dataclass(frozen=True)
class MLXInfo:
    path: str
    config: dict[str, Any]
    tokenizer_config: dict[str, Any]
    tensors: dict[str, tuple[str, tuple[int, ...]]] = field(repr=False)  # name -> (dtype, shape)
    size_bytes: int = 0
    metadata_format: str | None = None
    chat_template_file: str | None = None  # chat_template.jinja, when present

    @property
    def quantization_bits(self) -> int | None:
        q = self.config.get("quantization") or self.config.get("quantization_config")
        bits = q.get("bits") if isinstance(q, dict) else None
        return bits if isinstance(bits, int) and not isinstance(bits, bool) and bits > 0 else None

    def text_config(self, key: str) -> Any:
        """A key of the config, or of its ``text_config`` (a multimodal model's language part)."""
        if key in self.config:
            return self.config[key]
        text = self.config.get("text_config")
        return text.get(key) if isinstance(text, dict) else None


def _json_file(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{path} is not readable JSON: {exc}") from None
    return value if isinstance(value, dict) else {}


def _safetensors_header(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                raise ModelFileError(f"{path} is not a safetensors file (only {len(raw)} bytes long)")
            (n,) = struct.unpack("<Q", raw)
            if n > MAX_HEADER_BYTES:
                raise ModelFileError(f"{path} is corrupt: its header claims {n} bytes")
            header = fh.read(n)
    except OSError as exc:
        raise ModelFileError(f"{path} is not readable: {exc.strerror or exc}") from None
    try:
        value = json.loads(header)
    except ValueError:
        raise ModelFileError(f"{path} is not a safetensors file (its header is not JSON)") from None
    if not isinstance(value, dict):
        raise ModelFileError(f"{path} is not a safetensors file (its header is not an object)")
    return value


def read_mlx_info(path: str | Path) -> MLXInfo:
    """The metadata of the MLX model folder at *path*; :class:`ModelFileError` when it is
    not one (the message says what is missing)."""
    folder = Path(path)
    if not folder.is_dir():
        raise ModelFileError(f"{folder} is not a folder")
    if not (folder / "config.json").is_file():
        raise ModelFileError(f"{folder} is a folder without a config.json, not an MLX model")
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelFileError(f"{folder} has no .safetensors files, not an MLX model")
    config = _json_file(folder / "config.json")
    tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
    formats = set()
    size = 0
    for file in files:
        header = _safetensors_header(file)
        meta = header.pop("__metadata__", None)
        if isinstance(meta, dict) and isinstance(meta.get("format"), str):
            formats.add(meta["format"])
        for name, entry in header.items():
            if isinstance(entry, dict) and isinstance(entry.get("shape"), list):
                tensors[name] = (str(entry.get("dtype")), tuple(int(d) for d in entry["shape"]))
        size += file.stat().st_size
    info = MLXInfo(path=str(folder), config=config, tokenizer_config=_json_file(folder / "tokenizer_config.json"),
                   tensors=tensors, size_bytes=size, metadata_format="mlx" if "mlx" in formats else next(iter(formats), None),
                   chat_template_file=_read_text(folder / "chat_template.jinja"))
    if info.metadata_format != "mlx" and info.quantization_bits is None and "quantization" not in config:
        raise ModelFileError(f"{folder} holds safetensors weights that are not MLX's (no \"format\": \"mlx\" "
                             "in their metadata, no quantization in config.json)")
    return info


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def n_params(info: MLXInfo) -> int:
    """Elements summed over the shapes. A quantized weight (MLX packs 32 // bits values
    in each U32) counts its unpacked values, its scales and biases not at all."""
    bits = info.quantization_bits
    total = 0
    for name, (dtype, shape) in info.tensors.items():
        n = 1
        for d in shape:
            n *= d
        if bits and (name.endswith(".scales") or name.endswith(".biases")):
            continue
        if bits and dtype == "U32":
            n = n * 32 // bits
        total += n
    return total
