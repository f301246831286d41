#!/usr/bin/env python3
"""Time to first token, A against B: is a change to the daemon or the worker faster?

    .venv/bin/python bench/ttft_ab.py [--b-src DIR] [--n 150] [--gap-ms 2,20] [--model PATH] [--json-out PATH]

Two daemons on the same model: A runs this checkout, B the ``msting`` package under
``--b-src`` (a copy of ``src/`` with the change, first on B's PYTHONPATH); without it both run
this checkout, a null test that shows how small a difference this tool can see. Every
iteration times, in a shuffled order, ``create_completion(stream=True)`` in process and a
16-token stream to each daemon with the raw client and with httpx, each after a random idle
gap (``--gap-ms``: an application does not send back to back, and an idle core is slower to
wake). The answer is the median of the paired differences B − A.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import harness as h
import overhead as o  # the clients: raw socket, httpx, in process
import report as r

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
    timed = {"inproc": lambda: o.inproc_completion(llm, o.PROMPT, 16, True)["ttft"]}
    closers = []
    try:
        for side in ("A", "B"):
            dh = h.home(f"ttft-ab-{side}", {"llm": {"model": str(args.model), "n_threads": 1}})
            if side == "B" and args.b_src is not None:
                dh.env["PYTHONPATH"] = str(args.b_src.resolve())
            h.start(dh)
            raw, client = h.RawConn(("unix", str(dh.socket)), 60), dh.client()
            closers += [raw.close, client.close]
            timed[f"{side}_raw"] = lambda raw=raw: o.raw_stream(raw, body)["ttft"]
            timed[f"{side}_httpx"] = lambda client=client: o.http_stream(client, body, time.perf_counter())["ttft"]
        for _ in range(10):  # warm-up
            for f in timed.values():
                f()
        samples: dict[str, list[float]] = {p: [] for p in PATHS}
        rng = random.Random(20261130)
        t_start = time.monotonic()
        for _ in range(args.n):
            for p in rng.sample(PATHS, len(PATHS)):
                time.sleep(rng.uniform(lo, hi))
                ttft = timed[p]()
                if ttft is None:
                    raise h.BenchError(f"{p}: a stream ended without text")
                samples[p].append(ttft * 1000.0)
        took = time.monotonic() - t_start
    finally:
        for close in closers:
            close()
        h.cleanup_all()
    pct, base = h.percentile, samples["inproc"]
    print(f"time to first token, {args.n} iterations, idle gap {args.gap_ms} ms, model {args.model.name}, "
          f"B = {args.b_src or 'this checkout (null test)'} ({took:.0f} s)\n")
    print(r.Table(["path", "p50 ms", "p95 ms", "added over in process p50 / p95 ms"], [
        [p, f"{pct(v, 50):.2f}", f"{pct(v, 95):.2f}", "" if p == "inproc" else f"{pct(v, 50) - pct(base, 50):+.2f} / {pct(v, 95) - pct(base, 95):+.2f}"]
        for p, v in samples.items()], "lr").text())
    verdicts = {}
    for client in ("raw", "httpx"):
        diff = [b - a for a, b in zip(samples[f"A_{client}"], samples[f"B_{client}"])]
        verdicts[client] = {"paired_median_ms": round(pct(diff, 50), 3), "b_faster_share": round(sum(d < 0 for d in diff) / len(diff), 3)}
        print(f"B − A, {client} client: paired median {pct(diff, 50):+.3f} ms; B faster in {verdicts[client]['b_faster_share']:.0%} of iterations")
    if args.json_out:
        args.json_out.write_text(json.dumps({"n": args.n, "gap_ms": args.gap_ms, "model": str(args.model), "samples_ms": samples,
                                             "b_src": str(args.b_src) if args.b_src else None, "b_minus_a": verdicts}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
