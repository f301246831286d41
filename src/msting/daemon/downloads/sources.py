"""Where a model comes from, resolved to one file to fetch (`Resolved`):

- `hf://ORG/REPO/PATH/FILE.gguf`, `hf://ORG/REPO:QUANT` (the repo's GGUF file of that
  quantization) or `hf://ORG/REPO` (its only GGUF file, else its Q4_K_M one): the
  file list, sizes and LFS sha256 from the hub's API (`/api/models/{repo}/tree/{rev}`),
  the bytes from `/{repo}/resolve/{rev}/{path}`. The base URL is `HF_ENDPOINT`
  (default https://huggingface.co) and `HF_TOKEN` is sent when set, as huggingface_hub
  does.
- `ollama://NAME[:TAG]`: the registry's v2 protocol, the manifest
  (`/v2/{name}/manifests/{tag}`) and then its model layer's blob
  (`/v2/{name}/blobs/{digest}`), verified by the digest. A name without a namespace is
  in `library/`.
- `https://…` or `http://…`: the URL itself; a sha256 may be given, the ETag (from a
  HEAD) is its revision.

`revision` identifies the upstream's content (the LFS sha256, the layer digest, the
ETag): `update` installs again when it changed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Mapping
from urllib.parse import quote, urlsplit

from msting.daemon.downloads.http import FetchError, get_json, request

HF_DEFAULT = "https://huggingface.co"
OLLAMA_MODEL_LAYER = "application/vnd.ollama.image.model"
OLLAMA_ACCEPT = "application/vnd.docker.distribution.manifest.v2+json"
PREFERRED_QUANT = "Q4_K_M"
SHA256 = re.compile(r"[0-9a-f]{64}")
NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


class SourceError(ValueError):
    """A source that names nothing fetchable (a bad form, an unknown file or quantization)."""


@dataclass
class Resolved:
    source: str
    name: str  # the installed model's default name
    url: str
    size: int | None
    sha256: str | None
    revision: str | None
    headers: dict[str, str] = field(default_factory=dict)  # sent with the download (a token)


def model_name(text: str) -> str:
    """A model name from a file name or tag: the characters a profile accepts."""
    name = NAME_CHARS.sub("-", text).strip("-._") or "model"
    return name if name[0].isalnum() else f"m{name}"


def kind_of(source: str) -> str:
    low = source.lower()
    for scheme in ("hf", "ollama", "https", "http"):
        if low.startswith(f"{scheme}://"):
            return scheme
    raise SourceError(f"unknown source {source!r}: give hf://ORG/REPO[/FILE.gguf|:QUANT], ollama://NAME:TAG or an http(s):// URL")


def resolve(source: str, *, sha256: str | None, env: Mapping[str, str], ollama_registry: str, timeout: float = 30.0) -> Resolved:
    kind = kind_of(source)
    if kind == "hf":
        return _hf(source, sha256, env, timeout)
    if kind == "ollama":
        return _ollama(source, ollama_registry, timeout)
    return _url(source, sha256, timeout)


# ---- Hugging Face --------------------------------------------------------------------


def hf_endpoint(env: Mapping[str, str]) -> str:
    return (env.get("HF_ENDPOINT") or HF_DEFAULT).rstrip("/")


def hf_headers(env: Mapping[str, str]) -> dict[str, str]:
    token = env.get("HF_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def _hf(source: str, sha256: str | None, env: Mapping[str, str], timeout: float) -> Resolved:
    rest = source[len("hf://"):]
    quant = None
    parts = rest.split("/")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise SourceError(f"{source!r}: give hf://ORG/REPO, hf://ORG/REPO:QUANT or hf://ORG/REPO/FILE.gguf")
    repo, path = "/".join(parts[:2]), "/".join(parts[2:])
    if not path and ":" in parts[1]:
        name, quant = parts[1].split(":", 1)
        repo = f"{parts[0]}/{name}"
    revision = "main"
    base, headers = hf_endpoint(env), hf_headers(env)
    try:
        tree = get_json(f"{base}/api/models/{repo}/tree/{revision}?recursive=true", headers=headers, timeout=timeout)
    except FetchError as exc:
        if exc.status == 404:
            raise SourceError(f"{source!r}: no repository {repo} on {base}") from None
        raise
    files = {e["path"]: e for e in tree if isinstance(e, dict) and e.get("type") == "file"}
    if not path:
        path = _choose_gguf(source, sorted(files), quant)
    entry = files.get(path)
    if entry is None:
        ggufs = ", ".join(p for p in sorted(files) if p.endswith(".gguf")) or "none"
        raise SourceError(f"{source!r}: {repo} has no file {path} (its GGUF files: {ggufs})")
    lfs = entry.get("lfs") or {}
    hub_sha = lfs.get("oid") if isinstance(lfs.get("oid"), str) and SHA256.fullmatch(lfs["oid"]) else None
    if sha256 and hub_sha and sha256.lower() != hub_sha:
        raise SourceError(f"{source!r}: the sha256 given ({sha256}) is not the hub's ({hub_sha})")
    size = lfs.get("size") if isinstance(lfs.get("size"), int) else entry.get("size")
    return Resolved(source=source, name=model_name(PurePosixPath(path).stem), url=f"{base}/{repo}/resolve/{revision}/{quote(path)}",
                    size=size if isinstance(size, int) else None, sha256=(sha256 or hub_sha or None),
                    revision=hub_sha or entry.get("oid"), headers=headers)


def _choose_gguf(source: str, paths: list[str], quant: str | None) -> str:
    ggufs = [p for p in paths if p.lower().endswith(".gguf") and "mmproj" not in p.lower()]
    if not ggufs:
        raise SourceError(f"{source!r}: the repository has no GGUF file")
    if quant is None:
        if len(ggufs) == 1:
            return ggufs[0]
        quant = PREFERRED_QUANT
    pattern = re.compile(rf"(^|[^A-Za-z0-9]){re.escape(quant)}([^A-Za-z0-9]|$)", re.IGNORECASE)
    matching = [p for p in ggufs if pattern.search(PurePosixPath(p).name)]
    if not matching:
        raise SourceError(f"{source!r}: no GGUF file of quantization {quant} (the files: {', '.join(ggufs)}); "
                          "name one as hf://ORG/REPO/FILE.gguf or :QUANT")
    return min(matching, key=lambda p: (len(p), p))


def search_hub(query: str, limit: int, env: Mapping[str, str], timeout: float = 15.0) -> list[dict]:
    """The hub's models matching `query` (GGUF ones first in its own ranking)."""
    base = hf_endpoint(env)
    url = f"{base}/api/models?search={quote(query)}&limit={limit}&sort=downloads&direction=-1&full=true"
    found = get_json(url, headers=hf_headers(env), timeout=timeout)
    out = []
    for m in found if isinstance(found, list) else []:
        repo = m.get("id") or m.get("modelId")
        if not isinstance(repo, str):
            continue
        siblings = m.get("siblings")
        files = [s.get("rfilename") for s in siblings if isinstance(s, dict)] if isinstance(siblings, list) else None
        out.append({"id": repo, "source": f"hf://{repo}", "downloads": m.get("downloads"), "likes": m.get("likes"), "files": files})
    return out[:limit]


