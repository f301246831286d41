#!/usr/bin/env python3
"""Time to first token, A against B: is a change to the daemon or the worker faster?

    .venv/bin/python bench/ttft_ab.py [--b-src DIR] [--n 150] [--gap-ms 2,20] [--model PATH] [--json-out PATH]

Starts two daemons on the same model: A runs this checkout, B runs the ``msting``
package found under ``--b-src`` (a copy of ``src/`` with the change: it goes first on
the daemon's and its workers' PYTHONPATH). Without ``--b-src`` both run this checkout:
a null test, whose "B − A" shows how small a difference this tool can see.

Every iteration times, in a shuffled order, ``create_completion(stream=True)`` in
process and a streamed ``/v1/completions`` (``max_tokens`` 16) to each daemon over its
Unix socket, with a raw-socket client and with httpx, each after a random idle gap
(``--gap-ms``, uniform): an application does not send its requests back to back, and on
a VM a core that has gone idle is slower to wake. The answer is the median of the
*paired* differences B − A (same iteration, same machine state), which is steady where
two separate p95s of a few dozen samples are not.

This file must not import from ``tests/``.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import httpx

import harness as h  # bench/harness.py
import overhead as o  # bench/overhead.py: the clients (raw socket, httpx, in process), PROMPT, N_CTX

PATHS = ("inproc", "A_raw", "B_raw", "A_httpx", "B_httpx")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--b-src", type=Path, default=None, help="B's source folder (the one holding msting/); default: this checkout")
    ap.add_argument("--n", type=int, default=150, help="iterations (every path once per iteration)")
    ap.add_argument("--gap-ms", default="2,20", help="idle gap before each request: MIN,MAX ms (uniform)")
    ap.add_argument("--model", type=Path, default=h.STORIES, help="GGUF file (default stories260K)")
    ap.add_argument("--json-out", type=Path, default=None, help="write every sample here")
    args = ap.parse_args(argv)
    lo, hi = (float(x) / 1000.0 for x in args.gap_ms.split(","))
    if args.b_src is not None and not (args.b_src / "msting" / "__init__.py").is_file():
        ap.error(f"--b-src {args.b_src}: no msting package there")
    if not args.model.is_file():
        ap.error(f"--model {args.model}: no such file")

    from llama_cpp import Llama

    h.install_signal_handlers()
    body = {"model": "default", "prompt": o.PROMPT, "max_tokens": 16, "temperature": 0.0, "stream": True}
    llm = Llama(str(args.model), n_ctx=o.N_CTX, n_threads=1, n_threads_batch=1, seed=0, verbose=False)

    def inproc() -> float:
        return o.inproc_completion(llm, o.PROMPT, 16, True)["ttft"]

    raws: dict[str, o.RawSSE] = {}
    clients: dict[str, httpx.Client] = {}
    try:
        for side in ("A", "B"):
            home = h.Home(f"ttft-ab-{side}", {"llm": {"model": str(args.model), "n_threads": 1}})
            if side == "B" and args.b_src is not None:
                home.env["PYTHONPATH"] = str(args.b_src.resolve())
            home.start()
            with home.client() as c:
                c.post("/models/load", json={"model": "default"}).raise_for_status()
            raws[side] = o.RawSSE(str(home.socket))
            clients[side] = home.client()
        timed = {"inproc": inproc}
        for side in ("A", "B"):
            timed[f"{side}_raw"] = lambda side=side: raws[side].post_stream("/v1/completions", body)["ttft"]
            timed[f"{side}_httpx"] = lambda side=side: o.http_stream(clients[side], body, time.perf_counter())["ttft"]
        for _ in range(10):  # warm-up
            for f in timed.values():
                f()
        samples: dict[str, list[float]] = {p: [] for p in PATHS}
        rng = random.Random(20261130)
        t_start = time.monotonic()
        for _ in range(args.n):
            order = list(PATHS)
            rng.shuffle(order)
            for p in order:
                time.sleep(rng.uniform(lo, hi))
                ttft = timed[p]()
                if ttft is None:
                    raise h.BenchError(f"{p}: a stream ended without text")
                samples[p].append(ttft * 1000.0)
        took = time.monotonic() - t_start
    finally:
        for c in clients.values():
            c.close()
        for r in raws.values():
            r.close()
        h.cleanup_all()

    pct = h.percentile
    base = samples["inproc"]
    print(f"time to first token, {args.n} iterations, idle gap {args.gap_ms} ms, model {args.model.name}, "
          f"B = {args.b_src or 'this checkout (null test)'} ({took:.0f} s)")
    rows = []
    for p in PATHS:
        v = samples[p]
        rows.append([p, f"{pct(v, 50):.2f}", f"{pct(v, 95):.2f}",
                     "" if p == "inproc" else f"{pct(v, 50) - pct(base, 50):+.2f} / {pct(v, 95) - pct(base, 95):+.2f}"])
    print(h.text_table(["path", "p50 ms", "p95 ms", "added over in process p50 / p95 ms"], rows))
    verdicts = {}
    for client in ("raw", "httpx"):
        diff = [b - a for a, b in zip(samples[f"A_{client}"], samples[f"B_{client}"])]
        faster = sum(1 for d in diff if d < 0) / len(diff)
        verdicts[client] = {"paired_median_ms": round(pct(diff, 50), 3), "b_faster_share": round(faster, 3)}
        print(f"B − A, {client} client: paired median {pct(diff, 50):+.3f} ms; B faster in {faster:.0%} of iterations")
    if args.json_out:
        h.dump_json(args.json_out, {"n": args.n, "gap_ms": args.gap_ms, "model": str(args.model),
                                    "b_src": str(args.b_src) if args.b_src else None, "samples_ms": samples,
                                    "b_minus_a": verdicts})
    return 0


if __name__ == "__main__":
    sys.exit(main())
