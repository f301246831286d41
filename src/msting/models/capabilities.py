"""What a model file is, read from its GGUF header alone, or from an MLX model folder's
config and safetensors headers (pure Python, no model load).

:func:`capabilities_of` answers one dict, stored with every installed model and shown
by ``/v1/models``, ``/llm/models`` and ``msting llm models`` (as ``model_info``)::

    type            "llm" | "embeddings" | "vlm"
    arch            general.architecture
    quantization    a name like "Q4_K_M" (see below)
    context_length  <arch>.context_length (the training context)
    n_params        the elements of every tensor, summed over their shapes
    size_bytes      the file's size
    instructed      the file has a chat template
    tooling         its chat template handles tools
    coding          a code model (name, tags or architecture)
    is_gguf, is_mlx the format: a GGUF file, or an MLX model folder
    pooling         the declared pooling type (embedding models), else None
    projector       the multimodal projector file found beside the model, else None

The rules, each from what the file itself says:

* **type**: ``embeddings`` when the file declares a pooling type other than none
  (``<arch>.pooling_type``: mean, cls, last or rank; llama.cpp then outputs one
  vector per sequence, no logits); else ``vlm`` when the metadata declares a vision
  encoder (``clip.has_vision_encoder``, or any ``<arch>.vision.*`` /
  ``clip.vision.*`` key) or a projector file sits beside it (:func:`find_projector`);
  else ``llm``.
* **quantization**: ``general.file_type`` named as llama.cpp names it (its
  LLAMA_FTYPE table: 15 is Q4_K_M, 1 is F16, 0 is F32); a file without the key gets
  the most common type of its 2-D weight tensors (as llama.cpp guesses it), e.g. "F32".
* **instructed**: a ``tokenizer.chat_template`` (or a named
  ``tokenizer.chat_template.*``) is present.
* **tooling**: a chat template mentions ``tools`` or ``tool_call(s)``, or the file has
  a named ``tool_use`` template: the template renders tool definitions and calls.
* **coding**: ``general.name``, ``general.basename``, ``general.finetune``, the file
  name or ``general.tags`` contains a code word (code, coder, coding, codellama,
  starcoder, codestral, devstral, codegemma, codeqwen), or the architecture is a
  code model's (starcoder, starcoder2, codeshell, refact).
* **is_mlx**: the path is a folder of MLX weights (``msting.models.mlx_files``: a
  ``config.json`` and ``*.safetensors`` files whose metadata says ``"format": "mlx"``,
  or a config with MLX's ``quantization``); the same keys come from its config,
  tokenizer config and safetensors headers (quantization ``4bit`` for 4-bit weights).
  llama.cpp serves GGUF only: an MLX model is described, not served.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

from msting.models.gguf_file import GGUFInfo, ModelFileError, read_gguf_info

# llama.cpp's LLAMA_FTYPE_* (include/llama.h), by general.file_type; the names are
# llama_model_ftype_name's without "MOSTLY_". Bit 1024 (LLAMA_FTYPE_GUESSED) is dropped.
FILE_TYPE_NAMES: dict[int, str] = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    4: "Q4_1_SOME_F16",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4_MOE",
    39: "NVFP4",
    40: "Q1_0",
}
_FTYPE_GUESSED = 1024

CODE_WORDS = ("code", "coder", "coding", "codellama", "starcoder", "codestral",
              "devstral", "codegemma", "codeqwen")
CODE_ARCHS = frozenset({"starcoder", "starcoder2", "codeshell", "refact"})
# "code", "coder", "coding" as words ("Qwen2.5-Coder", not "decoder"); the others anywhere
_CODE_RE = re.compile(r"(?<![a-z])(?:code|coder|coding)(?![a-z])|" + "|".join(CODE_WORDS[3:]))
_TOOLS_RE = re.compile(r"\btools\b|\btool_calls?\b")
_TEMPLATE_KEY = "tokenizer.chat_template"

PROJECTOR_WORD = "mmproj"
# tokens of a file name that say how it is stored, not what it is
_STORAGE_TOKENS = re.compile(r"^(gguf|f16|f32|bf16|fp16|fp32|q\d.*|iq\d.*|tq\d.*|model)$")


def capabilities_of(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The capabilities of the GGUF file, or the MLX model folder, at *path* (see the
    module's docstring). Raises :class:`ModelFileError` (a clear message) for anything
    else."""
    if Path(path).is_dir():
        from msting.models.mlx_files import read_mlx_info

        return capabilities_from_mlx(read_mlx_info(path))
    info = read_gguf_info(path)
    return capabilities_from(info, projector=find_projector(Path(path)))


