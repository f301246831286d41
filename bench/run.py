#!/usr/bin/env python3
"""The whole benchmark suite in one run: msting side by side with the peers a user would pick
instead, written to docs/benchmarks.md (tables and PNG plots) and to a JSON file of raw figures.

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python bench/run.py [--quick] [--no-docs] [--wait-quiet S] [--keep-homes] [--only SECTION ...]

``--quick`` takes one to two minutes on a 2-core machine; the full run (the default) about
10 minutes. Sections, in this order (each also runs on its own, see its file):

- ``memory_cli`` (bench/suite.py): daemon RSS with no model; ``msting llm status --json``
  against ``python -c "import typer, httpx"``;
- ``overhead`` (bench/overhead.py): decode tokens/s through msting (Unix socket and TCP,
  streaming and not) against llama-cpp-python in process and llama_cpp.server, and time to
  first token, on ../shared/models/stories260K.gguf (the worst case for overhead) and on a
  generated ~26M-parameter model where the engine dominates (bench/harness.py large_model(),
  cached in bench/.cache);
- ``concurrency`` (bench/suite.py): 1/2/4/8 concurrent clients, msting with replicas 1 and 2
  against llama_cpp.server (and llama.cpp's llama-server when on PATH); complete replies;
  worker memory with 1 and 2 replicas;
- ``service`` (bench/service.py): install and cold start to ready, /health p50/p99 idle, under
  load and while a model loads, kill -9 recovery;
- ``switch`` (bench/switch.py): a profile switch under load, failed requests.

Every process the suite starts is stopped (``msting llm stop --force`` per MSTING_HOME,
servers terminated), also on SIGTERM/SIGINT. Results: ``bench/results/run.json``
(``run.quick.json`` for --quick) with every section's raw figures, each section's own JSON
beside it, and docs/benchmarks.md (rewritten section by section; hand-written blocks kept).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import harness as h  # noqa: E402
import overhead  # noqa: E402
import service  # noqa: E402
import suite  # noqa: E402
import switch  # noqa: E402

IMG = h.ROOT / "docs" / "img"
SECTIONS = ["memory_cli", "overhead", "concurrency", "service", "switch"]
CONC_TITLE = "## Concurrency and peers (issue 5)"
MEM_TITLE = "## Memory and CLI latency (issue 5)"
SUMMARY_START = "<!-- suite-summary: written by bench/run.py -->"
SUMMARY_END = "<!-- /suite-summary -->"

MODES = {
    "quick": {"service": "suite-quick", "overhead": "suite-quick", "switch": "suite-quick", "suite": "quick",
              "overhead_models": [("stories260K", str(h.STORIES), 256), ("large", "large", 32)]},
    "full": {"service": "full", "overhead": "suite-full", "switch": "full", "suite": "full",
             "overhead_models": [("stories260K", str(h.STORIES), 256), ("large", "large", 128)]},
}
TARGET_LARGE_RATIO = 0.98


def run_script(module: Any, name: str, argv: list[str], json_out: Path) -> dict:
    """One of the older benches, through its own main(): its JSON is the result."""
    print(f"\n[{name}] {module.__name__}.py {' '.join(argv)}", flush=True)
    rc = module.main([*argv, "--json-out", str(json_out), "--no-docs"])
    failed = json_out.with_name(json_out.stem + ".failed.json")
    path = json_out if json_out.exists() and (not failed.exists() or json_out.stat().st_mtime >= failed.stat().st_mtime) else failed
    res = json.loads(path.read_text())
    res["exit_code"] = rc
    return res


# ---------------------------------------------------------------------------------------
# summary of the targets


def fnum(v: float | None, digits: int = 2, unit: str = "") -> str:
    return "-" if v is None else f"{v:.{digits}f}{unit}"


def yes(ok: bool | None) -> str:
    return "-" if ok is None else ("yes" if ok else "**NO**")


def targets(res: dict) -> list[list[str]]:
    rows: list[list[str]] = []
    ov = (res.get("overhead") or {}).get("models") or {}
    for key, model in ov.items():
        large = key == "large"
        for v in ("msting_uds", "msting_tcp", "msting_uds_stream", "msting_tcp_stream"):
            t = model["tps"].get(v)
            if not t:
                continue
            target = TARGET_LARGE_RATIO if large else t.get("target_ratio")
            rows.append([f"decode tok/s ÷ in process ({t['label'].replace('msting /v1/completions, ', '')}) [{model['model']['name']}]",
                         f"{t['ratio_cc']:.3f} (paired min {t['ratio_cc_paired']['min']:.2f}, max {t['ratio_cc_paired']['max']:.2f})",
                         f">= {target:.2f}", yes(t["ratio_cc"] >= target)])
        for v in ("llamasrv", "llamasrv_stream"):
            t = model["tps"].get(v)
            if t:
                rows.append([f"↳ peer: {t['label']} [{model['model']['name']}]", f"{t['ratio_cc']:.3f}", "", ""])
        ttft = model["ttft"]
        raw, hx, base = ttft.get("msting_uds_raw"), ttft.get("msting_uds_stream"), ttft.get("inproc_cc_stream")
        peer, own = ttft.get("llamasrv_stream"), ttft.get("reject_httpx") or {}
        if raw and base and raw.get("n") and "target_added_ms" in raw:
            rows.append([f"time to first token added over in process, p50 / p95, Unix socket, raw client [{model['model']['name']}]",
                         f"{raw['added_p50_ms']:+.2f} / {raw['added_p95_ms']:+.2f} ms (in process {base['p50']:.2f} / {base['p95']:.2f} ms)",
                         f"<= +{raw['target_added_ms']:g} ms", yes(raw["met"])])
        if hx and hx.get("n") and "added_p50_ms" in hx:
            extra = (f"; httpx's own share {own['httpx_own_p50_ms']:+.2f} / {own['httpx_own_p95_ms']:+.2f} ms"
                     if "httpx_own_p50_ms" in own else "")
            extra += (f"; llama_cpp.server with httpx {peer['added_p50_ms']:+.2f} / {peer['added_p95_ms']:+.2f} ms"
                      if peer and "added_p50_ms" in peer else "")
            rows.append([f"↳ the same with httpx [{model['model']['name']}]",
                         f"{hx['added_p50_ms']:+.2f} / {hx['added_p95_ms']:+.2f} ms{extra}", "", ""])
    conc = (res.get("concurrency") or {}).get("models") or {}
    for key, c in conc.items():
        if c.get("missing"):
            continue
        for name, s in c["servers"].items():
            req = sum(lv["requests"] for lv in s["levels"].values())
            ok = sum(lv["complete"] for lv in s["levels"].values())
            rows.append([f"complete replies under 1-8 concurrent clients, {name} [{key}]", f"{ok}/{req}", "all",
                         yes(ok == req)])
        sc = c.get("replica_scaling") or {}
        if sc:
            vals = {k: sc.get(k, sc.get(str(k))) for k in suite.LEVELS}
            multi = [v for k, v in vals.items() if k >= 2 and v is not None]
            met = sum(1 for v in multi if v >= suite.TARGET_REPLICA_SCALING)
            rows.append([f"aggregate tok/s, replicas 2 ÷ replicas 1 [{key}]",
                         f"1/2/4/8 clients: {', '.join(fnum(v) for v in vals.values())}",
                         f">= {suite.TARGET_REPLICA_SCALING} at 2+ clients, where cores allow "
                         f"({res['machine']['logical_cores']} cores)",
                         "yes" if multi and met == len(multi) else f"**{met} of {len(multi)} levels**"])
    svc = res.get("service") or {}
    for key, s in (svc.get("service") or {}).items():
        hl = s["health_under_load"]
        rows.append([f"/health under load p50 / p99 [{s['model']['name']}] (httpx client)", f"{hl['p50']:.2f} / {hl['p99']:.2f} ms",
                     f"p99 <= {service.HEALTH_TARGET_MS:g} ms", yes(hl["p99"] <= service.HEALTH_TARGET_MS)])
        raw = s.get("health_under_load_raw_socket")
        if raw and raw.get("p99") is not None:
            rows.append(["↳ the daemon's share: same load, hand-written HTTP on a raw socket", f"{raw['p50']:.2f} / {raw['p99']:.2f} ms", "", ""])
        floor = s.get("health_under_load_httpx_reference")
        if floor and floor.get("p99") is not None:
            rows.append(["↳ the client's floor: same load, httpx against a do-nothing server", f"{floor['p50']:.2f} / {floor['p99']:.2f} ms", "", ""])
    churn = svc.get("health_churn")
    if churn:
        a = churn["not_ready"]
        rows.append(["/health while a model loads p50 / p99 (non-ready samples, httpx client)", f"{a['p50']:.2f} / {a['p99']:.2f} ms",
                     f"p99 <= {service.HEALTH_TARGET_MS:g} ms", yes(a["p99"] is not None and a["p99"] <= service.HEALTH_TARGET_MS)])
        raw = churn.get("not_ready_raw_socket")
        if raw and raw.get("p99") is not None:
            rows.append(["↳ the daemon's share: same churn, hand-written HTTP on a raw socket", f"{raw['p50']:.2f} / {raw['p99']:.2f} ms", "", ""])
        floor = churn.get("httpx_reference_all")
        if floor and floor.get("p99") is not None:
            rows.append(["↳ the client's floor: same churn, httpx against a do-nothing server", f"{floor['p50']:.2f} / {floor['p99']:.2f} ms", "", ""])
    mc = res.get("memory_cli") or {}
    cli = mc.get("cli")
    if cli:
        rows.append(["`msting llm status --json` ÷ `python -c \"import typer, httpx\"` (medians)",
                     f"{cli['ratio']:.2f} ({cli['status_ms']['median']:.0f} / {cli['imports_ms']['median']:.0f} ms)",
                     f"<= {suite.TARGET_CLI_RATIO}", yes(cli["ratio"] <= suite.TARGET_CLI_RATIO)])
    idle = mc.get("idle_daemon")
    if idle:
        rss = idle["daemon"]["rss"] / 2**20
        rows.append(["daemon RSS, no model loaded", f"{rss:.1f} MB", f"<= {suite.TARGET_DAEMON_RSS_MB:g} MB",
                     yes(rss <= suite.TARGET_DAEMON_RSS_MB)])
    inst = svc.get("install")
    if inst:
        rows.append(["cold start to ready: install / start (medians)",
                     f"{inst['install_sec']['median']:.2f} / {inst['start_sec']['median']:.2f} s", "", ""])
    for key, s in (svc.get("service") or {}).items():
        r = s["recovery"]
        rows.append([f"kill -9 of the worker -> serving again [{s['model']['name']}]", f"{r['recovery_ms']['median']:.0f} ms (median)",
                     "< load_ms + 1.5 s", yes(r["runs_met"] == r["runs"])])
    sw = (res.get("switch") or {}).get("loaded")
    if sw:
        ss = sw["summary"]
        rows.append(["profile switch under load: switch time (median) / failed requests",
                     f"{ss['duration_ms']['median']:.0f} ms / {ss.get('failed')} of {ss.get('requests')}", "0 failed",
                     yes(ss.get("failed") == 0)])
    return rows


# ---------------------------------------------------------------------------------------
# plots


def plots(res: dict) -> list[str]:
    """PNG files written (relative to docs/)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no plots", file=sys.stderr)
        return []
    IMG.mkdir(parents=True, exist_ok=True)
    out = []
    m = res["machine"]
    conc = {k: v for k, v in ((res.get("concurrency") or {}).get("models") or {}).items() if not v.get("missing")}
    if conc:
        fig, axes = plt.subplots(1, len(conc), figsize=(6 * len(conc), 4.2), squeeze=False)
        for ax, (key, c) in zip(axes[0], conc.items()):
            for name, s in c["servers"].items():
                xs = suite.LEVELS
                lv = [s["levels"].get(x) or s["levels"].get(str(x)) for x in xs]
                med = [v["agg_tps"]["median"] for v in lv]
                lo = [v["agg_tps"]["median"] - v["agg_tps"]["min"] for v in lv]
                hi = [v["agg_tps"]["max"] - v["agg_tps"]["median"] for v in lv]
                ax.errorbar(xs, med, yerr=[lo, hi], marker="o", capsize=3, label=name)
            ax.set_xscale("log", base=2)
            ax.set_xticks(suite.LEVELS, [str(x) for x in suite.LEVELS])
            ax.set_xlabel("concurrent clients")
            ax.set_ylabel("aggregate completion tokens/s")
            ax.set_title(f"{c['file']} (max_tokens {c['max_tokens']})", fontsize=10)
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(f"Throughput against concurrency: median, min-max ({m['cpu']}, {m['logical_cores']} cores)", fontsize=10)
        fig.tight_layout()
        fig.savefig(IMG / "concurrency.png", dpi=110)
        plt.close(fig)
        out.append("img/concurrency.png")
    ov = (res.get("overhead") or {}).get("models") or {}
    if ov:
        paths = ["msting_uds", "msting_tcp", "msting_uds_stream", "msting_tcp_stream", "llamasrv", "llamasrv_stream"]
        labels = ["msting UDS", "msting TCP", "msting UDS\nstream", "msting TCP\nstream", "llama_cpp\n.server", "llama_cpp\n.server stream"]
        fig, ax = plt.subplots(figsize=(9, 4.2))
        width = 0.8 / len(ov)
        for i, (key, model) in enumerate(ov.items()):
            vals = [model["tps"][p]["ratio_cc"] if p in model["tps"] else 0 for p in paths]
            xs = [j + i * width for j in range(len(paths))]
            ax.bar(xs, vals, width, label=f"{model['model']['name']}")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.axhline(0.95, color="tab:red", lw=0.8, ls="--", label="0.95 target")
        ax.set_xticks([j + width * (len(ov) - 1) / 2 for j in range(len(paths))], labels, fontsize=8)
        ax.set_ylabel("decode tokens/s ÷ in-process create_completion")
        ax.set_title("Serving overhead: ratio of medians to in process (same stream mode)", fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        fig.savefig(IMG / "overhead.png", dpi=110)
        plt.close(fig)
        out.append("img/overhead.png")
    return out


# ---------------------------------------------------------------------------------------
# docs


def header(res: dict, imgs: list[str]) -> str:
    m = res["machine"]
    rows = targets(res)
    lines = [
        "# Benchmarks",
        "",
        "Every number on this page comes from one command, run from the repository root:",
        "",
        "```sh",
        ".venv/bin/pip install -e '.[bench]'      # llama_cpp.server and matplotlib",
        ".venv/bin/python bench/run.py            # full: 9-15 minutes on 2 cores",
        ".venv/bin/python bench/run.py --quick    # 1-2 minutes, fewer repetitions: p99s and ratios are noisier",
        "```",
        "",
        "It starts every daemon and peer server itself (each msting daemon under a fresh temporary "
        "`MSTING_HOME`), stops all of them at the end, rewrites the sections of this page, draws the plots "
        "in `docs/img/`, and writes the raw figures to `bench/results/run.json` (`run.quick.json` for "
        "`--quick`; each section's own JSON beside it). Each section can also run alone: `bench/service.py`, "
        "`bench/overhead.py`, `bench/switch.py`, `bench/suite.py` (shared helpers: `bench/harness.py`). "
        "Numbers are medians with min and max over repeated, interleaved runs, and every comparison is a "
        "ratio within one run: absolute figures depend on the machine and on what else runs on it.",
        "",
        SUMMARY_START,
        "",
        f"**Latest run:** `bench/run.py{' --quick' if res['mode'] == 'quick' else ''}` ({res['mode']}, "
        f"{res['finished_at']}, {res['duration_sec'] / 60:.1f} min) on {h.machine_line(m)}; code at commit "
        f"`{m.get('git_head')}`" + (f" with {m['src_uncommitted_changes']} uncommitted change(s) under `src/`"
                                     if m.get("src_uncommitted_changes") else "") + "."
        + "".join(f" Re-run later with `--only {' '.join(r['sections'])}` ({r['started_at']}, commit "
                  f"`{(r.get('source') or {}).get('git_head', '?')}`): those rows come from the re-run."
                  for r in res.get("reruns", [])),
        "",
        "| target (issue 5) | this run | target | met |",
        "|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    lines.append("")
    if res.get("errors"):
        lines.append("Sections that failed in this run: " + "; ".join(f"`{e['section']}`: {e['error'].splitlines()[0][:200]}"
                                                                    for e in res["errors"]) + ".")
        lines.append("")
    for img in imgs:
        lines.append(f"![{Path(img).stem}]({img})")
        lines.append("")
    lines.append(SUMMARY_END)
    lines.append("")
    return "\n".join(lines)


def write_head(text: str) -> None:
    """Replace what comes before the first `## ` section of docs/benchmarks.md."""
    old = h.DOCS.read_text() if h.DOCS.exists() else ""
    lines = old.splitlines()
    first = next((i for i, ln in enumerate(lines) if ln.startswith("## ")), len(lines))
    rest = "\n".join(lines[first:])
    h.DOCS.write_text(text.rstrip("\n") + "\n\n" + (rest.rstrip("\n") + "\n" if rest.strip() else ""))


def conc_markdown(res: dict) -> str:
    c = res.get("concurrency") or {}
    m = res["machine"]
    p = suite.PROFILES[MODES[res["mode"]]["suite"]]
    out = [CONC_TITLE, ""]
    out.append(f"Measured by `bench/run.py` (`bench/suite.py`, {res['mode']} run, {res['finished_at']}).")
    out.append("")
    out.append(f"- **Machine:** {h.machine_line(m)}.")
    out.append(f"- **Load:** {', '.join(map(str, suite.LEVELS))} concurrent clients (asyncio + httpx, one keep-alive "
               f"connection each), each sending {p['requests_per_client']} non-streaming `POST /v1/completions` back to back, "
               f"over TCP 127.0.0.1; prompt `{suite.PROMPT!r}`, `temperature` 0, `max_tokens` per model below; "
               f"{p['reps']} interleaved repetitions of every (clients, server) cell (levels alternate direction, servers "
               "shuffled in every cell), after one uncounted request per server.")
    out.append("- **Servers (all up during the whole section):** msting (`llm.n_threads: 1`, `llm.replicas` 1 or 2: one "
               "worker process per replica, the daemon spreads requests over them); `python -m llama_cpp.server --n_threads 1 "
               "--n_threads_batch 1` (one model instance; requests are served one at a time; `repeat_penalty: 1.0` sent "
               "to match create_completion); llama.cpp's C++ `llama-server -t 1` "
               + (f"(`{c.get('llama_server_cpp')}`)." if c.get("llama_server_cpp") else
                  "**was not found on PATH, so it is not in this run** (install llama.cpp and put `llama-server` on PATH "
                  "to include it; the suite starts it by itself)."))
    out.append("- **Complete reply:** HTTP 200 whose `finish_reason` and `completion_tokens` equal those of the in-process "
               "reference (`Llama.create_completion`, temperature 0, same prompt and `max_tokens`); a truncated or cut "
               "short reply, an error or a timeout counts as a failure. \"same text\" counts replies whose text equals "
               "the reference's.")
    out.append("- **Aggregate tokens/s** = completion tokens received in the cell / wall time from the first request sent "
               "to the last reply; latency = wall time of each request (p50 / p95 over all repetitions).")
    out.append("")
    head = ["model", "server", "clients", "agg tok/s median", "min", "max", "latency p50 ms", "p95 ms", "max ms",
            "complete", "same text"]
    rows = []
    for key, mm in (c.get("models") or {}).items():
        if mm.get("missing"):
            rows.append([key, "(model file not found)", *[""] * 9])
            continue
        label = f"{mm['file']} ({mm['max_tokens']} tok)"
        for name, s in mm["servers"].items():
            for clients in suite.LEVELS:
                lv = s["levels"].get(clients) or s["levels"].get(str(clients))
                a, lat = lv["agg_tps"], lv["latency_ms"]
                rows.append([label, name, str(clients), f"{a['median']:.1f}", f"{a['min']:.1f}", f"{a['max']:.1f}",
                             f"{lat['p50']:.0f}", f"{lat['p95']:.0f}", f"{lat['max']:.0f}",
                             f"{lv['complete']}/{lv['requests']}", f"{lv['text_matches']}/{lv['requests']}"])
        if not c.get("llama_server_cpp"):
            rows.append([label, "llama-server (C++)", "-", "not found on PATH", "", "", "", "", "", "", ""])
    out.extend(h.md_table(head, rows, left=2))
    out.append("")
    for key, mm in (c.get("models") or {}).items():
        if mm.get("missing"):
            continue
        sc = mm.get("replica_scaling") or {}
        ref = mm["reference"]
        out.append(f"- {mm['file']}: in-process reference {ref['completion_tokens']} tokens (finish_reason "
                   f"{ref['finish_reason']}) at {ref['tps']:.0f} tok/s with 1 thread; replicas 2 ÷ replicas 1 aggregate "
                   f"tokens/s at 1/2/4/8 clients: {', '.join(fnum(sc.get(k, sc.get(str(k)))) for k in suite.LEVELS)} "
                   f"(target ≥ {suite.TARGET_REPLICA_SCALING} where cores allow: this machine has {m['logical_cores']} "
                   "logical cores, so 2 single-threaded workers can use both, but then the daemon and the clients compete "
                   "with them for the same 2 cores).")
        for name, s in mm["servers"].items():
            fails = [f for lv in s["levels"].values() for f in lv.get("failures", [])]
            if fails:
                out.append(f"- {name} [{mm['file']}]: failed replies, e.g. {fails[:2]}.")
    out.append("")
    if (res.get("overhead") or {}).get("models"):
        out.append("The C++ `llama-server` peer is also absent from the decode and time-to-first-token tables of "
                   "\"Serving overhead\" below when it is not on PATH." if not c.get("llama_server_cpp") else
                   "The decode and time-to-first-token tables below do not cover the C++ `llama-server` yet.")
        out.append("")
    return "\n".join(out)


def mem_markdown(res: dict) -> str:
    mc = res.get("memory_cli") or {}
    conc = (res.get("concurrency") or {}).get("models") or {}
    m = res["machine"]
    out = [MEM_TITLE, ""]
    out.append(f"Measured by `bench/run.py` (`bench/suite.py`, {res['mode']} run, {res['finished_at']}) on {h.machine_line(m)}. "
               "Memory from psutil `memory_full_info()`: RSS counts every resident page, shared ones included; USS the "
               "pages only this process holds; PSS splits each shared page among its sharers (so the PSS of two workers "
               "mapping the same model file sum to about one copy of it).")
    out.append("")
    idle = mc.get("idle_daemon")
    head = ["measurement", "RSS MB", "USS MB", "PSS MB", "÷ model file (RSS)", "÷ model file (PSS)", "target", "met"]
    rows = []
    mb = lambda v: "-" if v is None else f"{v / 2**20:.1f}"  # noqa: E731
    if idle:
        d = idle["daemon"]
        rows.append(["daemon, no model loaded (`llm_service.always_ready: false`)", mb(d["rss"]), mb(d["uss"]), mb(d["pss"]),
                     "", "", f"RSS <= {suite.TARGET_DAEMON_RSS_MB:g} MB", yes(d["rss"] / 2**20 <= suite.TARGET_DAEMON_RSS_MB)])
        for ch in idle.get("children", []):
            rows.append([f"↳ its child `{ch['cmd']}` (warm spare worker, no model)", mb(ch["rss"]), mb(ch["uss"]), mb(ch["pss"]),
                         "", "", "", ""])
    for key, mm in conc.items():
        mem = mm.get("memory")
        if not mem:
            continue
        size = mem["model_size_bytes"]
        for name, s in mem["servers"].items():
            n = len(s["processes"])
            rows.append([f"{name}: {'workers' if 'msting' in name else 'server'} ({n} process{'es' if n > 1 else ''}) "
                         f"[{mm['file']}, {size / 2**20:.1f} MB]", mb(s["rss"]), mb(s["uss"]), mb(s["pss"]),
                         f"{s['rss_over_file']:.2f}", f"{s['pss_over_file']:.2f}", "", ""])
            if s.get("daemon"):
                d = s["daemon"]
                rows.append(["↳ its daemon", mb(d["rss"]), mb(d["uss"]), mb(d["pss"]), "", "", "", ""])
    out.extend(h.md_table(head, rows))
    out.append("")
    ir = mc.get("import_rss")
    if ir:
        out.append("Where a daemon's RSS comes from: RSS of a fresh interpreter after each import, in this order "
                   "(MB, increment): " + ", ".join(f"{x['module']} {x['rss'] / 2**20:.1f} (+{x['delta'] / 2**20:.1f})"
                                                    if i else f"bare python {x['rss'] / 2**20:.1f}" for i, x in enumerate(ir)) + ".")
        out.append("")
    cli = mc.get("cli")
    if cli:
        out.append(f"**CLI latency**: wall time of `{cli['command']}` (`.venv/bin/msting`, the daemon above running; its "
                   f"exit code(s) {cli.get('status_exit_codes')}: it reports that no model is loaded) against "
                   f"`{cli['baseline']}` with the same interpreter, {cli['status_ms']['n']} interleaved pairs after one "
                   "uncounted pair" + (f"; {cli['bytecode']}" if cli.get("bytecode") else "") + ".")
        out.append("")
        rows = [["`msting llm status --json`", str(cli["status_ms"]["n"]), f"{cli['status_ms']['median']:.1f}",
                 f"{cli['status_ms']['min']:.1f}", f"{cli['status_ms']['max']:.1f}", "", ""],
                ["`python -c \"import typer, httpx\"`", str(cli["imports_ms"]["n"]), f"{cli['imports_ms']['median']:.1f}",
                 f"{cli['imports_ms']['min']:.1f}", f"{cli['imports_ms']['max']:.1f}", "", ""],
                ["ratio of medians (paired ratios: min / max)", "", f"{cli['ratio']:.3f}", f"{cli['paired_ratio']['min']:.3f}",
                 f"{cli['paired_ratio']['max']:.3f}", f"<= {suite.TARGET_CLI_RATIO}", yes(cli["ratio"] <= suite.TARGET_CLI_RATIO)]]
        out.extend(h.md_table(["command", "n", "median ms", "min", "max", "target", "met"], rows))
        out.append("")
        if cli.get("importtime_top_ms"):
            out.append("`python -X importtime` of the status command, cumulative ms per top-level package: "
                       + ", ".join(f"{k} {v}" for k, v in cli["importtime_top_ms"].items()) + ".")
            out.append("")
    return "\n".join(out)


def write_all_docs(res: dict) -> list[str]:
    imgs = plots(res)
    write_head(header(res, imgs))
    if res.get("memory_cli") or res.get("concurrency"):
        h.write_docs(conc_markdown(res), CONC_TITLE)
        h.write_docs(mem_markdown(res), MEM_TITLE)
    sv = res.get("service")
    if sv and not sv.get("errors"):
        h.write_docs(service.markdown(sv, service.build_rows(sv)), service.SECTION_TITLE)
    ov = res.get("overhead")
    if ov and ov.get("models"):
        h.write_docs(overhead.markdown(ov), overhead.SECTION_TITLE, keep=(overhead.ANALYSIS_START, overhead.ANALYSIS_END))
    sw = res.get("switch")
    if sw and not sw.get("errors"):
        h.write_docs(switch.markdown(sw, switch.build_rows(sw)), switch.SECTION_TITLE)
    return imgs


# ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions and tokens (a few minutes)")
    ap.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md and its plots")
    ap.add_argument("--wait-quiet", type=float, default=0, metavar="S",
                    help="before each section, wait up to S seconds until no other pytest/msting/busy program runs")
    ap.add_argument("--keep-homes", action="store_true", help="keep the temporary MSTING_HOMEs and server logs")
    ap.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections (for development)")
    args = ap.parse_args(argv)
    h.install_signal_handlers()
    mode = "quick" if args.quick else "full"
    cfg = MODES[mode]
    sections = args.only or SECTIONS
    suffix = ".quick.json" if args.quick else ".json"
    t0 = time.time()
    res: dict[str, Any] = {"mode": mode, "sections": sections, "machine": h.machine(), "source": h.source_info(),
                           "started_at": _dt.datetime.now().isoformat(timespec="seconds"), "errors": [],
                           "llama_server_cpp": h.cpp_llama_server()}
    m = res["machine"]
    print(f"msting benchmark suite ({mode}) on {h.machine_line(m)}", flush=True)
    # as pip install does: an editable checkout under PYTHONDONTWRITEBYTECODE=1 would
    # otherwise recompile every msting module in every CLI call, daemon and worker start
    import compileall

    import msting

    compileall.compile_dir(str(Path(msting.__file__).parent), quiet=1)
    large = h.large_model()
    res["large_model"] = {"path": str(large), "size_bytes": large.stat().st_size, "dims": h.LARGE_DIMS}
    quiet = ["--wait-quiet", str(args.wait_quiet)] if args.wait_quiet else []
    keep = ["--keep-homes"] if args.keep_homes else []
    sp = suite.PROFILES[cfg["suite"]]
    try:
        for name in sections:
            if args.wait_quiet and name in ("memory_cli", "concurrency"):
                h.wait_quiet(args.wait_quiet)
            t1 = time.time()
            try:
                if name == "memory_cli":
                    print("\n[memory_cli]", flush=True)
                    res[name] = suite.bench_memory_cli(sp)
                elif name == "concurrency":
                    print("\n[concurrency]", flush=True)
                    res[name] = suite.bench_concurrency(sp)
                elif name == "overhead":
                    margs = [a for key, path, n in cfg["overhead_models"] for a in ("--model", f"{key}={path}@{n}")]
                    res[name] = run_script(overhead, name, ["--profile", cfg["overhead"], *margs, *quiet, *keep],
                                           h.RESULTS / f"overhead{'.quick' if args.quick else ''}.json")
                elif name == "service":
                    res[name] = run_script(service, name, ["--profile", cfg["service"], *quiet, *keep],
                                           h.RESULTS / f"service{'.quick' if args.quick else ''}.json")
                elif name == "switch":
                    res[name] = run_script(switch, name, ["--profile", cfg["switch"], *quiet, *keep],
                                           h.RESULTS / f"switch{'.quick' if args.quick else ''}.json")
                sub_errors = (res.get(name) or {}).get("errors") or []
                for e in sub_errors:
                    res["errors"].append({"section": name, "error": e["error"] if isinstance(e, dict) else str(e)})
            except Exception as exc:  # noqa: BLE001 - one failed section must not lose the others
                print(f"  FAILED: {exc}", file=sys.stderr, flush=True)
                traceback.print_exc()
                res["errors"].append({"section": name, "error": f"{type(exc).__name__}: {exc}"})
            finally:
                leftovers = h.cleanup_all(args.keep_homes)
                if leftovers:
                    print(f"  killed leftover processes: {leftovers}", file=sys.stderr)
            res.setdefault("section_sec", {})[name] = round(time.time() - t1, 1)
            print(f"  [{name}] took {time.time() - t1:.0f} s", flush=True)
    finally:
        h.cleanup_all(args.keep_homes)
    res["finished_at"] = _dt.datetime.now().isoformat(timespec="seconds")
    res["duration_sec"] = round(time.time() - t0, 1)
    out = h.RESULTS / f"run{suffix}"
    if args.only and out.exists():
        # a partial re-run: the other sections keep their figures from the last whole run
        previous = json.loads(out.read_text())
        rerun = {name: res.get(name) for name in sections}
        previous.setdefault("reruns", []).append({"sections": sections, "started_at": res["started_at"],
                                                  "source": res["source"], "duration_sec": res["duration_sec"]})
        previous.update({k: v for k, v in rerun.items() if v is not None})
        previous["errors"] = [e for e in previous.get("errors", []) if e.get("section") not in sections] + res["errors"]
        previous.setdefault("section_sec", {}).update(res.get("section_sec", {}))
        res = previous
    h.dump_json(out, res)
    print(f"\nwrote {out}")
    rows = targets(res)
    print(h.text_table(["target", "this run", "target", "met"], rows))
    if not args.no_docs:
        imgs = write_all_docs(res)
        print(f"updated {h.DOCS}" + (f" and {', '.join(imgs)}" if imgs else ""))
    took = round(time.time() - t0, 1)
    print(f"\n{mode} run took {took:.0f} s ({took / 60:.1f} min)")
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
