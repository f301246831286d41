"""How jobs, search results and model details read on a terminal (msting llm jobs, pull,
search, models). The JSON is the daemon's, as is; these are the text renderings."""

from __future__ import annotations

import io

from rich.console import Console

from msting.cli.jobs_view import (JobDisplay, error_text, fmt_eta, fmt_progress, fmt_rate, installed_line, job_row, job_subject,
                                  print_jobs)
from msting.cli.manage import fmt_files, fmt_number, is_source, print_search
from msting.cli.models import describe_details, features, fmt_count
from msting.cli.output import Terminal

MiB = 1024 * 1024
RUNNING = {"id": "job-1a2b3c", "type": "install", "state": "running", "params": {"source": "hf://org/tiny-GGUF:Q4_K_M"},
           "step": "downloading", "steps": [], "error": None, "result": None, "created_at": 1000.0,
           "progress": {"bytes_done": 54 * MiB, "bytes_total": 120 * MiB, "rate_bps": 12 * MiB, "eta_sec": 5.5}}
FAILED = {**RUNNING, "id": "job-9", "state": "failed", "step": None,
          "error": {"code": "checksum_mismatch", "message": "the sha256 of the file is 00ff..., not 1234..."},
          "progress": {"bytes_done": 120 * MiB, "bytes_total": 120 * MiB, "rate_bps": None, "eta_sec": None}}
SWITCH = {"id": "job-s", "type": "switch", "state": "succeeded", "params": {"profile": "fast"}, "step": None, "created_at": 900.0,
          "progress": {"bytes_done": 0, "bytes_total": None, "rate_bps": None, "eta_sec": None, "fraction": 1.0}, "error": None}
DETAILS = {"type": "llm", "arch": "qwen2", "quantization": "Q4_K_M", "context_length": 32768, "n_params": 1_543_714_304,
           "size_bytes": 986 * MiB, "instructed": True, "tooling": True, "coding": True, "is_gguf": True, "is_mlx": False,
           "pooling": None, "projector": None}


class Captured(Terminal):
    """A Terminal whose consoles write to strings (not a terminal: no live display)."""

    def __init__(self, json_mode: bool = False) -> None:
        super().__init__(json_mode)
        self.buffer = io.StringIO()
        self._out = self._err = Console(file=self.buffer, width=200, highlight=False, color_system=None)

    @property
    def text(self) -> str:
        return self.buffer.getvalue()


def test_progress_reads_bytes_rate_and_eta_while_it_runs() -> None:
    assert fmt_progress(RUNNING) == "45% of 120.0 MiB, 12.0 MiB/s, ETA 0:06"
    assert fmt_progress(FAILED) == "120.0 MiB"  # over: the bytes it moved
    assert fmt_progress(SWITCH) == "-"  # a job that moves no bytes
    unknown_total = {**RUNNING, "progress": {"bytes_done": 3 * MiB, "bytes_total": None, "rate_bps": None, "eta_sec": None}}
    assert fmt_progress(unknown_total) == "3.0 MiB"


def test_eta_and_rate_formats() -> None:
    assert fmt_eta(0) == "0:00" and fmt_eta(65.4) == "1:05" and fmt_eta(3723) == "1:02:03"
    assert fmt_eta(None) == "-" and fmt_eta(-1) == "-"
    assert fmt_rate(1536) == "1.5 KiB/s" and fmt_rate(None) == "-"


def test_a_job_row_names_what_it_works_on_and_its_error() -> None:
    assert job_row(RUNNING, now=1065.0) == ["job-1a2b3c", "install", "running", "hf://org/tiny-GGUF:Q4_K_M", "downloading",
                                            "45% of 120.0 MiB, 12.0 MiB/s, ETA 0:06", "1m ago", ""]
    assert error_text(FAILED) == "the sha256 of the file is 00ff..., not 1234... (checksum_mismatch)"
    assert error_text({"error": "interrupted"}) == "interrupted"  # a job saved by an older daemon
    assert job_subject(SWITCH) == "fast"
    assert job_subject({"type": "import", "params": {"path": "/m/a.gguf", "name": "a"}}) == "/m/a.gguf"


def test_jobs_table() -> None:
    term = Captured()
    print_jobs(term, [RUNNING, FAILED, SWITCH])
    lines = term.text.splitlines()
    assert lines[0].split() == ["id", "type", "state", "step", "progress", "created", "what"]
    assert "job-1a2b3c" in term.text and "checksum_mismatch" in term.text and "switch" in term.text
    empty = Captured()
    print_jobs(empty, [])
    assert empty.text == "no jobs\n"