# ---- the Ollama registry -------------------------------------------------------------


def _ollama(source: str, registry: str, timeout: float) -> Resolved:
    rest = source[len("ollama://"):]
    name, _, tag = rest.partition(":")
    tag = tag or "latest"
    if not name or not re.fullmatch(r"[a-z0-9][a-z0-9._/-]*", name) or not re.fullmatch(r"[A-Za-z0-9._-]+", tag):
        raise SourceError(f"{source!r}: give ollama://NAME:TAG (e.g. ollama://llama3.2:1b)")
    repo = name if "/" in name else f"library/{name}"
    base = registry.rstrip("/")
    try:
        manifest = get_json(f"{base}/v2/{repo}/manifests/{tag}", headers={"Accept": OLLAMA_ACCEPT}, timeout=timeout)
    except FetchError as exc:
        if exc.status == 404:
            raise SourceError(f"{source!r}: the registry {base} has no {repo}:{tag}") from None
        raise
    layers = manifest.get("layers") if isinstance(manifest, dict) else None
    layer = next((lay for lay in layers or [] if isinstance(lay, dict) and lay.get("mediaType") == OLLAMA_MODEL_LAYER), None)
    if layer is None or not isinstance(layer.get("digest"), str) or not layer["digest"].startswith("sha256:"):
        raise SourceError(f"{source!r}: the manifest has no model layer ({OLLAMA_MODEL_LAYER}) with a sha256 digest")
    digest = layer["digest"]
    hex_digest = digest.split(":", 1)[1]
    if not SHA256.fullmatch(hex_digest):
        raise SourceError(f"{source!r}: the model layer's digest {digest!r} is not a sha256")
    short = name.rsplit("/", 1)[-1]
    return Resolved(source=source, name=model_name(f"{short}-{tag}"), url=f"{base}/v2/{repo}/blobs/{digest}",
                    size=layer.get("size") if isinstance(layer.get("size"), int) else None, sha256=hex_digest, revision=digest)


# ---- a URL ---------------------------------------------------------------------------


def _url(source: str, sha256: str | None, timeout: float) -> Resolved:
    parts = urlsplit(source)
    filename = PurePosixPath(parts.path).name
    if not parts.hostname or not filename:
        raise SourceError(f"{source!r}: a URL naming a file, like https://host/path/model.gguf")
    size, etag = None, None
    try:
        reply = request(source, method="HEAD", timeout=timeout)
        length = reply.header("Content-Length")
        size = int(length) if length and length.isdigit() else None
        etag = reply.header("ETag") or reply.header("Last-Modified")
        reply.close()
    except FetchError as exc:
        if exc.status == 404:
            raise SourceError(f"{source!r}: not found (HTTP 404)") from None
        if exc.status not in (405, 501):  # a server without HEAD: the GET will tell
            raise
    return Resolved(source=source, name=model_name(PurePosixPath(filename).stem), url=source, size=size,
                    sha256=sha256.lower() if sha256 else None, revision=sha256.lower() if sha256 else etag)
