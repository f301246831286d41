"""completions/: every `llm` command and group of the CLI is offered by each shell's
completion (bash and fish run for real where they are installed; zsh's list is read)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from msting.cli.app import COMMANDS, GROUPS

COMPLETIONS = Path(__file__).resolve().parents[3] / "completions"
NAMES = set(COMMANDS) | set(GROUPS)


def _bash(words: str) -> set[str]:
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    script = (f"source {COMPLETIONS / 'msting.bash'}; COMP_WORDS=({words} ''); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); "
              "_msting; printf '%s\\n' \"${COMPREPLY[@]}\"")
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30, check=True).stdout
    return {w for w in out.split() if not w.startswith("-")}


def _fish(line: str) -> set[str]:
    if shutil.which("fish") is None:
        pytest.skip("fish is not installed")
    out = subprocess.run(["fish", "-c", f"source {COMPLETIONS / 'msting.fish'}; complete -C '{line}'"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return {row.split("\t")[0] for row in out.splitlines() if row and not row.startswith("-")}


def test_bash_offers_every_command():
    assert _bash("msting llm") == NAMES
    for group, (_, _, functions) in GROUPS.items():
        assert _bash(f"msting llm {group}") == set(functions)


def test_fish_offers_every_command():
    assert _fish("msting llm ") == NAMES
    for group, (_, _, functions) in GROUPS.items():
        assert _fish(f"msting llm {group} ") == set(functions)


def test_zsh_lists_every_command():
    text = (COMPLETIONS / "_msting").read_text()
    block = text[text.index("cmds=(") : text.index("\n    )", text.index("cmds=("))]
    assert set(re.findall(r"'([a-z-]+):", block)) == NAMES
    for _, _, functions in GROUPS.values():
        assert all(f"'{f}:" in text for f in functions)
