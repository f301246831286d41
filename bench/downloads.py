#!/usr/bin/env python3
"""Downloads: a model install's transfer against curl on the same local server
(``bench/run.py --only downloads [--quick]``, or ``bench/downloads.py [--quick]``, which
writes only this section's block of docs/benchmarks.md).

The server is the registry stand-in of the tests (tests/registries, in this process; a
plain file is sent with sendfile) serving a GGUF file made of stories260K and zero
padding (bench/.cache). In interleaved rounds:

- curl: ``curl -o FILE URL``, its wall time and CPU time;
- msting: ``POST /jobs`` install of the same URL with its sha256 on a real daemon; the
  download step's duration (bytes received, written, hashed and checkpointed) and the
  whole job's (the GGUF check and the move too), the progress events of
  ``GET /jobs/{id}/events`` per second while bytes moved, and the daemon's CPU time over
  the job (psutil: every thread of the daemon's process), as % of one core per 100 MB/s;
- read+write: msting's receive path alone (its reads and raw writes, no hash), in a
  thread of the bench, its CPU time in the same unit.
  With hashlib's sha256 alone (its CPU time), these say where the daemon's CPU goes.
- resume: an install throttled by the server, the daemon killed with SIGKILL halfway,
  started again: the bytes the server sent twice against one chunk of the transfer, and
  where they were (the part on the disk, the socket buffers).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import harness as h
import psutil
import report as r
from registries.server import Registries  # tests/ is on sys.path (harness)

from msting.daemon.downloads.http import request
from msting.daemon.downloads.transfer import BUFFER, RECEIVE_BUFFER, body_reader, checkpoint_every

KEY = "downloads"
TITLE = "## Downloads: installing a model file"
TARGET_CURL_RATIO = 0.9
TARGET_EVENTS_PER_SEC = 4.0
TARGET_CPU_PER_100MBPS = 1.0  # % of one core
PROFILES = {
    "quick": {"size_mib": 256, "rounds": 2, "resume_rate_mbps": 40},
    "full": {"size_mib": 1024, "rounds": 4, "resume_rate_mbps": 80},
}


def bench_file(size_mib: int) -> Path:
    """stories260K followed by zeros up to `size_mib` MiB: a GGUF file msting accepts."""
    path = h.CACHE / f"downloads-{size_mib}m.gguf"
    if path.exists() and path.stat().st_size == size_mib << 20:
        return path
    h.CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(h.STORIES, "rb") as src, open(tmp, "wb") as out:
        out.write(src.read())
        out.truncate(size_mib << 20)
    os.replace(tmp, path)
    return path


def _job_events(dh: h.DaemonHome, job_id: str, out: list) -> None:
    with dh.client(timeout=600) as c, c.stream("GET", f"/jobs/{job_id}/events") as stream:
        for line in stream.iter_lines():
            if line.startswith("data: "):
                out.append((time.monotonic(), json.loads(line[6:])))


def install_once(dh: h.DaemonHome, url: str, sha: str, name: str) -> dict:
    pid = dh.daemon_pid()
    proc = psutil.Process(pid)
    cpu0 = sum(proc.cpu_times()[:2])
    t0 = time.monotonic()
    with dh.client() as c:
        job = c.post("/jobs", json={"type": "install", "params": {"source": url, "sha256": sha, "name": name}}).json()
    events: list = []
    reader = threading.Thread(target=_job_events, args=(dh, job["id"], events))
    reader.start()
    reader.join(600)
    wall = time.monotonic() - t0
    cpu = sum(proc.cpu_times()[:2]) - cpu0
    done = events[-1][1]
    if done["state"] != "succeeded":
        raise h.BenchError(f"install failed: {done['error']}")
    step = next(s for s in done["steps"] if s["name"] == "downloading")
    step_sec = step["finished"] - step["started"]
    size = done["result"]["size_bytes"]
    moving = [t for t, e in events if e["step"] == "downloading" and 0 < e["progress"]["bytes_done"] < size]
    span = (moving[-1] - moving[0]) if len(moving) > 1 else 0.0
    with dh.client() as c:
        gone = c.post("/jobs", json={"type": "delete", "params": {"name": name}}).json()
    dh.wait_for(lambda: _state(dh, gone["id"]) == "succeeded", timeout=60, what="the delete")
    return {"download_sec": step_sec, "job_sec": wall, "rate_mbps": size / step_sec / 1e6, "job_rate_mbps": size / wall / 1e6,
            "events_moving": len(moving), "events_per_sec": (len(moving) - 1) / span if span > 0 else None,
            "cpu_sec": cpu, "cpu_pct": 100.0 * cpu / wall}


def _state(dh: h.DaemonHome, job_id: str) -> str:
    with dh.client() as c:
        return c.get(f"/jobs/{job_id}").json()["state"]


def curl_once(url: str, folder: Path) -> tuple[float, float]:
    """curl's wall time and CPU time (user + system)."""
    out = folder / "curl.out"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    subprocess.run(["curl", "-sS", "--fail", "-o", str(out), url], check=True, timeout=600)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    out.unlink()
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def read_write_once(url: str, folder: Path) -> tuple[float, float]:
    """msting's receive path without the sha256, state or progress (its reads into the
    reused buffer, raw writes to a file), in a thread of this process: its wall time and
    the thread's CPU time. The floor under the daemon's figure, beside the hash's."""
    result: list[tuple[float, float]] = []

    def run() -> None:
        cpu0, t0 = time.thread_time(), time.monotonic()
        reply = request(url)
        reply.cap_receive_buffer(RECEIVE_BUFFER)
        read, buffer = body_reader(reply), memoryview(bytearray(BUFFER))
        fd = os.open(folder / "read-write.out", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            while n := read(buffer):
                rest = buffer[:n]
                while rest:
                    rest = rest[os.write(fd, rest):]
        finally:
            os.close(fd)
            reply.close()
        result.append((time.monotonic() - t0, time.thread_time() - cpu0))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(600)
    (folder / "read-write.out").unlink()
    return result[0]


def sha256_cost() -> tuple[float, float]:
    """hashlib's sha256 on 256 MiB in 1 MiB pieces: bytes per second of wall time, and its
    CPU time per 100 MB (seconds)."""
    chunk = b"\0" * (1 << 20)
    digest = hashlib.sha256()
    cpu0, t0 = time.thread_time(), time.perf_counter()
    for _ in range(256):
        digest.update(chunk)
    wall, cpu = time.perf_counter() - t0, time.thread_time() - cpu0
    return (256 << 20) / wall, cpu / ((256 << 20) / 100e6)


@contextlib.contextmanager
def serving(size_mib: int) -> Iterator[tuple[Registries, Any]]:
    """The stand-in serving the bench file at /files/bench.gguf: (server, blob)."""
    reg = Registries().start()
    try:
        reg.add_file("bench.gguf", bench_file(size_mib))
        yield reg, reg.files["bench.gguf"]
    finally:
        reg.close()


def bench_rate(p: dict) -> dict:
    with serving(p["size_mib"]) as (reg, blob):
        url = f"{reg.url}/files/bench.gguf"
        dh = h.home("downloads", {"llm_service": {"warm_spare": False}})
        h.start(dh)
        rounds = []
        with tempfile.TemporaryDirectory(prefix="curl", dir=dh.home) as folder:
            curl_once(url, Path(folder))  # warm the page cache
            per_100mb = 100.0 * 100e6 / blob.size  # CPU seconds for the file -> % of a core per 100 MB/s
            whos = ("curl", "msting", "read_write")
            for i in range(p["rounds"]):
                order = whos[i % 3:] + whos[:i % 3]
                row: dict[str, Any] = {"round": i + 1}
                for who in order:
                    if who == "curl":
                        row["curl_sec"], cpu = curl_once(url, Path(folder))
                        row["curl_mbps"] = blob.size / row["curl_sec"] / 1e6
                        row["curl_cpu_per_100mbps"] = cpu * per_100mb
                    elif who == "read_write":
                        wall, cpu = read_write_once(url, Path(folder))
                        row["read_write_mbps"] = blob.size / wall / 1e6
                        row["read_write_cpu_per_100mbps"] = cpu * per_100mb
                    else:
                        row.update(install_once(dh, url, blob.sha256, f"bench{i}"))
                row["ratio"] = row["rate_mbps"] / row["curl_mbps"]
                row["cpu_per_100mbps"] = row["cpu_sec"] * per_100mb
                rounds.append(row)
                print(f"  round {i + 1}: curl {row['curl_mbps']:.0f} MB/s ({row['curl_cpu_per_100mbps']:.1f} % CPU per 100 MB/s), "
                      f"msting {row['rate_mbps']:.0f} MB/s (job {row['job_rate_mbps']:.0f}), {row['events_per_sec'] or 0:.1f} events/s, "
                      f"{row['cpu_per_100mbps']:.1f} % CPU per 100 MB/s; read+write alone {row['read_write_mbps']:.0f} MB/s, "
                      f"{row['read_write_cpu_per_100mbps']:.1f} %", flush=True)
        sha, sha_cpu = sha256_cost()
        med = lambda k: h.percentile([x[k] for x in rounds], 50)  # noqa: E731
        return {"size": blob.size, "rounds": rounds, "ratio": med("ratio"), "curl_mbps": med("curl_mbps"), "rate_mbps": med("rate_mbps"),
                "job_rate_mbps": med("job_rate_mbps"), "events_per_sec": min(x["events_per_sec"] or 0 for x in rounds),
                "cpu_per_100mbps": med("cpu_per_100mbps"), "sha256_mbps": sha / 1e6, "sha256_cpu_per_100mbps": 100.0 * sha_cpu,
                "curl_cpu_per_100mbps": med("curl_cpu_per_100mbps"), "read_write_cpu_per_100mbps": med("read_write_cpu_per_100mbps"),
                "ratio_met": med("ratio") >= TARGET_CURL_RATIO,
                "events_met": min(x["events_per_sec"] or 0 for x in rounds) >= TARGET_EVENTS_PER_SEC,
                "cpu_met": med("cpu_per_100mbps") <= TARGET_CPU_PER_100MBPS}


def socket_queues(port: int) -> dict:
    """`ss` on the connections to the server's port: the bytes the client's kernel holds
    unread (Recv-Q) and the server's unacknowledged ones (Send-Q)."""
    out = subprocess.run(["ss", "-tnH", "state", "established"], capture_output=True, text=True, timeout=10).stdout
    client = server = 0
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 4 and f[3].endswith(f":{port}"):
            client += int(f[0])
        elif len(f) >= 4 and f[2].endswith(f":{port}"):
            server += int(f[1])
    return {"client_recv_q": client, "server_send_q": server}


def bench_resume(p: dict) -> dict:
    """The bytes the server sends twice, and where they were when the daemon died: the
    part on the disk is what a resume keeps (it asks from the part's last byte), the rest
    of what had been sent was in transit (the kernels' socket buffers, a read not yet
    written). `ss` just before the kill shows how much sat in the socket buffers."""
    with serving(p["size_mib"]) as (reg, blob):
        reg.rate_bps = p["resume_rate_mbps"] * 1e6
        dh = h.home("downloads-resume", {"llm_service": {"warm_spare": False}})
        h.start(dh)
        with dh.client() as c:
            job = c.post("/jobs", json={"type": "install", "params": {"source": f"{reg.url}/files/bench.gguf", "sha256": blob.sha256,
                                                                       "name": "resumed"}}).json()

        def halfway() -> bool:
            with dh.client() as c:
                return c.get(f"/jobs/{job['id']}").json()["progress"]["bytes_done"] >= blob.size // 2

        dh.wait_for(halfway, timeout=300, what="half the file")
        queues = socket_queues(reg.server.server_address[1])
        os.kill(dh.daemon_pid(), signal.SIGKILL)
        time.sleep(0.5)
        sent_before = reg.served_of(blob)
        [part] = (dh.home / "data" / "models" / ".downloads").glob("*.part")
        kept = part.stat().st_size
        verified = json.loads(part.with_suffix(".json").read_text())["verified"]
        reg.rate_bps = None
        h.start(dh)
        dh.wait_for(lambda: _state(dh, job["id"]) in ("succeeded", "failed"), timeout=300, what="the resumed job")
        with dh.client() as c:
            done = c.get(f"/jobs/{job['id']}").json()
        refetched = reg.served_of(blob) - blob.size
        ranges = [q["range"] for q in reg.requests if q["path"] == "/files/bench.gguf" and q["method"] == "GET"]
        chunk = checkpoint_every(blob.size)
        server_queue = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])  # a Linux server's send buffer, at most
        return {"state": done["state"], "bound": BUFFER + 2 * RECEIVE_BUFFER + server_queue, "server_queue_max": server_queue, "sent_before_kill": sent_before, "kept": kept, "verified": verified,
                "in_transit": sent_before - kept, "resume_range": ranges[-1], **queues, "refetched": refetched, "chunk": chunk,
                "size": blob.size, "met": done["state"] == "succeeded" and refetched <= chunk}


