"""msting.timeslice.LoopSlice: the event loop's slice follows whether local workers are up.
Run on a throwaway thread (a slice is per thread), with the real sched_setattr."""

from __future__ import annotations

import threading

from msting.timeslice import SLICE_US, LoopSlice, current_slice_ns


def _on_a_thread(fn) -> dict:
    out: dict = {}
    thread = threading.Thread(target=lambda: out.update(fn()))
    thread.start()
    thread.join()
    return out


def test_the_shortest_slice_while_workers_are_up_the_default_while_none_is() -> None:
    def run() -> dict:
        reports: list[str] = []
        ls = LoopSlice(reports.append)
        got = {"default": current_slice_ns()}
        ls.serving(1)
        got["one"] = current_slice_ns()
        ls.serving(2)
        ls.serving(1)  # still up: nothing to change, nothing reported
        got["reports_while_up"] = list(reports)
        ls.serving(0)
        got["none"] = current_slice_ns()
        got["reports"] = reports
        got["short_after"] = ls.short
        return got

    got = _on_a_thread(run)
    assert len(got["reports_while_up"]) == 1 and len(got["reports"]) == 2
    assert got["short_after"] is False
    if not got["reports"][0].startswith(f"{SLICE_US} µs time slice"):
        return  # the kernel has no custom slices (Linux < 6.12): the reports say so, nothing else to see
    assert got["one"] == SLICE_US * 1000
    assert got["none"] == got["default"]
    assert got["reports"][1].startswith("default time slice")
