#!/usr/bin/env python3
"""Every benchmark of docs/benchmarks.md in one run, msting beside the peers a user would
pick instead:

    .venv/bin/python bench/run.py [--quick] [--only SECTION ...] [--docs DIR | --no-docs] [--wait-quiet S] [--keep-homes]
    .venv/bin/python bench/run.py --render bench/results/run.json   # rewrite the page from saved results

Sections: memory_cli and concurrency (bench/suite.py), overhead, service, switch, proxy,
batching, ops (bench/<name>.py; ``bench/service.py`` is ``bench/run.py --only service``).
``--param KEY=VALUE`` (VALUE as JSON, else a string) replaces one parameter of the sections'
profile, e.g. ``--only batching --quick --param rounds=2 'servers=["msting (defaults)"]'``. A run rewrites
the generated blocks of docs/benchmarks.md and the plots in docs/img/, and writes the raw
figures to bench/results/run.json (``run.quick.json``; with ``--only``, into the last run's
file, the other sections kept).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import batching
import harness as h
import ops
import overhead
import proxy
import report as r
import service
import suite
import switch

SECTIONS: dict[str, Any] = {"memory_cli": suite.MEMORY, "overhead": overhead, "concurrency": suite.CONCURRENCY, "service": service,
                            "switch": switch, "proxy": proxy, "batching": batching, "ops": ops}
DOC_ORDER = ["service", "overhead", "switch", "proxy", "batching", "concurrency", "memory_cli", "ops"]  # the page's order
SECTIONS["downloads"] = __import__("downloads"); DOC_ORDER.append("downloads")  # noqa: E702  (bench/downloads.py)
SECTIONS["policy"] = __import__("policy"); DOC_ORDER.append("policy")  # noqa: E702  (bench/policy.py)
TARGET_LARGE_RATIO = 0.98  # decode tokens/s over in process on the 26M model, where the engine dominates


def measure(key: str, mode: str, wait: float, params: dict | None = None) -> dict:
    """One section: its parts in order, then every process it started stopped; `params`
    replace those of its profile."""
    mod = SECTIONS[key]
    p = {**mod.PROFILES[mode], **(params or {})}
    if wait:
        h.wait_quiet(wait)
    res: dict[str, Any] = {"mode": mode, "params": p, "machine": h.machine(), "started_at": h.now(),
                           "errors": [], "foreign_load": {"before": h.foreign_load()}}
    t0 = time.time()
    try:
        for name, fn in mod.parts(p, res) if hasattr(mod, "parts") else [(None, lambda: mod.bench(p, res))]:
            print(f"[{key}{'/' + name if name else ''}]", flush=True)
            ok, out = h.attempt(fn, res["errors"], section=key, part=name)
            if ok:
                res.update(out) if name is None else res.__setitem__(name, out)
    finally:
        res["leftover_pids_killed"] = h.cleanup_all()
    res["foreign_load"]["after"] = h.foreign_load()
    if h.foreign_names(res["foreign_load"]):
        print(f"  WARNING: other programs were running: {h.foreign_names(res['foreign_load'])}", flush=True)
    res.update(finished_at=h.now(), duration_sec=round(time.time() - t0, 1))
    return res


# ---- the summary ----------------------------------------------------------------------------


def targets(res: dict) -> dict[str, list[list[str]]]:
    """The targets' rows, by the section they come from."""
    groups: dict[str, list[list[str]]] = {SECTIONS[k].TITLE[3:]: [] for k in ("overhead", "batching", "concurrency", "service", "memory_cli", "switch",
                                                                          "proxy")}
    yes = r.yes
    rows = groups[overhead.TITLE[3:]]
    for key, model in ((res.get("overhead") or {}).get("models") or {}).items():
        name = model["model"]["name"]
        for v in ("msting_uds", "msting_tcp", "msting_uds_stream", "msting_tcp_stream"):
            t = model["tps"].get(v)
            if t:
                target = TARGET_LARGE_RATIO if key == "large" else t["target_ratio"]
                rows.append([f"decode tok/s ÷ in process ({t['label'].replace('msting /v1/completions, ', '')}) [{name}]",
                             f"{t['ratio_cc']:.3f} (paired min {t['ratio_cc_paired']['min']:.2f}, max {t['ratio_cc_paired']['max']:.2f})",
                             f">= {target:.2f}", yes(t["ratio_cc"] >= target)])
        rows += [[f"↳ peer: {t['label']} [{name}]", f"{t['ratio_cc']:.3f}", "", ""]
                 for t in (model["tps"].get(v) for v in ("llamasrv", "llamasrv_stream")) if t]
        tt = model["ttft"]
        raw, hx, base, peer, own = (tt.get(k) or {} for k in ("msting_uds_raw", "msting_uds_stream", "inproc_cc_stream", "llamasrv_stream", "reject_httpx"))
        if "target_added_ms" in raw:
            rows.append([f"time to first token added over in process, p50 / p95, Unix socket, raw client [{name}]",
                         f"{raw['added_p50_ms']:+.2f} / {raw['added_p95_ms']:+.2f} ms (in process {base['p50']:.2f} / {base['p95']:.2f} ms)",
                         f"<= +{raw['target_added_ms']:g} ms", yes(raw["met"])])
        if "added_p50_ms" in hx:
            rows.append([f"↳ the same with httpx [{name}]", f"{hx['added_p50_ms']:+.2f} / {hx['added_p95_ms']:+.2f} ms"
                         + (f"; httpx's own share {own['httpx_own_p50_ms']:+.2f} / {own['httpx_own_p95_ms']:+.2f} ms" if "httpx_own_p50_ms" in own else "")
                         + (f"; llama_cpp.server with httpx {peer['added_p50_ms']:+.2f} / {peer['added_p95_ms']:+.2f} ms" if "added_p50_ms" in peer else ""),
                         "", ""])
    rows = groups[suite.CONCURRENCY.TITLE[3:]]
    for key, c in ((res.get("concurrency") or {}).get("models") or {}).items():
        if c.get("missing"):
            continue
        for name, s in c["servers"].items():
            req, ok = (sum(lv[k] for lv in s["levels"].values()) for k in ("requests", "complete"))
            rows.append([f"complete replies under 1-8 concurrent clients, {name} [{key}]", f"{ok}/{req}", "all", yes(ok == req)])
        sc = c.get("replica_scaling") or {}
        if sc:
            multi = [sc.get(str(k)) for k in suite.LEVELS if k >= 2 and sc.get(str(k)) is not None]
            met = sum(1 for v in multi if v >= suite.TARGET_REPLICA_SCALING)
            rows.append([f"aggregate tok/s, replicas 2 ÷ replicas 1 [{key}]", f"1/2/4/8 clients: {suite.scaling_line(c)}",
                         f">= {suite.TARGET_REPLICA_SCALING} at 2+ clients, where cores allow ({res['machine']['logical_cores']} cores)",
                         "yes" if multi and met == len(multi) else f"**{met} of {len(multi)} levels**"])
    svc, limit = res.get("service") or {}, service.HEALTH_TARGET_MS
    rows = groups[service.TITLE[3:]]

    def health(label: str, x: dict | None, raw: dict | None, floor: dict | None, load: str) -> None:
        if x:
            rows.append([label, f"{x['p50']:.2f} / {x['p99']:.2f} ms", f"p99 <= {limit:g} ms", yes(x["p99"] is not None and x["p99"] <= limit)])
        for text, y in ((f"↳ the daemon's share: same {load}, hand-written HTTP on a raw socket", raw),
                        (f"↳ the client's floor: same {load}, httpx against a do-nothing server", floor)):
            if y and y.get("p99") is not None:
                rows.append([text, f"{y['p50']:.2f} / {y['p99']:.2f} ms", "", ""])

    for s in (svc.get("service") or {}).values():
        health(f"/health under load p50 / p99 [{s['model']['name']}] (httpx client)", s["health_under_load"],
               s.get("health_under_load_raw_socket"), s.get("health_under_load_httpx_reference"), "load")
    churn = svc.get("health_churn")
    if churn:
        health("/health while a model loads p50 / p99 (non-ready samples, httpx client)", churn["not_ready"], churn.get("not_ready_raw_socket"),
               churn.get("httpx_reference_all"), "churn")
    inst = svc.get("install")
    if inst:
        rows.append(["cold start to ready: install / start (medians)", f"{inst['install_sec']['median']:.2f} / {inst['start_sec']['median']:.2f} s", "", ""])
    for s in (svc.get("service") or {}).values():
        rec = s["recovery"]
        rows.append([f"kill -9 of the worker -> serving again [{s['model']['name']}]", f"{rec['recovery_ms']['median']:.0f} ms (median)",
                     "< load_ms + 1.5 s", yes(rec["runs_met"] == rec["runs"])])
    rows = groups[suite.MEMORY.TITLE[3:]]
    mc = res.get("memory_cli") or {}
    cli, idle = mc.get("cli"), mc.get("idle_daemon")
    if cli:
        rows.append(["`msting llm status --json` ÷ `python -c \"import typer, httpx\"` (medians)",
                     f"{cli['ratio']:.2f} ({cli['status_ms']['median']:.0f} / {cli['imports_ms']['median']:.0f} ms)",
                     f"<= {suite.TARGET_CLI_RATIO}", yes(cli["ratio"] <= suite.TARGET_CLI_RATIO)])
    if idle:
        rss = idle["daemon"]["rss"] / 2**20
        rows.append(["daemon RSS, no model loaded", f"{rss:.1f} MB", f"<= {suite.TARGET_DAEMON_RSS_MB:g} MB", yes(rss <= suite.TARGET_DAEMON_RSS_MB)])
    sw = ((res.get("switch") or {}).get("loaded") or {}).get("summary")
    if sw:
        groups[switch.TITLE[3:]].append(["profile switch under load: switch time (median) / failed requests",
                     f"{sw['duration_ms']['median']:.0f} ms / {sw.get('failed')} of {sw.get('requests')}", "0 failed", yes(sw.get("failed") == 0)])
    for mod in (proxy, batching):
        if res.get(mod.KEY):
            groups[mod.TITLE[3:]] += mod.summary_rows(res[mod.KEY])
    return {title: rows for title, rows in groups.items() if rows}