def capabilities_from(info: GGUFInfo, projector: Path | None = None) -> dict[str, Any]:
    """:func:`capabilities_of` for a header already read; *projector* is the projector
    file found beside the model, if any."""
    templates = _templates(info)
    pooling = info.pooling
    embeds = pooling not in (None, "none")
    if embeds:
        kind = "embeddings"
    elif _declares_vision(info) or projector is not None:
        kind = "vlm"
    else:
        kind = "llm"
    return {
        "type": kind,
        "arch": info.arch,
        "quantization": quantization(info),
        "context_length": info.n_ctx_train,
        "n_params": info.n_params,
        "size_bytes": info.size_bytes,
        "instructed": bool(templates),
        "tooling": _handles_tools(templates),
        "coding": _is_code_model(info.arch, [*info.strings("general.name"), *info.strings("general.basename"),
                                             *info.strings("general.finetune"), *info.strings("general.tags"),
                                             Path(info.path).stem]),
        "is_gguf": True,
        "is_mlx": False,
        "pooling": pooling if embeds else None,
        "projector": str(projector) if projector is not None else None,
    }


def quantization(info: GGUFInfo) -> str | None:
    """``general.file_type``'s name, or the most common type of the 2-D weights."""
    ftype = info.file_type
    if ftype is not None:
        ftype &= ~_FTYPE_GUESSED
        return FILE_TYPE_NAMES.get(ftype, f"ftype {ftype}")
    counts = Counter(t.type_name for t in info.tensors if len(t.dims) >= 2)
    if not counts:
        return None
    return counts.most_common(1)[0][0]


def _templates(info: GGUFInfo) -> dict[str, str]:
    """Every chat template: the default one and the named ``tokenizer.chat_template.*``."""
    return {
        key: value
        for key, value in info.metadata.items()
        if (key == _TEMPLATE_KEY or key.startswith(_TEMPLATE_KEY + "."))
        and isinstance(value, str) and value.strip()
    }


def _handles_tools(templates: dict[str, str]) -> bool:
    if f"{_TEMPLATE_KEY}.tool_use" in templates:
        return True
    return any(_TOOLS_RE.search(text) for text in templates.values())


def _declares_vision(info: GGUFInfo) -> bool:
    if info.metadata.get("clip.has_vision_encoder") is True:
        return True
    prefixes = ("clip.vision.",) + ((f"{info.arch}.vision.",) if info.arch else ())
    return any(key.startswith(prefixes) for key in info.metadata)


def _is_code_model(arch: str | None, texts: list[str]) -> bool:
    return arch in CODE_ARCHS or any(_CODE_RE.search(text.lower()) for text in texts)


def capabilities_from_mlx(info: Any) -> dict[str, Any]:
    """:func:`capabilities_of` for an MLX model folder (``msting.models.mlx_files.MLXInfo``):
    the same keys, from ``config.json`` (``model_type``, ``max_position_embeddings``,
    ``quantization.bits``, a ``vision_config``), the chat template of
    ``tokenizer_config.json`` or ``chat_template.jinja``, and the safetensors headers."""
    from msting.models.mlx_files import n_params

    config = info.config
    arch = info.text_config("model_type")
    arch = arch if isinstance(arch, str) else None
    templates = _mlx_templates(info)
    bits = info.quantization_bits
    if bits:
        quant = f"{bits}bit"  # as mlx-community names its conversions
    else:
        dtypes = Counter(dtype for dtype, shape in info.tensors.values() if len(shape) >= 2)
        quant = dtypes.most_common(1)[0][0] if dtypes else None
    context = info.text_config("max_position_embeddings")
    names = [str(v) for v in (config.get("_name_or_path"), Path(info.path).name) if v]
    names += [str(a) for a in config.get("architectures") or [] if isinstance(a, str)]
    return {
        "type": "vlm" if isinstance(config.get("vision_config"), dict) else "llm",
        "arch": arch,
        "quantization": quant,
        "context_length": context if isinstance(context, int) and not isinstance(context, bool) else None,
        "n_params": n_params(info),
        "size_bytes": info.size_bytes,
        "instructed": bool(templates),
        "tooling": _handles_tools(templates),
        "coding": _is_code_model(arch, names),
        "is_gguf": False,
        "is_mlx": True,
        "pooling": None,
        "projector": None,
    }


