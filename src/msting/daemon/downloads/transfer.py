"""One file's download, resumable: bytes go to `<key>.part` beside a small state file
`<key>.json` (URL, expected size and sha256, the server's validator, the boot it was
written in, and `verified`: the bytes of the part known to be on the disk). The part is
kept in chunks (`checkpoint_every`: 8 MiB, or a second's bytes): at each chunk's end the
part is fdatasync'ed and then the state says so, in a thread of its own so the receive
loop does not wait for the disk. The part is only ever appended to, by write()s the
kernel took whole, so after a kill -9 (the same boot: the kernel still has every byte
written) a resume goes on from the part's last byte; after a reboot, from `verified`,
the last chunk the disk had. What is fetched twice after a kill is only what was in
transit: one read's bytes not yet written, the kernel's receive buffer (held to
`RECEIVE_BUFFER` on a short link, `http.Reply.cap_receive_buffer`) and what the server
had queued. The state ties the part to its URL, sha256 and ETag (`If-Range`).

Reads go into a ring of reused buffers (`readinto1`: what has arrived, up to `BUFFER`);
each is written raw and then hashed, without a copy, by a thread of its own while the
next one fills (`_Hasher`). The sha256 is so computed as the bytes arrive (the part is
hashed again on a resume) and compared before the caller moves the file into place; a
mismatch removes the part and its state. Free space is checked before the first byte;
ENOSPC while writing is a clear failure. Transient failures (a dropped connection, a
5xx, a read stalled for `stall_sec`) are retried with exponential backoff and jitter.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import json
import os
import queue
import random
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from msting.daemon.downloads.http import FetchError, Reply, request

BUFFER = 1 << 20  # bytes read from the socket at a time, at most
HASH_BUFFERS = 4  # buffers of BUFFER bytes: reads go on while the sha256 of earlier ones runs
MIN_READ = BUFFER // 4  # a buffer with less room than this goes to be hashed
RECEIVE_BUFFER = 1 << 20  # the kernel's receive buffer on a short link (it holds about twice this)
MAX_CHECKPOINT = 8 << 20  # a chunk (checkpoint) at least every 8 MiB ...
MIN_CHECKPOINT = 64 << 10  # ... and at most every 64 KiB: small files lose little on a kill
CHECKPOINT_SEC = 1.0  # ... and at least once a second while bytes arrive
PROGRESS_SEC = 0.1  # how often progress is reported
SPACE_MARGIN = 1 << 20  # free space kept beyond the file's own size


class TransferFailed(Exception):
    """A download that cannot complete: `code` names why (checksum_mismatch, no_space,
    fetch_failed, stalled ...), the message says what to do."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class Stopped(Exception):
    """The transfer was told to stop (a cancel, or the daemon shutting down); the part
    and its state are kept for a resume."""


@dataclass
class Want:
    """What to fetch: the URL, with the size and sha256 when the source knows them."""

    url: str
    size: int | None = None
    sha256: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Fetched:
    part: Path
    sha256: str
    size: int
    etag: str | None
    resumed_from: int  # bytes of the part kept from an earlier attempt
    fetched: int  # bytes received over the network by this run


