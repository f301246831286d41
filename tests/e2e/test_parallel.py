"""One worker serving several requests at once (`parallel` slots), end to end.

Real daemon, one real worker on msting-tiny with `parallel: 4`. To know exactly which
requests are in a worker's hands when something happens to it, the tests freeze the
worker (SIGSTOP) while they send: the daemon hands a request to a free slot (writes its
frame) whether or not the process runs, so a frozen worker holds exactly the requests
the daemon counts in its slots, and none of them can make progress until SIGCONT. The
hang timeout is long enough that the freeze is not taken for a hang.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

pytestmark = pytest.mark.e2e

SLOTS = 4
POISON = "POISON-PILL"
PROMPTS = ["Once upon a time", "Hello", "The cat sat", "Tell me a story"]
# a context of 4096 tokens per slot: a reply that runs to its end (max_tokens past the
# context) takes seconds on msting-tiny, a short one milliseconds
CONFIG = {"llm": {"parallel": SLOTS, "n_ctx": 4096}, "llm_service": {"hang_timeout_sec": 30}}
LONG = 100000
SHORT = 12


def _model(daemon_home) -> dict:
    return daemon_home.client().get("/v1/status").json()["models"][0]


def _worker(daemon_home) -> dict:
    return _model(daemon_home)["workers"][0]


class Stream:
    """A streamed /generate read on its own thread: the token texts, the final event
    (done or error), and an event set once the first token arrived."""

    def __init__(self, daemon_home, prompt: str, max_tokens: int, temperature: float = 0):
        self.body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": temperature, "stream": True}
        self.texts: list[str] = []
        self.end: tuple[str, dict] | None = None
        self.status: int | None = None
        self.first = threading.Event()
        self.close = threading.Event()  # set it to go away mid-stream (a client disconnect)
        self._home = daemon_home
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            with self._home.client(timeout=180) as c, c.stream("POST", "/generate", json=self.body) as resp:
                self.status = resp.status_code
                event = None
                for line in resp.iter_lines():
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: "):
                        data = json.loads(line[6:])
                        if event == "token":
                            self.texts.append(data["text"])
                            self.first.set()
                        else:
                            self.end = (event, data)
                    if self.close.is_set():
                        return
        finally:
            self.first.set()  # never leave a waiter hanging

    def result(self, timeout: float = 180) -> tuple[str, tuple[str, dict] | None]:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the stream did not end"
        return "".join(self.texts), self.end


def _solo(daemon_home, prompt: str, max_tokens: int = SHORT) -> str:
    """The stream's text for `prompt` alone on the worker (temperature 0)."""
    text, end = Stream(daemon_home, prompt, max_tokens).result()
    assert end is not None and end[0] == "done", end
    return text