def test_the_display_prints_each_step_once_off_a_terminal() -> None:
    term = Captured()
    with JobDisplay(term, "pull x") as display:
        assert display.live is False
        display.update({**RUNNING, "step": "resolving", "progress": {"bytes_done": 0, "bytes_total": None}})
        display.update(RUNNING)
        display.update({**RUNNING, "progress": {**RUNNING["progress"], "bytes_done": 60 * MiB}})
        display.update({**RUNNING, "step": "verifying"})
        display.update({**RUNNING, "state": "succeeded", "step": None})
    assert term.text.splitlines() == ["  resolving", "  downloading (120.0 MiB)", "  verifying (120.0 MiB)", "  succeeded"]


def test_installed_line() -> None:
    result = {"model": "tiny", "path": "/d/models/tiny.gguf", "sha256": "1a2b3c4d5e6f" + "0" * 52, "size_bytes": 1_185_376}
    assert installed_line(result) == "'tiny' (1.1 MiB, sha256 1a2b3c4d5e6f…) at /d/models/tiny.gguf"
    assert installed_line({"model": "x"}) == "'x'"


def test_model_details_in_words() -> None:
    assert features(DETAILS) == ["chat", "tools", "code"]
    assert features({"type": "vlm"}) == ["vision"] and features({"type": "embeddings"}) == ["embeddings"]
    assert describe_details(DETAILS) == "llm, qwen2, Q4_K_M, 1.5B params, context 32768, 986.0 MiB; chat, tools, code"
    assert fmt_count(292_800) == "293K" and fmt_count(1_000_000) == "1M" and fmt_count(7_241_732_096) == "7.2B"
    assert fmt_count(512) == "512" and fmt_count(None) == "-"


def test_search_results() -> None:
    found = [{"id": "org/Tiny-GGUF", "source": "hf://org/Tiny-GGUF", "downloads": 1_234_567, "likes": 35,
              "files": ["tiny-Q4_K_M.gguf", "tiny-Q8_0.gguf", "tiny-F16.gguf", "tiny-F32.gguf"]},
             {"id": "org/other", "source": "hf://org/other", "downloads": None, "likes": None, "files": None}]
    term = Captured()
    print_search(term, "tiny", found)
    assert "hf://org/Tiny-GGUF" in term.text and "1.2M" in term.text
    assert "tiny-Q4_K_M.gguf, tiny-Q8_0.gguf, tiny-F16.gguf (+1 more)" in term.text
    assert "`msting llm pull SOURCE`" in term.text
    assert fmt_files([{"rfilename": "a.gguf"}]) == "a.gguf" and fmt_files(None) == "-"
    assert fmt_number(1000) == "1K" and fmt_number(999) == "999" and fmt_number(None) == "-"
    none = Captured()
    print_search(none, "zzz", [])
    assert none.text == "no models match 'zzz'\n"


def test_sources() -> None:
    for source in ("hf://org/repo", "hf://org/repo/f.gguf", "HF://org/repo:Q4_K_M", "ollama://tiny:latest",
                   "https://host/f.gguf", "http://127.0.0.1:8000/f.gguf"):
        assert is_source(source), source
    for text in ("tiny.gguf", "/abs/tiny.gguf", "ftp://host/f.gguf", "hf://", "hf:///", "org/repo"):
        assert not is_source(text), text


def test_models_table_shows_what_each_file_is() -> None:
    from msting.cli.models import merge_models, print_models

    listed = [{"id": "qwen", "type": "llm", "state": "ready", "context_length": 4096, "aliases": [], "details": DETAILS},
              {"id": "remote", "type": "llm", "state": "available", "context_length": None, "aliases": [], "details": None}]
    rows = merge_models(listed, [])
    assert rows[0]["details"] == DETAILS and rows[1]["details"] is None
    term = Captured()
    print_models(term, {"profile": "default", "default_model": "qwen", "models": rows})
    header = term.text.splitlines()[1].split()
    assert header[:7] == ["model", "type", "state", "context", "quant", "params", "features"]
    qwen = next(line for line in term.text.splitlines() if line.startswith("qwen"))
    assert "Q4_K_M" in qwen and "1.5B" in qwen and "chat, tools, code" in qwen
