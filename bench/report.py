"""The one reporter of the benches: tables (markdown for the docs and plain text for the
terminal, from the same rows), the generated blocks of docs/benchmarks.md and
docs/reliability.md, and the JSON results.

A page is written by hand except between ``<!-- generated: KEY -->`` and
``<!-- /generated: KEY -->``: a bench replaces what is between its markers and nothing else.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from harness import RESULTS, ROOT, foreign_names

DOCS = ROOT / "docs"


class Table:
    """`align`: one letter per column, "l" or "r"; the last letter goes for the columns after it.
    Cells are markdown; the text form drops ``&nbsp;``."""

    def __init__(self, head: list[str], rows: list[list[Any]], align: str = "lr"):
        self.head = head
        self.rows = [[str(c) for c in r] for r in rows]
        self.align = (align + align[-1] * len(head))[:len(head)]

    def md(self) -> str:
        lines = ["| " + " | ".join(self.head) + " |", "|" + "|".join("---" if a == "l" else "---:" for a in self.align) + "|"]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in self.rows]
        return "\n".join(lines)

    def text(self) -> str:
        cells = [self.head] + [[c.replace("&nbsp;", " ") for c in r] for r in self.rows]
        widths = [max(len(r[i]) for r in cells) for i in range(len(self.head))]
        lines = ["  ".join(x.ljust(w) if a == "l" else x.rjust(w) for x, w, a in zip(r, widths, self.align)).rstrip() for r in cells]
        return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def md(blocks: list[Any], text: bool = False) -> str:
    """Blocks (paragraphs, lists, tables) separated by blank lines."""
    return "\n\n".join((b.text() if text else b.md()) if isinstance(b, Table) else b for b in blocks if b)


def text(blocks: list[Any]) -> str:
    return md(blocks, True)


def page(folder: Path, name: str) -> Path:
    """`folder`/`name`; a folder other than docs/ starts from a copy of the page, for the text around the blocks."""
    out = folder / name
    folder.mkdir(parents=True, exist_ok=True)
    if not out.exists() and (DOCS / name).exists():
        shutil.copy(DOCS / name, out)
    return out


def write_block(page: Path, key: str, content: str, title: str = "") -> None:
    """Replace the generated block `key` of `page` (re-read right before writing); a page
    without it gets it at the end, under `title`."""
    start, end = f"<!-- generated: {key} -->", f"<!-- /generated: {key} -->"
    old = page.read_text() if page.exists() else ""
    block = f"{start}\n\n{content.strip()}\n\n{end}"
    if start in old and end in old:
        new = old[:old.index(start)] + block + old[old.index(end) + len(end):]
    else:
        new = old.rstrip("\n") + "\n\n" + (f"{title}\n\n" if title else "") + block + "\n"
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(new)


def machine_line(m: dict) -> str:
    return (f"{m['cpu']}, {m['logical_cores']} logical cores ({m['physical_cores']} physical), {m['memory_gib']} GiB RAM, "
            f"{m['os']}, Python {m['python']}, llama-cpp-python {m['llama_cpp_python']}")


def code_line(res: dict) -> str:
    """Which code ran: the commit, uncommitted changes under src/, another msting on PYTHONPATH."""
    m = {**(res.get("source") or {}), **(res.get("machine") or {})}  # older results keep some of it under "source"
    if m.get("pythonpath"):
        return f"msting from `{m.get('msting_module')}` (PYTHONPATH), checkout at commit `{m.get('git_head')}`"
    return f"commit `{m.get('git_head')}`" + (" with uncommitted changes under `src/`" if m.get("src_uncommitted_changes") or m.get("src_dirty") else "")


def run_line(res: dict, script: str) -> str:
    """**Latest run:** of one section."""
    return (f"**Latest run:** `{script}` ({res['mode'].removeprefix('suite-')}, {res['finished_at']}, {res['duration_sec']:.0f} s) on "
            f"{machine_line(res['machine'])}; code at {code_line(res)}.")


def describe(m: dict | None) -> str:
    """A model as the pages name it."""
    if not m:
        return "?"
    src = m.get("source") or ""
    size = f"{m['size_bytes'] / 1e6:.2f} MB" if m.get("size_bytes") else "?"
    params = f"{m['n_params'] / 1e3:.0f}K params" if m.get("n_params") else ""
    return (f"`{m.get('name')}` ({src if src.startswith('builtin') else Path(src).name}, {m.get('arch')}, {params}, {size}, "
            f"n_ctx {m.get('n_ctx')}, {threads_text(m)}, {m.get('backend')})")


def threads_text(m: dict) -> str:
    """The threads each worker chose (`2 threads`; `2 and 1 threads (per worker)` for replicas that
    differ); the spec's count for older results that kept no worker's."""
    chosen = sorted(set(m.get("worker_threads") or ([m["n_threads"]] if m.get("n_threads") is not None else [])), reverse=True)
    if not chosen:
        return "threads measured by the worker"
    return f"{' and '.join(map(str, chosen))} thread{'' if chosen == [1] else 's'}" + (" (per worker)" if len(chosen) > 1 else "")


def bullets(items: list[str]) -> str:
    return "\n".join(f"- {x}" for x in items if x)


def notes(items: list[str]) -> str:
    return f"Notes:\n\n{bullets(items)}" if items else ""


def common_notes(res: dict) -> list[str]:
    """Other programs seen around the run, and the parts that failed."""
    out = []
    names = foreign_names(res.get("foreign_load") or {})
    if names:
        out.append(f"Other programs were running on this machine at the start or end of the run "
                   f"({', '.join(f'`{n}`' for n in names)}): the numbers are likely pessimistic.")
    for e in res.get("errors") or []:
        out.append(f"`{e.get('part') or e.get('section')}` failed: {str(e.get('error')).splitlines()[0][:300]}" if isinstance(e, dict) else f"Failed: {e}")
    return out


def yes(ok: bool | None) -> str:
    return "-" if ok is None else ("yes" if ok else "**NO**")


def parser(doc: str, only: list[str], only_help: str, quick_help: str, page_name: str) -> argparse.ArgumentParser:
    """The options run.py and chaos.py share."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help=quick_help)
    ap.add_argument("--only", nargs="+", choices=only, help=only_help)
    ap.add_argument("--docs", type=Path, metavar="DIR", help=f"write {page_name} there instead of docs/")
    ap.add_argument("--no-docs", action="store_true", help=f"do not write {page_name}")
    ap.add_argument("--render", type=Path, metavar="JSON", help=f"only rewrite {page_name} from saved results")
    ap.add_argument("--keep-homes", action="store_true", help="keep the temporary MSTING_HOMEs and server logs for inspection")
    return ap


def pyplot() -> Any:
    """matplotlib.pyplot drawing to files, or None (with a word why) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        import sys

        print("matplotlib is not installed (pip install -e '.[bench]'): no plots", file=sys.stderr)
        return None
    return plt


def save(res: dict, path: Path) -> Path:
    """Write the results; a run with errors goes to ``*.failed.json``, never over a good run's."""
    out = path if not res.get("errors") else path.with_name(path.stem + ".failed.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=str) + "\n")
    print(f"wrote {out}")
    return out


def run_own_section(key: str, title: str, blocks: Any, argv: list[str]) -> int:
    """`bench/run.py --only KEY ARGS` for a section's own script, then write only that
    section's block of docs/benchmarks.md (the other sections' blocks are left as they are)."""
    import run

    code = run.main(["--only", key, "--no-docs", *argv])
    saved = RESULTS / f"run{'.quick' if '--quick' in argv else ''}.json"
    if "--no-docs" not in argv and saved.exists():
        res = json.loads(saved.read_text())
        if res.get(key) and not res[key].get("errors"):
            page_path = page(DOCS, "benchmarks.md")
            write_block(page_path, key, md(blocks(res[key])), title)
            print(f"updated {page_path}")
    return code