def summary_blocks(res: dict, imgs: list[str]) -> list:
    line = (f"**Latest run:** `bench/run.py{' --quick' if res['mode'] == 'quick' else ''}` ({res['mode']}, {res['finished_at']}, "
            f"{res['duration_sec'] / 60:.1f} min) on {r.machine_line(res['machine'])}; code at {r.code_line(res)}."
            + "".join(f" Re-run later with `--only {' '.join(x['sections'])}` ({x['started_at']}, commit `{(x.get('machine') or x.get('source') or {}).get('git_head')}`): "
                      "those rows come from the re-run." for x in res.get("reruns", [])))
    failed = [f"`{e['section']}`: {e['error'].splitlines()[0][:200]}" for e in res.get("errors", [])]
    tables = [x for title, rows in targets(res).items() for x in (f"**{title}**", r.Table(["measurement", "this run", "target", "met"], rows, "l"))]
    return [line, *tables,
            "Sections that failed in this run: " + "; ".join(failed) + "." if failed else "",
            "\n\n".join(f"![{Path(img).stem}]({img})" for img in imgs)]


def plots(res: dict, folder: Path) -> list[str]:
    """The PNG files written, relative to the page."""
    plt = r.pyplot()
    if plt is None:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    out, m = [], res["machine"]
    conc = {k: v for k, v in ((res.get("concurrency") or {}).get("models") or {}).items() if not v.get("missing")}
    if conc:
        fig, axes = plt.subplots(1, len(conc), figsize=(6 * len(conc), 4.2), squeeze=False)
        for ax, c in zip(axes[0], conc.values()):
            for name, s in c["servers"].items():
                a = [s["levels"][str(x)]["agg_tps"] for x in suite.LEVELS]
                ax.errorbar(suite.LEVELS, [v["median"] for v in a], yerr=[[v["median"] - v["min"] for v in a], [v["max"] - v["median"] for v in a]],
                            marker="o", capsize=3, label=name)
            ax.set_xscale("log", base=2)
            ax.set_xticks(suite.LEVELS, [str(x) for x in suite.LEVELS])
            ax.set(xlabel="concurrent clients", ylabel="aggregate completion tokens/s")
            ax.set_title(f"{c['file']} (max_tokens {c['max_tokens']})", fontsize=10)
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(f"Throughput against concurrency: median, min-max ({m['cpu']}, {m['logical_cores']} cores)", fontsize=10)
        fig.tight_layout()
        fig.savefig(folder / "concurrency.png", dpi=110)
        plt.close(fig)
        out.append("img/concurrency.png")
    ov = (res.get("overhead") or {}).get("models") or {}
    if ov:
        paths = ["msting_uds", "msting_tcp", "msting_uds_stream", "msting_tcp_stream", "llamasrv", "llamasrv_stream"]
        labels = ["msting UDS", "msting TCP", "msting UDS\nstream", "msting TCP\nstream", "llama_cpp\n.server", "llama_cpp\n.server stream"]
        fig, ax = plt.subplots(figsize=(9, 4.2))
        width = 0.8 / len(ov)
        for i, model in enumerate(ov.values()):
            ax.bar([j + i * width for j in range(len(paths))], [model["tps"][p]["ratio_cc"] if p in model["tps"] else 0 for p in paths], width,
                   label=model["model"]["name"])
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.axhline(0.95, color="tab:red", lw=0.8, ls="--", label="0.95 target")
        ax.set_xticks([j + width * (len(ov) - 1) / 2 for j in range(len(paths))], labels, fontsize=8)
        ax.set_ylabel("decode tokens/s ÷ in-process create_completion")
        ax.set_title("Serving overhead: ratio of medians to in process (same stream mode)", fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        fig.savefig(folder / "overhead.png", dpi=110)
        plt.close(fig)
        out.append("img/overhead.png")
    return out


def section_blocks(res: dict, key: str) -> list:
    mod = SECTIONS[key]
    return mod.blocks(res if getattr(mod, "WHOLE_RUN", False) else res[key])


def write_docs(res: dict, folder: Path) -> None:
    """The generated blocks of `folder`/benchmarks.md (and the plots in `folder`/img) of
    every section in `res` that did not fail."""
    page = r.page(folder, "benchmarks.md")
    r.write_block(page, "summary", r.md(summary_blocks(res, plots(res, folder / "img"))))
    for key in DOC_ORDER:
        if res.get(key) and not res[key].get("errors"):
            if hasattr(SECTIONS[key], "plot"):  # a section's own plot, shown in its block
                SECTIONS[key].plot(res[key], folder / "img")
            r.write_block(page, key, r.md(section_blocks(res, key)), SECTIONS[key].TITLE)
    print(f"updated {page}")


def parse_param(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise SystemExit(f"--param {text!r}: expected KEY=VALUE")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def main(argv: list[str] | None = None) -> int:
    ap = r.parser(__doc__, list(SECTIONS), "only these sections, merged into the last run's results",
                  "fewer repetitions and tokens (1-2 minutes)", "benchmarks.md and img/")
    ap.add_argument("--wait-quiet", type=float, default=0, metavar="S",
                    help="before each section, wait up to S seconds until no other pytest/msting/busy program runs")
    ap.add_argument("--param", nargs="+", default=[], metavar="KEY=VALUE", help="replace a parameter of the sections' profile (VALUE: JSON, else a string)")
    args = ap.parse_args(argv)
    params = dict(parse_param(x) for x in args.param)
    docs = args.docs.resolve() if args.docs else None
    if args.render:
        write_docs(json.loads(args.render.read_text()), docs or r.DOCS)
        return 0
    h.install_signal_handlers()
    h.KEEP = args.keep_homes
    mode = "quick" if args.quick else "full"
    sections = [k for k in SECTIONS if k in (args.only or SECTIONS)]
    t0 = time.time()
    res: dict[str, Any] = {"mode": mode, "sections": sections, "machine": h.machine(), "started_at": h.now(),
                           "errors": [], "llama_server_cpp": shutil.which("llama-server")}
    print(f"msting benchmarks ({mode}: {', '.join(sections)}) on {r.machine_line(res['machine'])}", flush=True)
    h.compile_msting()
    large = h.large_model()
    res["large_model"] = {"path": str(large), "size_bytes": large.stat().st_size, "dims": h.LARGE_DIMS}
    try:
        for key in sections:
            res[key] = measure(key, mode, args.wait_quiet, params)
            res["errors"] += res[key]["errors"]
            res.setdefault("section_sec", {})[key] = res[key]["duration_sec"]
            print(f"  [{key}] took {res[key]['duration_sec']:.0f} s", flush=True)
    finally:
        h.cleanup_all()
    res.update(finished_at=h.now(), duration_sec=round(time.time() - t0, 1))
    out = h.RESULTS / f"run{'.quick' if args.quick else ''}.json"
    if args.only and out.exists():  # a partial re-run: the other sections keep their figures from the last whole run
        previous = json.loads(out.read_text())
        previous.setdefault("reruns", []).append({k: res[k] for k in ("sections", "started_at", "machine", "duration_sec")})
        previous["errors"] = [e for e in previous.get("errors", []) if e.get("section") not in sections] + res["errors"]
        previous.setdefault("section_sec", {}).update(res.get("section_sec", {}))
        res = {**previous, **{k: res[k] for k in sections}}
    r.save(res, out)
    print("\n" + r.text(summary_blocks(res, [])))
    for key in DOC_ORDER:
        if key in sections:
            print(f"\n{SECTIONS[key].TITLE}\n\n" + r.text(section_blocks(res, key)))
    if not args.no_docs:
        write_docs(res, docs or r.DOCS)
    print(f"\n{mode} run took {(time.time() - t0) / 60:.1f} min")
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
