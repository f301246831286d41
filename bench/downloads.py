#!/usr/bin/env python3
"""Downloads: a model install's transfer against curl on the same local server
(``bench/run.py --only downloads [--quick]``, or ``bench/downloads.py [--quick]``, which
writes only this section's block of docs/benchmarks.md).

The server is the registry stand-in of the tests (tests/registries, in this process; a
plain file is sent with sendfile) serving a GGUF file made of stories260K and zero
padding (bench/.cache). In interleaved rounds:

- curl: ``curl -o FILE URL``, its wall time;
- msting: ``POST /jobs`` install of the same URL with its sha256 on a real daemon; the
  download step's duration (bytes received, written, hashed and checkpointed) and the
  whole job's (the GGUF check and the move too), the progress events of
  ``GET /jobs/{id}/events`` per second while bytes moved, and the daemon's CPU time over
  the job (psutil: every thread of the daemon's process), as % of one core per 100 MB/s.
  For reference, hashlib's sha256 alone on this machine, in the same unit.
- resume: an install throttled by the server, the daemon killed with SIGKILL halfway,
  started again: the bytes the server sent twice against one checkpoint of the transfer.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
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

from msting.daemon.downloads.transfer import checkpoint_every

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


def curl_once(url: str, folder: Path) -> float:
    out = folder / "curl.out"
    t0 = time.monotonic()
    subprocess.run(["curl", "-sS", "--fail", "-o", str(out), url], check=True, timeout=600)
    wall = time.monotonic() - t0
    out.unlink()
    return wall


def sha256_rate() -> float:
    """hashlib's sha256 on 64 MiB in 1 MiB pieces, bytes per second."""
    chunk = b"\0" * (1 << 20)
    digest = hashlib.sha256()
    t0 = time.perf_counter()
    for _ in range(64):
        digest.update(chunk)
    return (64 << 20) / (time.perf_counter() - t0)


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
            for i in range(p["rounds"]):
                order = ("curl", "msting") if i % 2 == 0 else ("msting", "curl")
                row: dict[str, Any] = {"round": i + 1}
                for who in order:
                    if who == "curl":
                        row["curl_sec"] = curl_once(url, Path(folder))
                        row["curl_mbps"] = blob.size / row["curl_sec"] / 1e6
                    else:
                        row.update(install_once(dh, url, blob.sha256, f"bench{i}"))
                row["ratio"] = row["rate_mbps"] / row["curl_mbps"]
                row["cpu_per_100mbps"] = row["cpu_pct"] / (row["job_rate_mbps"] / 100.0)
                rounds.append(row)
                print(f"  round {i + 1}: curl {row['curl_mbps']:.0f} MB/s, msting {row['rate_mbps']:.0f} MB/s "
                      f"(job {row['job_rate_mbps']:.0f}), {row['events_per_sec'] or 0:.1f} events/s, "
                      f"{row['cpu_per_100mbps']:.1f} % CPU per 100 MB/s", flush=True)
        sha = sha256_rate()
        med = lambda k: h.percentile([x[k] for x in rounds], 50)  # noqa: E731
        return {"size": blob.size, "rounds": rounds, "ratio": med("ratio"), "curl_mbps": med("curl_mbps"), "rate_mbps": med("rate_mbps"),
                "job_rate_mbps": med("job_rate_mbps"), "events_per_sec": min(x["events_per_sec"] or 0 for x in rounds),
                "cpu_per_100mbps": med("cpu_per_100mbps"), "sha256_mbps": sha / 1e6,
                "sha256_cpu_per_100mbps": 100.0 * 100e6 / sha,
                "ratio_met": med("ratio") >= TARGET_CURL_RATIO,
                "events_met": min(x["events_per_sec"] or 0 for x in rounds) >= TARGET_EVENTS_PER_SEC,
                "cpu_met": med("cpu_per_100mbps") <= TARGET_CPU_PER_100MBPS}


def bench_resume(p: dict) -> dict:
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
        os.kill(dh.daemon_pid(), signal.SIGKILL)
        time.sleep(0.5)
        sent_before = reg.served_of(blob)
        reg.rate_bps = None
        h.start(dh)
        dh.wait_for(lambda: _state(dh, job["id"]) in ("succeeded", "failed"), timeout=300, what="the resumed job")
        with dh.client() as c:
            done = c.get(f"/jobs/{job['id']}").json()
        refetched = reg.served_of(blob) - blob.size
        chunk = checkpoint_every(blob.size)
        return {"state": done["state"], "sent_before_kill": sent_before, "refetched": refetched, "chunk": chunk,
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
    rs = res.get("resume")
    if rs:
        rows.append(["bytes fetched twice after a kill -9 halfway, ÷ one checkpoint", f"{_mb(rs['refetched'])} of {_mb(rs['chunk'])}",
                     "<= 1 chunk", r.yes(rs["met"])])
    return rows


def blocks(res: dict) -> list:
    out: list[Any] = [r.run_line(res, "bench/run.py --only downloads"),
                      r.Table(["measurement", "this run", "target", "met"], summary_rows(res), "l")]
    rt = res.get("rate")
    if rt:
        rows = [[x["round"], f"{x['curl_mbps']:.0f}", f"{x['rate_mbps']:.0f}", f"{x['job_rate_mbps']:.0f}", f"{x['ratio']:.3f}",
                 f"{x['events_per_sec'] or 0:.1f}", f"{x['cpu_pct']:.1f}", f"{x['cpu_per_100mbps']:.1f}"] for x in rt["rounds"]]
        out += [f"**Rounds** (curl and msting in alternating order; msting's rate is its download step's: received, written, "
                f"hashed, checkpointed; the job's adds the GGUF check and the hard link into place; sha256 alone runs at "
                f"{rt['sha256_mbps']:.0f} MB/s here):",
                r.Table(["round", "curl MB/s", "msting MB/s", "job MB/s", "÷ curl", "events/s", "CPU %", "CPU % per 100 MB/s"], rows, "r")]
    rs = res.get("resume")
    if rs:
        out.append(r.bullets([f"**Resume**: the server throttled to {res['params']['resume_rate_mbps']} MB/s, the daemon killed "
                              f"(SIGKILL) once half of {_mb(rs['size'])} had arrived ({_mb(rs['sent_before_kill'])} sent by then, "
                              f"socket buffers included), started again: the same job ended {rs['state']}, {_mb(rs['refetched'])} "
                              f"sent twice; a checkpoint is {_mb(rs['chunk'])}."]))
    return out + [r.notes(r.common_notes(res))]


def main(argv: list[str]) -> int:
    """`bench/run.py --only downloads ARGS`, writing only this section's block of the page."""
    return r.run_own_section(KEY, TITLE, blocks, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
