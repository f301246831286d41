#!/usr/bin/env bash
# The system programs some tests drive, installed with apt-get where it can be used:
#   chromium    the debug page's test runs it headless through Playwright
#               (tests/e2e/test_debug_page.py; Playwright's own browser download is not used)
#   prometheus  a real Prometheus scrapes /metrics (tests/e2e/test_metrics.py)
# Part of the README's test command (and .ci/run). Nothing happens when both are there.
# Without apt-get, or without root or password-less sudo, it says so and those tests skip;
# an apt-get that can run but fails is an error.
set -euo pipefail

missing=()
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || missing+=(chromium)
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
    echo "test-deps: no apt-get here: install ${missing[*]} yourself, or the tests that need them skip" >&2
    exit 0
fi
as_root=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        as_root=(sudo -n)
    else
        echo "test-deps: not root: run 'sudo apt-get install ${missing[*]}', or the tests that need them skip" >&2
        exit 0
    fi
fi
echo "test-deps: apt-get install ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
${as_root[@]+"${as_root[@]}"} apt-get update -qq
${as_root[@]+"${as_root[@]}"} apt-get install -y -qq "${missing[@]}" >/dev/null