def parts(p: dict, res: dict) -> list:
    return [("rate", lambda: bench_rate(p)), ("resume", lambda: bench_resume(p))]


# ---- the report ---------------------------------------------------------------------------------


def _mb(n: float) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def summary_rows(res: dict) -> list[list[str]]:
    rows = []
    rt = res.get("rate")
    if rt:
        rows.append([f"download rate ÷ curl's, same local server ({_mb(rt['size'])}, median of {len(rt['rounds'])})",
                     f"{rt['ratio']:.3f} ({rt['rate_mbps']:.0f} vs {rt['curl_mbps']:.0f} MB/s)", f">= {TARGET_CURL_RATIO:g}",
                     r.yes(rt["ratio_met"])])
        rows.append(["progress events per second while bytes move (slowest round)", f"{rt['events_per_sec']:.1f}",
                     f">= {TARGET_EVENTS_PER_SEC:g}", r.yes(rt["events_met"])])
        rows.append(["daemon CPU per 100 MB/s over the whole install (% of one core)", f"{rt['cpu_per_100mbps']:.1f} %",
                     f"<= {TARGET_CPU_PER_100MBPS:g} %", r.yes(rt["cpu_met"])])
        rows.append(["↳ sha256 alone (hashlib, this machine), the same unit", f"{rt['sha256_cpu_per_100mbps']:.1f} %", "", ""])
        rows.append(["↳ msting's reads and writes alone, no hash (the kernel's copies, mostly)",
                     f"{rt['read_write_cpu_per_100mbps']:.1f} %", "", ""])
        rows.append(["↳ curl (no hash) on the same file, the same unit", f"{rt['curl_cpu_per_100mbps']:.1f} %", "", ""])
    rs = res.get("resume")
    if rs:
        rows.append(["bytes the server sent twice after a kill -9 halfway, ÷ one chunk", f"{_mb(rs['refetched'])} of {_mb(rs['chunk'])}",
                     "<= 1 chunk", r.yes(rs["met"])])
    return rows


