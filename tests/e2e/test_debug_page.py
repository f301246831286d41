"""The debug page (/debug) in a real headless Chromium (Debian's `chromium`, driven by
Playwright with `executable_path`: Playwright's own browser download cannot work here),
against a real daemon with an API key: it asks for the key, shows "ready", runs the
readiness checks and shows each step, restarts a model and watches it come back.

`MSTING_DEBUG_SCREENSHOT=path` saves a screenshot of the page (docs/debug-page.png is one).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile

import pytest
import yaml
from daemon_home import DaemonHome

pytestmark = pytest.mark.e2e

KEY = "debug-page-key-5b7e"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def launch(playwright, profile_dir: str):
    """Chromium with a fresh user-data directory."""
    return playwright.chromium.launch_persistent_context(profile_dir, executable_path=CHROMIUM, headless=True,
                                                         args=CHROMIUM_ARGS, viewport={"width": 1280, "height": 900})


@pytest.fixture
def keyed_daemon():
    dh = DaemonHome()
    dh.write_config()
    dh.env["LLM_API_KEY"] = KEY
    dh.start()
    yield dh
    dh.cleanup()


def test_the_page_is_served_on_both_listeners_without_data(keyed_daemon: DaemonHome):
    with keyed_daemon.tcp_client() as c:
        page = c.get("/debug")
        feed = c.get("/debug/feed")
        other = c.get("/debug", headers={"Host": "evil.example"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "'unsafe-inline'" not in page.headers["content-security-policy"]
    assert "http://" not in page.text and "https://" not in page.text  # no external asset, no CDN
    assert "msting-tiny" not in page.text  # the shell holds no data: that comes with the key
    assert feed.status_code == 401 and other.status_code == 403
    with keyed_daemon.client() as c:  # the Unix socket: no key, the same page and a live feed
        assert c.get("/debug").content == page.content
        with c.stream("GET", "/debug/feed") as r:
            assert r.status_code == 200
            line = next(line for line in r.iter_lines() if line.startswith("data: "))
    state = json.loads(line[len("data: "):])
    assert state["status"]["readiness"]["status"] == "ready"
    assert [m["name"] for m in state["status"]["models"]] == ["msting-tiny"]
    assert any("daemon" in entry for entry in state["log"])


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (Debian's chromium package: scripts/test-deps.sh)")
def test_in_chromium_ready_checks_and_a_model_restart(keyed_daemon: DaemonHome):
    from playwright.sync_api import expect, sync_playwright

    dh = keyed_daemon
    profile = tempfile.mkdtemp(prefix="chromium-")
    problems: list[str] = []
    try:
        with sync_playwright() as p:
            browser = launch(p, profile)
            page = browser.new_page()
            page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(f"{dh.url}/debug")

            # The key is asked for, kept in sessionStorage and sent as a header
            expect(page.locator("#key-form")).to_be_visible(timeout=30_000)
            page.fill("#key", KEY)
            page.click("#key-form button[type=submit]")
            expect(page.locator("#readiness")).to_have_text("ready", timeout=30_000)
            expect(page.locator("#conn")).to_have_text("live")
            # before the key: the feed's and the profile list's 401s, nothing else
            assert problems and all("status of 401" in m for m in problems), problems
            problems.clear()
            assert page.evaluate("sessionStorage.getItem('msting-api-key')") == KEY
            row = page.locator("tr[data-model='msting-tiny']")
            expect(row.locator("td.state")).to_have_text("ready")
            expect(page.locator("#profile")).to_have_text("default")
            expect(page.locator("#services tr[data-service='local']")).to_contain_text("ready")
            expect(page.locator("#log")).to_contain_text("daemon")

            # The readiness checks, each step's result and timing
            page.click("#run-checks")
            checks = page.locator("#checks tbody tr")
            expect(checks).to_have_count(3, timeout=60_000)
            for name in ("health", "load", "generate"):
                expect(page.locator(f"#checks tr[data-check='{name}'] td.result")).to_have_text("passed")
            expect(page.locator("#message")).to_have_text("all readiness checks passed")

            # Restart the model: confirmation first, then it goes away and comes back
            old_pid = dh.worker_pids()[0]
            row.locator("button[data-action='restart-model']").click()
            expect(page.locator("#confirm")).to_be_visible()
            page.click("#confirm-cancel")  # cancelling does nothing
            assert dh.worker_pids() == [old_pid]
            row.locator("button[data-action='restart-model']").click()
            page.click("#confirm-ok")
            expect(page.locator("#message")).to_contain_text("is restarting", timeout=30_000)
            # the worker is replaced (with the warm spare this can take less than one feed
            # interval, so the row need not ever be seen in a state other than ready)
            expect(row).not_to_contain_text(re.compile(rf"pid {old_pid}\b"), timeout=60_000)
            expect(row.locator("td.state")).to_have_text("ready", timeout=60_000)
            expect(page.locator("#readiness")).to_have_text("ready", timeout=30_000)
            expect(page.locator("#events")).to_contain_text("model_restart", timeout=30_000)
            new_pid = dh.worker_pids()[0]
            assert new_pid != old_pid
            expect(row).to_contain_text(f"pid {new_pid}")

            paint = page.evaluate("performance.getEntriesByName('first-contentful-paint')[0].startTime")
            assert paint > 0
            shot = os.environ.get("MSTING_DEBUG_SCREENSHOT")
            if shot:
                page.locator("#checks").scroll_into_view_if_needed()
                page.screenshot(path=shot, full_page=True)
            browser.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert not problems, problems  # no CSP violation, no script error
    assert all(KEY not in url for url in requests), "the API key went into a URL"
    assert KEY not in dh.log_file.read_text()


ALT = {"description": "a second tiny model", "default_model": "alt-tiny",
       "models": {"alt-tiny": {"source": "builtin:tiny", "n_ctx": 1024}}}


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (Debian's chromium package: scripts/test-deps.sh)")
def test_in_chromium_a_profile_switch_then_a_daemon_restart(daemon_home: DaemonHome):
    from playwright.sync_api import expect, sync_playwright

    dh = daemon_home
    folder = dh.home / "config" / "profiles"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "alt.yaml").write_text(yaml.safe_dump(ALT))
    dh.start()
    pid = dh.daemon_pid()
    with dh.client() as c:
        started = c.get("/v1/status").json()["started_at"]
    profile = tempfile.mkdtemp(prefix="chromium-")
    try:
        with sync_playwright() as p:
            browser = launch(p, profile)
            page = browser.new_page()
            page.goto(f"{dh.url}/debug")
            expect(page.locator("#readiness")).to_have_text("ready", timeout=30_000)

            page.select_option("#profile-select", "alt")
            page.click("#switch-profile")
            page.click("#confirm-ok")
            expect(page.locator("#message")).to_contain_text("switch to 'alt' started", timeout=30_000)
            expect(page.locator("#profile")).to_have_text("alt", timeout=60_000)
            expect(page.locator("tr[data-model='alt-tiny'] td.state")).to_have_text("ready", timeout=60_000)
            expect(page.locator("#events")).to_contain_text("profile_switched", timeout=60_000)  # once the old model stopped

            page.click("#restart-daemon")
            page.click("#confirm-ok")
            expect(page.locator("#message")).to_contain_text("is restarting", timeout=30_000)
            expect(page.locator("#conn")).to_have_text("reconnecting", timeout=30_000)
            expect(page.locator("#conn")).to_have_text("live", timeout=60_000)
            expect(page.locator("#readiness")).to_have_text("ready", timeout=60_000)
            expect(page.locator("#profile")).to_have_text("alt", timeout=30_000)  # the active profile survives the restart
            browser.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    with dh.client() as c:
        status = c.get("/v1/status").json()
    assert status["pid"] == pid == dh.daemon_pid()  # the same process, started again
    assert status["started_at"] > started
    assert status["profile"] == "alt"


def test_an_open_feed_ends_with_the_stop(daemon_home: DaemonHome):
    """The feed's last state says `stopping` and the stream ends whole: an open page never
    holds the daemon's shutdown until the HTTP server cuts its connection."""
    import threading

    dh = daemon_home
    dh.start()
    seen: list[dict] = []
    errors: list[BaseException] = []

    def read() -> None:
        try:
            with dh.client(timeout=60) as c, c.stream("GET", "/debug/feed") as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        seen.append(json.loads(line[len("data: "):]))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    dh.wait_for(lambda: seen, what="the first state")
    dh.cli("llm", "stop", "--timeout", "30", check=True)
    reader.join(30)
    assert not reader.is_alive() and not errors, errors
    assert seen[-1]["status"]["readiness"]["status"] == "stopping"