def checkpoint_every(size: int | None) -> int:
    if size is None:
        return MAX_CHECKPOINT
    return max(MIN_CHECKPOINT, min(MAX_CHECKPOINT, size // 64))


class Transfer:
    def __init__(self, want: Want, folder: Path, key: str, *, on_progress: Callable[[int, int | None], None] | None = None,
                 stall_sec: float = 30.0, max_retries: int = 8, backoff_sec: float = 0.5):
        self.want = want
        self.folder = folder
        self.part = folder / f"{key}.part"
        self.state_file = folder / f"{key}.json"
        self.on_progress = on_progress or (lambda done, total: None)
        self.stall_sec = stall_sec
        self.max_retries = max_retries
        self.backoff_sec = backoff_sec
        self.stop = threading.Event()
        self._reply: Reply | None = None
        self.fetched = 0  # bytes received over the network by this transfer
        self.offset = 0  # bytes of the part written and hashed
        self.etag: str | None = None
        self.size: int | None = want.size
        self.digest: Any = hashlib.sha256()
        self.boot = boot_id()

    def halt(self) -> None:
        """Stop at once (from another thread): the part and state stay for a resume."""
        self.stop.set()
        reply = self._reply
        if reply is not None:
            reply.abort()

    def discard(self) -> None:
        for p in (self.part, self.state_file):
            p.unlink(missing_ok=True)

    # ---- state -----------------------------------------------------------------------

    def _read_state(self) -> dict:
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}
        same = state.get("url") == self.want.url and state.get("sha256") == self.want.sha256
        return state if same and isinstance(state.get("verified"), int) else {}

    def _write_state(self, verified: int, etag: str | None, size: int | None) -> None:
        """The state, replaced whole and on the disk before it names the new `verified`."""
        tmp = self.state_file.with_suffix(".json.tmp")
        with open(tmp, "w") as f:
            f.write(json.dumps({"url": self.want.url, "sha256": self.want.sha256, "size": size, "etag": etag,
                                "verified": verified, "boot": self.boot, "at": time.time()}))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.state_file)

    def _resume_point(self) -> tuple[int, str | None, Any]:
        """The bytes of the part kept, their hash, the validator."""
        state = self._read_state()
        digest = hashlib.sha256()
        if not state or not self.part.exists():
            self.part.unlink(missing_ok=True)
            return 0, None, digest
        # In the boot that wrote the state, every byte the part holds was handed to the
        # kernel by a write() that returned (a killed process loses none of them): go on
        # from the part's length. After a reboot only `verified` was surely on the disk.
        # Either way the sha256 at the end catches a part the disk did not keep.
        kept = self.part.stat().st_size
        if self.boot is None or state.get("boot") != self.boot:
            kept = min(kept, state["verified"])
        with open(self.part, "r+b", buffering=0) as f:
            f.truncate(kept)
            view = memoryview(bytearray(BUFFER * 4))
            left = kept
            while left:
                n = f.readinto(view[:min(len(view), left)])
                if not n:
                    break
                digest.update(view[:n])
                left -= n
        return kept - left, state.get("etag"), digest

    # ---- running ---------------------------------------------------------------------

    def run(self) -> Fetched:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.offset, self.etag, self.digest = self._resume_point()
        resumed_from = self.offset
        self._check_space(self.offset)
        failures = 0
        self.size = self.want.size
        while True:
            if self.stop.is_set():
                raise Stopped()
            before = self.offset
            try:
                self._attempt()
                break
            except FetchError as exc:
                if not exc.transient:
                    raise TransferFailed("fetch_failed", str(exc)) from None
                failures = 0 if self.offset > before else failures + 1
                if failures > self.max_retries:
                    raise TransferFailed("fetch_failed", f"{exc} (gave up after {self.max_retries} retries)") from None
                delay = min(30.0, self.backoff_sec * (2 ** max(0, failures - 1))) * random.uniform(0.5, 1.0)
                if self.stop.wait(delay):
                    raise Stopped() from None
        got = self.digest.hexdigest()
        if self.want.sha256 and got != self.want.sha256.lower():
            self.discard()
            raise TransferFailed("checksum_mismatch", f"the sha256 of {self.want.url} is {got}, not the expected "
                                 f"{self.want.sha256.lower()}; nothing was kept")
        if self.want.size is not None and self.offset != self.want.size:
            self.discard()
            raise TransferFailed("size_mismatch", f"{self.want.url} gave {self.offset} bytes, not the expected {self.want.size}; "
                                 "nothing was kept")
        return Fetched(self.part, got, self.offset, self.etag, resumed_from, self.fetched)

    def _check_space(self, offset: int) -> None:
        if self.want.size is None:
            return
        need = self.want.size - offset + SPACE_MARGIN
        free = shutil.disk_usage(self.folder).free
        if free < need:
            raise TransferFailed("no_space", f"not enough free space in {self.folder}: the download needs {_mb(need)} "
                                 f"(the file's {_mb(self.want.size - offset)} left, plus {_mb(SPACE_MARGIN)} spare), "
                                 f"{_mb(free)} is free; free some space and install again")

    def _attempt(self) -> None:
        """One request from `self.offset` to the end; the bytes received so far stay
        written and hashed when it fails, so the next attempt goes on from there."""
        headers = dict(self.want.headers)
        if self.offset:
            headers["Range"] = f"bytes={self.offset}-"
            if self.etag:
                headers["If-Range"] = self.etag
        reply = request(self.want.url, headers=headers, timeout=self.stall_sec)
        self._reply = reply
        try:
            status = reply.status
            if status == 416 and self.offset and self.size is not None and self.offset >= self.size:
                return  # the part was already whole
            if status == 416:
                raise FetchError(f"GET {reply.url}: HTTP 416 for bytes {self.offset}-", transient=False, status=416)
            self.etag = reply.header("ETag") or self.etag
            length = reply.header("Content-Length")
            if status == 206:
                total = _range_total(reply.header("Content-Range"))
                self.size = total if total is not None else self.size
            else:  # 200: the whole file (no Range asked for, or the server would not resume)
                self.offset, self.digest = 0, hashlib.sha256()
                self.size = int(length) if length and length.isdigit() else self.size
            if self.want.size is not None and self.size is not None and self.size != self.want.size:
                raise FetchError(f"GET {reply.url}: the server says {self.size} bytes, the source {self.want.size}", transient=False)
            if self.offset == 0:
                self._write_state(0, self.etag, self.size)
            self._receive(reply)
            if self.size is not None and self.offset < self.size:
                raise FetchError(f"GET {reply.url}: the connection closed at byte {self.offset} of {self.size}", transient=True)
        finally:
            self._reply = None
            reply.close()

    def _receive(self, reply: Reply) -> None:
        size, etag = self.size, self.etag
        every = checkpoint_every(size)
        read = body_reader(reply)
        reply.cap_receive_buffer(RECEIVE_BUFFER)
        last_report = last_check = time.monotonic()
        with open(self.part, "r+b" if self.offset else "wb", buffering=0) as f:
            f.seek(self.offset)
            f.truncate(self.offset)
            syncer = _Syncer(f.fileno(), lambda verified: self._write_state(verified, etag, size))
            hasher = _Hasher(self.digest, HASH_BUFFERS, BUFFER)
            buffer, used = hasher.buffer(), 0  # the part of the buffer read (and written) so far
            checked = self.offset
            self.on_progress(self.offset, size)
            try:
                while True:
                    if self.stop.is_set():
                        raise Stopped()
                    if len(buffer) - used < MIN_READ:  # to be hashed: small reads (TLS records) fill a buffer first
                        hasher.add(buffer, used)
                        buffer, used = hasher.buffer(), 0
                    try:
                        n = read(buffer[used:])
                    except (OSError, http.client.HTTPException) as exc:  # a timeout is a stall: another attempt
                        if self.stop.is_set():
                            raise Stopped() from None
                        what = "stalled" if isinstance(exc, TimeoutError) else (str(exc) or type(exc).__name__)
                        raise FetchError(f"GET {reply.url}: {what} at byte {self.offset}", transient=True) from None
                    if not n:
                        break
                    try:
                        rest = buffer[used:used + n]
                        while rest:  # a raw write may take less than all of it
                            rest = rest[f.write(rest):]
                    except OSError as exc:
                        syncer.close()
                        self._no_space(exc, f)
                        raise
                    used += n
                    self.offset += n
                    self.fetched += n
                    now = time.monotonic()
                    if self.offset - checked >= every or now - last_check >= CHECKPOINT_SEC:
                        self._failed_sync(syncer, f)
                        syncer.mark(self.offset)
                        checked, last_check = self.offset, now
                    if now - last_report >= PROGRESS_SEC:
                        self.on_progress(self.offset, size)
                        last_report = now
            finally:
                hasher.add(buffer, used)
                hasher.close()
                syncer.mark(self.offset)
                syncer.close()
                if not f.closed:
                    self._failed_sync(syncer, f)
        self.on_progress(self.offset, size)

    def _failed_sync(self, syncer: "_Syncer", f) -> None:
        if syncer.error is not None:
            self._no_space(syncer.error, f)
            raise syncer.error

    def _no_space(self, exc: OSError, f) -> None:
        """ENOSPC (or a quota): a clear failure, and the partial file removed."""
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            f.close()
            self.discard()
            total = self.size if self.size is not None else "?"
            raise TransferFailed("no_space", f"the disk holding {self.folder} filled up after {self.offset} of {total} bytes "
                                 f"({os.strerror(exc.errno)}); the partial file was removed: free some space and install again") from None