class Frozen:
    """The worker stopped (SIGSTOP) for the block; SIGCONT when the block ends, unless
    it was killed."""

    def __init__(self, pid: int):
        self.pid = pid

    def __enter__(self) -> Frozen:
        os.kill(self.pid, signal.SIGSTOP)
        return self

    def __exit__(self, *exc) -> None:
        try:
            os.kill(self.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


def _slots_busy(daemon_home, n: int, queued: int = 0) -> None:
    daemon_home.wait_for(lambda: _worker(daemon_home)["slots_busy"] == n and _model(daemon_home)["queue_depth"] == queued,
                         timeout=30, interval=0.01, what=f"{n} requests in the worker's slots and {queued} queued")


def test_concurrent_streams_on_one_worker_equal_their_solo_text_and_status_shows_the_slots(daemon_home):
    daemon_home.write_config(CONFIG)
    daemon_home.start()
    worker = _worker(daemon_home)
    assert (worker["slots"], worker["slots_busy"], worker["state"]) == (SLOTS, 0, "READY")
    solo = {p: _solo(daemon_home, p, 40) for p in PROMPTS}
    assert all(solo.values())
    with Frozen(worker["pid"]):
        streams = {p: Stream(daemon_home, p, 40) for p in PROMPTS}
        _slots_busy(daemon_home, SLOTS)  # all four in the one worker's hands at once
        status = daemon_home.status()  # what `msting llm status --json` prints
        w = status["models"][0]["workers"][0]
        assert (w["slots"], w["slots_busy"], w["state"]) == (SLOTS, SLOTS, "BUSY")
        assert status["models"][0]["in_flight"] == SLOTS
        text = daemon_home.cli("llm", "status").stdout
        assert f"{w['pid']} BUSY {SLOTS}/{SLOTS}" in text, text
        assert f"msting-tiny: n_threads {w['n_threads']}, measured: " in " ".join(text.split()), text
    results = {p: s.result() for p, s in streams.items()}
    for p, (text, end) in results.items():
        assert end is not None and end[0] == "done", (p, end)
        assert text == solo[p], p  # no cross-talk: the batch changes nothing in a sequence's text
    model = _model(daemon_home)
    assert model["restarts"] == 0 and model["workers"][0]["slots_busy"] == 0
    assert model["workers"][0]["state"] == "READY"
    threads = model["workers"][0]["threads"]
    assert threads["source"] == "measured" and threads["chosen"] == model["workers"][0]["n_threads"]  # n_threads unset: measured
    assert model["n_threads"] is None and model["parallel"] == SLOTS


@pytest.mark.parametrize("death", ["kill -9", "hang"])
def test_a_worker_killed_with_four_in_flight_requeues_the_unstarted_and_ends_the_started_streams(daemon_home, death):
    """kill -9 by the test, or a hang: the worker stays frozen until the daemon's
    watchdog (hang_timeout_sec 5) kills it. Either way one death settles all four slots."""
    hang = death == "hang"
    daemon_home.write_config({**CONFIG, "llm_service": {"hang_timeout_sec": 5 if hang else 30}})
    daemon_home.start()
    solo = {p: _solo(daemon_home, p) for p in PROMPTS}
    pid = _worker(daemon_home)["pid"]
    # two long streams that have streamed (their first token reached us) ...
    started = [Stream(daemon_home, p, LONG) for p in PROMPTS[:2]]
    for s in started:
        assert s.first.wait(60) and s.texts, "no first token"
    with Frozen(pid):
        _slots_busy(daemon_home, 2)  # still running: thousands of tokens to go
        # ... two that the frozen worker holds but cannot have started, and one queued
        unstarted = [Stream(daemon_home, p, SHORT) for p in PROMPTS[2:]]
        _slots_busy(daemon_home, 4)
        queued = Stream(daemon_home, PROMPTS[0], SHORT)
        _slots_busy(daemon_home, 4, queued=1)
        if hang:
            daemon_home.wait_for(lambda: _worker(daemon_home)["pid"] != pid, timeout=60, what="the hung worker killed")
        else:
            os.kill(pid, signal.SIGKILL)
    for s in started:
        _, end = s.result()
        assert end is not None and end[0] == "error", end
        assert end[1]["error"]["code"] == "worker_crashed"
    for s, prompt in [*zip(unstarted, PROMPTS[2:]), (queued, PROMPTS[0])]:
        text, end = s.result()
        assert end is not None and end[0] == "done", end
        assert text == solo[prompt]  # re-queued and answered whole, by the replacement
    model = _model(daemon_home)
    assert model["restarts"] == 1 and model["state"] == "ready"
    assert model["workers"][0]["pid"] != pid
    if hang:
        assert "hung" in (model["workers"][0]["last_error"] or ""), model["workers"][0]


def test_a_poison_request_among_three_innocent_ones_fails_alone_and_the_model_stays_up(daemon_home):
    daemon_home.env["MSTING_WORKER_FAILPOINTS"] = f"crash_on_prompt={POISON}"
    daemon_home.write_config(CONFIG)
    daemon_home.start()

    def generate(prompt: str):
        with daemon_home.client(timeout=180) as c:
            return c.post("/generate", json={"prompt": prompt, "max_tokens": SHORT, "temperature": 0})

    solo = {p: generate(p).json()["text"] for p in PROMPTS[:3]}
    with ThreadPoolExecutor(max_workers=4) as pool:
        with Frozen(_worker(daemon_home)["pid"]):
            innocent = [pool.submit(generate, p) for p in PROMPTS[:3]]
            _slots_busy(daemon_home, 3)
            poison = pool.submit(generate, f"tell me {POISON}")
            _slots_busy(daemon_home, 4)  # all four in one batch when the worker dies
        answers = [f.result() for f in innocent]
        bad = poison.result()
    assert [r.status_code for r in answers] == [200, 200, 200], [r.text for r in answers]
    assert [r.json()["text"] for r in answers] == [solo[p] for p in PROMPTS[:3]]
    assert bad.status_code == 500, bad.text
    assert bad.json()["error"]["code"] == "request_crashed_worker"
    model = _model(daemon_home)
    # the batch's death, then the poison's own, alone: every innocent one ran alone in between
    assert model["restarts"] == 2, model
    daemon_home.wait_for(lambda: _model(daemon_home)["state"] == "ready", what="the model ready again")
    assert generate(PROMPTS[0]).status_code == 200
    events = daemon_home.client().get("/v1/status").json()["events"]
    assert [e["kind"] for e in events].count("request_crashed_worker") == 1


def test_cancelling_one_of_four_frees_its_slot_for_a_fifth(daemon_home):
    daemon_home.write_config(CONFIG)
    daemon_home.start()
    pid = _worker(daemon_home)["pid"]
    with Frozen(pid):
        long = [Stream(daemon_home, p, LONG) for p in PROMPTS]
        _slots_busy(daemon_home, SLOTS)
        fifth = Stream(daemon_home, PROMPTS[0], SHORT)
        _slots_busy(daemon_home, SLOTS, queued=1)
        long[1].close.set()  # its client goes away (at its next line, once the worker runs again)
    text, end = fifth.result()
    assert end is not None and end[0] == "done", end
    # the fifth was served in the freed slot while the other three still generate
    # (each runs to the end of its 4096-token context: seconds, against the fifth's 12 tokens)
    model = _model(daemon_home)
    assert model["workers"][0]["slots_busy"] == 3 and model["queue_depth"] == 0, model
    assert model["requests_cancelled"] == 1
    for i in (0, 2, 3):
        _, end = long[i].result()
        assert end is not None and end[0] == "done" and end[1]["finish_reason"] == "length", end
    assert _model(daemon_home)["restarts"] == 0


def test_the_queue_bound_counts_waiting_requests_not_the_slots(daemon_home):
    daemon_home.write_config({**CONFIG, "llm": {"parallel": 2, "n_ctx": 4096},
                              "llm_service": {"hang_timeout_sec": 30, "queue_size": 1}})
    daemon_home.start()
    with Frozen(_worker(daemon_home)["pid"]):
        held = [Stream(daemon_home, p, SHORT) for p in PROMPTS[:2]]
        _slots_busy(daemon_home, 2)
        waiting = Stream(daemon_home, PROMPTS[2], SHORT)
        _slots_busy(daemon_home, 2, queued=1)
        with daemon_home.client() as c:
            r = c.post("/generate", json={"prompt": "x", "max_tokens": 2})
        assert r.status_code == 503 and r.json()["error"]["code"] == "queue_full"
        assert "(1 request waiting, and all 2 slots of its workers busy)" in r.json()["error"]["message"], r.text
    for s in (*held, waiting):
        _, end = s.result()
        assert end is not None and end[0] == "done", end


def test_stop_drains_every_request_in_the_slots_not_just_one(daemon_home):
    daemon_home.write_config(CONFIG)
    daemon_home.start()

    def generate(prompt: str):
        with daemon_home.client(timeout=180) as c:
            return c.post("/generate", json={"prompt": prompt, "max_tokens": 400, "temperature": 0})

    with ThreadPoolExecutor(max_workers=5) as pool:
        with Frozen(_worker(daemon_home)["pid"]):
            answers = [pool.submit(generate, p) for p in PROMPTS]
            _slots_busy(daemon_home, SLOTS)
            stop = pool.submit(daemon_home.cli, "llm", "stop")
            with daemon_home.client() as c:  # draining: new work is refused, the four wait
                daemon_home.wait_for(lambda: c.get("/health/ready").status_code == 503, what="the daemon draining")
        replies = [f.result() for f in answers]
        assert stop.result().returncode == 0
    assert [r.status_code for r in replies] == [200] * SLOTS, [r.text for r in replies]
    assert all(r.json()["usage"]["completion_tokens"] == 400 for r in replies), [r.json()["usage"] for r in replies]
    assert daemon_home.our_processes() == []


def test_concurrent_embeddings_share_a_worker_and_match_their_solo_vectors(daemon_home):
    daemon_home.write_config(CONFIG)
    daemon_home.start()

    def embed(text: str) -> list[float]:
        with daemon_home.client(timeout=120) as c:
            r = c.post("/v1/embeddings", json={"input": text})
            assert r.status_code == 200, r.text
            return r.json()["data"][0]["embedding"]

    solo = {p: embed(p) for p in PROMPTS}  # the first starts the model's embeddings worker
    with ThreadPoolExecutor(max_workers=SLOTS) as pool:
        together = dict(zip(PROMPTS, pool.map(embed, PROMPTS)))
    for p in PROMPTS:
        assert together[p] == pytest.approx(solo[p], abs=1e-5), p
    embedder = next(m for m in daemon_home.client().get("/v1/status").json()["models"] if m["type"] == "embeddings")
    assert embedder["parallel"] == SLOTS and embedder["workers"][0]["slots"] == SLOTS