def _mlx_templates(info: Any) -> dict[str, str]:
    """The chat templates: tokenizer_config.json's (a string, or a list of named ones) and chat_template.jinja."""
    out: dict[str, str] = {}
    value = info.tokenizer_config.get("chat_template")
    if isinstance(value, str) and value.strip():
        out[_TEMPLATE_KEY] = value
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict) and isinstance(item.get("template"), str):
                name = item.get("name") or "default"
                out[_TEMPLATE_KEY if name == "default" else f"{_TEMPLATE_KEY}.{name}"] = item["template"]
    if info.chat_template_file and info.chat_template_file.strip():
        out.setdefault(_TEMPLATE_KEY, info.chat_template_file)
    return out


class CapabilitiesCache:
    """:func:`capabilities_of` per path, read again only when the file or its folder
    changed (size and mtime of the file, mtime of the folder: a projector added beside
    it). An unreadable file gives None, and is tried again on the next call.

    `get` and `refresh` touch the files (a stat, and a header read when it changed):
    the daemon calls `refresh` in a thread, never on its event loop; `cached` only looks
    at what the last `get` or `refresh` found."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[tuple[int, int, int], dict[str, Any]]] = {}

    def get(self, path: str | os.PathLike[str]) -> dict[str, Any] | None:
        key = str(path)
        try:
            st = os.stat(key)
            stamp = (st.st_size, st.st_mtime_ns, os.stat(os.path.dirname(key) or ".").st_mtime_ns)
        except OSError:
            self._seen.pop(key, None)
            return None
        cached = self._seen.get(key)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        try:
            caps = capabilities_of(key)
        except ModelFileError:
            self._seen.pop(key, None)
            return None
        self._seen[key] = (stamp, caps)
        return caps

    def refresh(self, paths: list[str]) -> None:
        """`get` each of `paths` (the ones unchanged since cost a stat each)."""
        for path in paths:
            self.get(path)

    def cached(self, path: str | os.PathLike[str]) -> dict[str, Any] | None:
        """What the last `get` or `refresh` of `path` found; None if none has run. No
        file is touched."""
        entry = self._seen.get(str(path))
        return entry[1] if entry is not None else None


def _name_tokens(stem: str) -> list[str]:
    return [t for t in re.split(r"[-_.\s]+", stem.lower()) if t and t != PROJECTOR_WORD]


def find_projector(model: Path) -> Path | None:
    """The multimodal projector beside *model*: a ``*.gguf`` file in the same folder
    whose name contains "mmproj" and that belongs to this model, i.e. either the
    words of its name (without "mmproj" and storage words such as F16 or Q8_0) all
    occur in the model's file name (``mmproj-gemma-3-4b-it-f16.gguf`` beside
    ``gemma-3-4b-it-Q4_K_M.gguf``), or its name has no other words
    (``mmproj-F16.gguf``) and the model is the only other GGUF file in the folder.
    A projector is never its own projector."""
    if PROJECTOR_WORD in model.name.lower():
        return None
    try:
        siblings = sorted(p for p in model.parent.iterdir()
                          if p.suffix.lower() == ".gguf" and p.name != model.name and p.is_file())
    except OSError:
        return None
    projectors = [p for p in siblings if PROJECTOR_WORD in p.name.lower()]
    others = [p for p in siblings if PROJECTOR_WORD not in p.name.lower()]
    model_tokens = set(_name_tokens(model.stem))
    for candidate in projectors:
        words = [t for t in _name_tokens(candidate.stem) if not _STORAGE_TOKENS.match(t)]
        if words and all(w in model_tokens for w in words):
            return candidate
        if not words and not others:
            return candidate
    return None


__all__ = ["capabilities_of", "capabilities_from", "capabilities_from_mlx", "CapabilitiesCache", "find_projector", "quantization",
           "FILE_TYPE_NAMES", "ModelFileError"]
