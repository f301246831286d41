"""msting.daemon.downloads against the registry stand-in (a real HTTP server in this
process, tests/registries): the sources resolve as the hub and the Ollama registry
describe them, and a transfer resumes, retries, restarts a stall, and verifies."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import pytest
from registries import plugin
from registries.server import Registries

from msting.daemon.downloads import transfer as transfer_module
from msting.daemon.downloads.sources import SourceError, resolve
from msting.daemon.downloads.transfer import Stopped, Transfer, TransferFailed, Want, boot_id, checkpoint_every

registries = plugin.registries  # the stand-in's fixture

REPO = "tiny-org/stories-GGUF"


@pytest.fixture
def hub(registries: Registries, stories_model_path: Path, builtin_model_path: Path) -> Registries:
    registries.add_hf(REPO, {"stories260K-F32.gguf": stories_model_path, "tiny-Q4_K_M.gguf": builtin_model_path,
                             "README.md": builtin_model_path})
    registries.add_ollama("stories", "260k", stories_model_path)
    return registries


def _resolve(reg: Registries, source: str, sha256: str | None = None):
    return resolve(source, sha256=sha256, env={"HF_ENDPOINT": reg.url}, ollama_registry=reg.url, timeout=5)


def test_hf_sources_resolve_to_one_file_with_the_hubs_size_and_lfs_sha256(hub: Registries, stories_model_path: Path) -> None:
    blob = hub.hf[REPO]["stories260K-F32.gguf"]
    named = _resolve(hub, f"hf://{REPO}/stories260K-F32.gguf")
    assert named.url == f"{hub.url}/{REPO}/resolve/main/stories260K-F32.gguf"
    assert (named.size, named.sha256, named.revision, named.name) == (blob.size, blob.sha256, blob.sha256, "stories260K-F32")
    assert _resolve(hub, f"hf://{REPO}:F32").url == named.url  # by quantization
    assert _resolve(hub, f"hf://{REPO}").url.endswith("tiny-Q4_K_M.gguf")  # two GGUF files: the Q4_K_M one
    with pytest.raises(SourceError, match="no GGUF file of quantization Q8_0 .*stories260K-F32.gguf, tiny-Q4_K_M.gguf"):
        _resolve(hub, f"hf://{REPO}:Q8_0")
    with pytest.raises(SourceError, match="has no file nope.gguf"):
        _resolve(hub, f"hf://{REPO}/nope.gguf")
    with pytest.raises(SourceError, match="no repository other/repo"):
        _resolve(hub, "hf://other/repo")
    with pytest.raises(SourceError, match="is not the hub's"):
        _resolve(hub, f"hf://{REPO}/stories260K-F32.gguf", sha256="0" * 64)


def test_an_ollama_source_is_its_manifests_model_layer(hub: Registries) -> None:
    blob = hub.ollama["library/stories:260k"]
    got = _resolve(hub, "ollama://stories:260k")
    assert got.url == f"{hub.url}/v2/library/stories/blobs/sha256:{blob.sha256}"
    assert (got.size, got.sha256, got.revision, got.name) == (blob.size, blob.sha256, f"sha256:{blob.sha256}", "stories-260k")
    with pytest.raises(SourceError, match="has no library/stories:latest"):
        _resolve(hub, "ollama://stories")


def _want(reg: Registries, name: str = "stories260K-F32.gguf") -> tuple[Want, str]:
    r = _resolve(reg, f"hf://{REPO}/{name}")
    return Want(r.url, r.size, r.sha256), r.sha256


def test_a_transfer_is_verified_and_counts_what_it_fetched(hub: Registries, tmp_path: Path, stories_model_path: Path) -> None:
    want, sha = _want(hub)
    seen: list[tuple[int, int | None]] = []
    got = Transfer(want, tmp_path, "k", on_progress=lambda d, t: seen.append((d, t))).run()
    assert got.sha256 == sha and got.size == want.size and got.fetched == want.size and got.resumed_from == 0
    assert got.part.read_bytes() == stories_model_path.read_bytes()
    assert seen[-1] == (want.size, want.size) and [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_dropped_connections_resume_with_range_from_the_last_checkpoint(hub: Registries, tmp_path: Path) -> None:
    want, sha = _want(hub)
    hub.drop_after, hub.drops = 300_000, 2
    got = Transfer(want, tmp_path, "k", backoff_sec=0.01).run()
    assert got.sha256 == sha
    ranges = [r["range"] for r in hub.requests if r["path"].startswith("/cdn/")]
    assert ranges[0] is None and all(r and r.startswith("bytes=") for r in ranges[1:]) and len(ranges) == 3
    # each drop re-fetches at most what arrived after the last checkpoint
    assert hub.served_of(hub.hf[REPO]["stories260K-F32.gguf"]) <= want.size + 2 * checkpoint_every(want.size)


def test_5xx_answers_are_retried_with_backoff_and_then_give_up(hub: Registries, tmp_path: Path) -> None:
    want, sha = _want(hub)
    hub.fail_5xx = 2
    assert Transfer(want, tmp_path / "a", "k", backoff_sec=0.01).run().sha256 == sha
    hub.fail_5xx = 100
    with pytest.raises(TransferFailed, match=r"HTTP 503 .*gave up after 2 retries") as failed:
        Transfer(want, tmp_path / "b", "k", backoff_sec=0.01, max_retries=2).run()
    assert failed.value.code == "fetch_failed"


def test_a_stalled_transfer_is_restarted_where_it_stopped(hub: Registries, tmp_path: Path) -> None:
    want, sha = _want(hub)
    hub.stall_after = 400_000
    t0 = time.monotonic()
    got = Transfer(want, tmp_path, "k", stall_sec=0.5, backoff_sec=0.01).run()
    assert got.sha256 == sha and time.monotonic() - t0 < 20  # not the stand-in's 30 s hold
    second = [r for r in hub.requests if r["path"].startswith("/cdn/")][1]
    assert second["range"] is not None and int(second["range"][6:-1]) >= 400_000 - checkpoint_every(want.size)


def test_a_wrong_digest_keeps_nothing(hub: Registries, tmp_path: Path) -> None:
    hub.wrong_digest = True
    want, published = _want(hub)
    with pytest.raises(TransferFailed, match=f"is {hub.hf[REPO]['stories260K-F32.gguf'].sha256}, not the expected {published}; "
                                             "nothing was kept") as failed:
        Transfer(want, tmp_path, "k").run()
    assert failed.value.code == "checksum_mismatch" and list(tmp_path.iterdir()) == []


def _halted_halfway(hub: Registries, want: Want, folder: Path) -> None:
    """A transfer halted (a cancel) once half the file arrived: its part and state stay."""
    hub.rate_bps = 400_000
    first = Transfer(want, folder, "k")
    errors: list[BaseException] = []

    def run() -> None:
        try:
            first.run()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 20
    while first.fetched < want.size // 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    first.halt()
    thread.join(10)
    assert len(errors) == 1 and isinstance(errors[0], Stopped)
    assert (folder / "k.part").exists() and (folder / "k.json").exists()
    hub.rate_bps = None


def test_a_halted_transfer_keeps_its_part_and_a_new_one_resumes_it(hub: Registries, tmp_path: Path) -> None:
    want, sha = _want(hub)
    _halted_halfway(hub, want, tmp_path)
    kept = (tmp_path / "k.part").stat().st_size
    state = json.loads((tmp_path / "k.json").read_text())
    assert state["verified"] == kept and state["boot"] == boot_id()  # the part's end on the disk, in this boot
    got = Transfer(want, tmp_path, "k").run()
    assert [r["range"] for r in hub.requests if r["path"].startswith("/cdn/")][-1] == f"bytes={kept}-"
    assert got.sha256 == sha and got.resumed_from > 0
    assert hub.served_of(hub.hf[REPO]["stories260K-F32.gguf"]) < want.size * 1.1
    assert hashlib.sha256(got.part.read_bytes()).hexdigest() == sha


def test_after_a_reboot_a_resume_goes_on_from_the_last_chunk_on_the_disk(hub: Registries, tmp_path: Path) -> None:
    """A state written in another boot (its boot id differs, as after a power loss): the
    part's bytes past `verified` may not have reached the disk, so they are fetched again."""
    want, sha = _want(hub)
    _halted_halfway(hub, want, tmp_path)
    kept = (tmp_path / "k.part").stat().st_size
    state = json.loads((tmp_path / "k.json").read_text())
    state.update(boot="another-boot", verified=kept // 2)
    (tmp_path / "k.json").write_text(json.dumps(state))
    got = Transfer(want, tmp_path, "k").run()
    assert got.sha256 == sha and got.resumed_from == kept // 2
    assert [r["range"] for r in hub.requests if r["path"].startswith("/cdn/")][-1] == f"bytes={kept // 2}-"


def test_not_enough_free_space_fails_before_the_first_byte(hub: Registries, tmp_path: Path, monkeypatch) -> None:
    """The check compares with what shutil.disk_usage says; a file larger than the disk
    (a Want claiming a size beyond its free space) is refused at once."""
    want, _ = _want(hub)
    huge = Want(want.url, transfer_module.shutil.disk_usage(tmp_path).free * 2, want.sha256)
    with pytest.raises(TransferFailed, match="not enough free space") as failed:
        Transfer(huge, tmp_path, "k").run()
    assert failed.value.code == "no_space" and not [r for r in hub.requests if r["path"].startswith("/cdn/")]