class _Syncer:
    """A chunk's end made durable off the receive loop: `mark(offset)` asks for the part
    to be fdatasync'ed and then `save(offset)` (the state naming it `verified`); marks
    that come while the disk is busy are merged into the latest. A failure is kept in
    `error` for the loop to raise."""

    def __init__(self, fd: int, save: Callable[[int], None]):
        self._fd, self._save = fd, save
        self._cond = threading.Condition()
        self._wanted: int | None = None
        self._closing = False
        self.error: OSError | None = None
        self._thread = threading.Thread(target=self._run, name="download-sync", daemon=True)
        self._thread.start()

    def mark(self, offset: int) -> None:
        with self._cond:
            self._wanted = offset
            self._cond.notify()

    def close(self) -> None:
        """Wait for the last mark to be on the disk."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._wanted is None and not self._closing:
                    self._cond.wait()
                offset, self._wanted = self._wanted, None
            if offset is None:
                return
            try:
                os.fdatasync(self._fd)
                self._save(offset)
            except OSError as exc:
                self.error = exc
                return


def body_reader(reply: Reply) -> Callable[[memoryview], int]:
    """A function reading the next bytes of the body that have arrived (`readinto1`: one
    read, straight into the buffer given, up to its size); 0 at the end."""
    response = reply.response
    if response.chunked:  # http.client takes the chunks apart

        def read_chunked(into: memoryview) -> int:
            data = response.read1(len(into))
            into[:len(data)] = data
            return len(data)

        return read_chunked
    left = [response.length]  # None: until the server closes
    fp = response.fp

    def read(into: memoryview) -> int:
        if left[0] is not None:
            into = into[:left[0]]
        n = fp.readinto1(into) if len(into) else 0
        if left[0] is not None:
            left[0] -= n
        return n

    return read


class _Hasher:
    """The sha256 of the bytes received, in a thread of its own over a ring of buffers:
    the receive loop takes a free buffer (`buffer`), reads into it, writes it and hands it
    over (`add`); hashlib releases the GIL, so hashing one buffer overlaps receiving the
    next. `close` waits until every buffer handed over is in `digest`."""

    def __init__(self, digest: Any, count: int, size: int):
        self.digest = digest
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        self._full: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(count):
            self._free.put(memoryview(bytearray(size)))
        self._thread = threading.Thread(target=self._run, name="download-hash", daemon=True)
        self._thread.start()

    def buffer(self) -> memoryview:
        return self._free.get()

    def add(self, buffer: memoryview, n: int) -> None:
        self._full.put((buffer, n))

    def close(self) -> None:
        self._full.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (item := self._full.get()) is not None:
            buffer, n = item
            self.digest.update(buffer[:n])
            self._free.put(buffer)


def boot_id() -> str | None:
    """This boot's id (Linux): a state written in another boot had a page cache since lost."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip() or None
    except OSError:
        return None


def _range_total(content_range: str | None) -> int | None:
    """The total of `bytes a-b/total`."""
    if not content_range or "/" not in content_range:
        return None
    total = content_range.rsplit("/", 1)[1].strip()
    return int(total) if total.isdigit() else None


def _mb(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"