def blocks(res: dict) -> list:
    out: list[Any] = [r.run_line(res, "bench/run.py --only downloads"),
                      r.Table(["measurement", "this run", "target", "met"], summary_rows(res), "l")]
    rt = res.get("rate")
    if rt:
        rows = [[x["round"], f"{x['curl_mbps']:.0f}", f"{x['rate_mbps']:.0f}", f"{x['job_rate_mbps']:.0f}", f"{x['ratio']:.3f}",
                 f"{x['events_per_sec'] or 0:.1f}", f"{x['cpu_pct']:.1f}", f"{x['cpu_per_100mbps']:.1f}", f"{x['curl_cpu_per_100mbps']:.1f}",
                 f"{x['read_write_mbps']:.0f}", f"{x['read_write_cpu_per_100mbps']:.1f}"] for x in rt["rounds"]]
        out += [f"**Rounds** (curl, msting and msting's reads and writes alone in rotating order; msting's rate is its download "
                f"step's: received, written, hashed, checkpointed; the job's adds the GGUF check and the hard link into place; "
                f"CPU is % of one core per 100 MB/s, the daemon's over the whole job; sha256 alone runs at "
                f"{rt['sha256_mbps']:.0f} MB/s here):",
                r.Table(["round", "curl MB/s", "msting MB/s", "job MB/s", "÷ curl", "events/s", "daemon CPU %", "daemon CPU",
                         "curl CPU", "read+write MB/s", "read+write CPU"], rows, "r")]
    rs = res.get("resume")
    if rs:
        out.append(r.bullets([f"**Resume**: the server throttled to {res['params']['resume_rate_mbps']} MB/s, the daemon killed "
                              f"(SIGKILL) once half of {_mb(rs['size'])} had arrived, started again: the same job ended "
                              f"{rs['state']}, {_mb(rs['refetched'])} sent twice (a chunk is {_mb(rs['chunk'])}). By then the server "
                              f"had sent {_mb(rs['sent_before_kill'])} (counted when its kernel took them); the part held "
                              f"{_mb(rs['kept'])} (its state's `verified`, the last chunk on the disk: {_mb(rs['verified'])}) and the "
                              f"resume asked for `{rs['resume_range']}`, so the {_mb(rs['in_transit'])} in transit are what came twice; "
                              f"just before the kill the daemon's socket held {_mb(rs['client_recv_q'])} unread and the server's "
                              f"{_mb(rs['server_send_q'])} unacknowledged. By design at most {_mb(rs['bound'])} can come twice "
                              f"here: one read not yet written ({_mb(BUFFER)}), the daemon's receive buffer (held to "
                              f"{_mb(2 * RECEIVE_BUFFER)} on a link this short) and the server's send buffer (at most "
                              f"{_mb(rs['server_queue_max'])}, net.ipv4.tcp_wmem)."]))
    return out + [r.notes(r.common_notes(res))]


def main(argv: list[str]) -> int:
    """`bench/run.py --only downloads ARGS`, writing only this section's block of the page."""
    return r.run_own_section(KEY, TITLE, blocks, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
