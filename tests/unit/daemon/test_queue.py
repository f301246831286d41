"""msting.daemon.local.queue: the per-model ModelQueue (hand-off inside put(), FIFO,
the bound, cancel safety) and LocalJob (its one transition function, tokens, answers).

Every test runs on a real asyncio event loop; the "workers" are coroutines waiting in
`take(begin)`, the way WorkerSupervisor._serve waits."""

from __future__ import annotations

import asyncio
import itertools
import re
import time

import pytest

from msting.api.errors import InvalidRequest, ServerError
from msting.api.events import Done, Embeddings, Failed, Token, Usage
from msting.api.requests import ChatRequest, CompletionRequest, EmbeddingRequest, Message, SamplingParams
from msting.daemon.local import frames
from msting.daemon.local.queue import JobStatus, LocalJob, ModelQueue, QueueFull, fits, job_transition
from msting.transitions import IllegalTransition
from msting.worker import params, protocol

S = JobStatus


def job(prompt: str = "hi") -> LocalJob:
    return LocalJob(CompletionRequest(prompt, "m"), "m")


async def yield_a_few(n: int = 5) -> None:
    """Let every ready task run (no wall-clock wait)."""
    for _ in range(n):
        await asyncio.sleep(0)


class Worker:
    """A worker's side of the queue: `begin` takes charge of a job (as
    WorkerSupervisor._begin does: the job becomes RUNNING) or refuses it."""

    def __init__(self, accept: bool = True):
        self.accept = accept
        self.begun: list[LocalJob] = []
        self.refused: list[LocalJob] = []

    def begin(self, j: LocalJob) -> bool:
        if not self.accept:
            self.refused.append(j)
            j.fail(InvalidRequest("invalid_request", "cannot be framed"))
            return False
        self.begun.append(j)
        j.started(time.monotonic())
        return True


# ---- hand-off ---------------------------------------------------------------------------


def test_a_job_put_while_a_worker_waits_is_begun_inside_put() -> None:
    async def main() -> None:
        q = ModelQueue(4)
        w = Worker()
        taker = asyncio.create_task(q.take(w.begin))
        await yield_a_few()
        assert not taker.done()
        j = job()
        q.put(j)
        # begin ran synchronously, inside put(): no await happened in between
        assert w.begun == [j]
        assert j.status is S.RUNNING
        assert len(q) == 0  # it never sat in the queue
        assert await taker is j

    asyncio.run(main())


def test_without_a_waiter_a_job_waits_and_the_next_take_begins_it() -> None:
    async def main() -> None:
        q = ModelQueue(4)
        j = job()
        q.put(j)
        assert len(q) == 1 and j.status is S.QUEUED
        w = Worker()
        assert await q.take(w.begin) is j
        assert w.begun == [j] and len(q) == 0

    asyncio.run(main())


def test_queued_jobs_come_out_in_fifo_order() -> None:
    async def main() -> None:
        q = ModelQueue(8)
        jobs = [job(f"p{i}") for i in range(5)]
        for j in jobs:
            q.put(j)
        w = Worker()
        out = [await q.take(w.begin) for _ in jobs]
        assert out == jobs

    asyncio.run(main())


def test_waiting_workers_are_served_in_the_order_they_came() -> None:
    async def main() -> None:
        q = ModelQueue(8)
        workers = [Worker() for _ in range(3)]
        takers = []
        for w in workers:
            takers.append(asyncio.create_task(q.take(w.begin)))
            await yield_a_few()
        jobs = [job(f"p{i}") for i in range(3)]
        for j in jobs:
            q.put(j)
        assert [w.begun for w in workers] == [[j] for j in jobs]
        assert await asyncio.gather(*takers) == jobs

    asyncio.run(main())


# ---- the bound --------------------------------------------------------------------------


def test_put_beyond_the_bound_raises_queue_full_and_keeps_what_is_queued() -> None:
    async def main() -> None:
        q = ModelQueue(2)
        a, b = job("a"), job("b")
        q.put(a)
        q.put(b)
        with pytest.raises(QueueFull):
            q.put(job("c"))
        assert len(q) == 2
        w = Worker()
        assert [await q.take(w.begin), await q.take(w.begin)] == [a, b]

    asyncio.run(main())


def test_put_front_ignores_the_bound_and_goes_first() -> None:
    async def main() -> None:
        q = ModelQueue(2)
        a, b, retried = job("a"), job("b"), job("retried")
        q.put(a)
        q.put(b)
        q.put_front(retried)
        assert len(q) == 3
        w = Worker()
        assert [await q.take(w.begin) for _ in range(3)] == [retried, a, b]

    asyncio.run(main())


def test_put_front_hands_off_to_a_waiting_worker_too() -> None:
    async def main() -> None:
        q = ModelQueue(1)
        w = Worker()
        taker = asyncio.create_task(q.take(w.begin))
        await yield_a_few()
        j = job()
        q.put_front(j)
        assert w.begun == [j] and len(q) == 0
        assert await taker is j

    asyncio.run(main())


def test_the_bound_counts_only_live_jobs() -> None:
    async def main() -> None:
        q = ModelQueue(2)
        a, b = job("a"), job("b")
        q.put(a)
        q.put(b)
        assert a.cancel()
        q.put(job("c"))  # a cancelled job no longer takes a place
        assert len(q) == 2
        with pytest.raises(QueueFull):
            q.put(job("d"))

    asyncio.run(main())


# ---- cancel safety ----------------------------------------------------------------------


def test_a_cancelled_waiter_is_skipped_and_the_job_goes_to_the_next_waiter() -> None:
    async def main() -> None:
        q = ModelQueue(4)
        gone, alive = Worker(), Worker()
        t_gone = asyncio.create_task(q.take(gone.begin))
        await yield_a_few()
        t_alive = asyncio.create_task(q.take(alive.begin))
        await yield_a_few()
        t_gone.cancel()  # no yield: its task has not even seen the cancellation yet
        j = job()
        q.put(j)
        assert gone.begun == [] and alive.begun == [j]
        assert await t_alive is j
        with pytest.raises(asyncio.CancelledError):
            await t_gone

    asyncio.run(main())


def test_a_job_whose_only_waiter_was_cancelled_stays_queued() -> None:
    async def main() -> None:
        q = ModelQueue(4)
        gone = Worker()
        t_gone = asyncio.create_task(q.take(gone.begin))
        await yield_a_few()
        t_gone.cancel()
        await asyncio.gather(t_gone, return_exceptions=True)
        j = job()
        q.put(j)
        assert gone.begun == [] and len(q) == 1 and j.status is S.QUEUED
        later = Worker()
        assert await q.take(later.begin) is j  # not lost
        assert later.begun == [j]

    asyncio.run(main())


def test_a_refusing_begin_answers_the_job_and_the_worker_keeps_waiting() -> None:
    async def main() -> None:
        q = ModelQueue(4)
        w = Worker(accept=False)
        taker = asyncio.create_task(q.take(w.begin))
        await yield_a_few()
        bad = job("bad")
        q.put(bad)
        assert w.refused == [bad]
        assert len(q) == 0  # answered, not queued
        assert bad.status is S.FINISHED
        event = bad.events.get_nowait()
        assert isinstance(event, Failed) and event.error.code == "invalid_request"
        await yield_a_few()
        assert not taker.done()  # still waiting
        w.accept = True
        good = job("good")
        q.put(good)
        assert w.begun == [good]
        assert await taker is good

    asyncio.run(main())


def test_take_moves_past_a_queued_job_that_begin_refuses() -> None:
    async def main() -> None:
        q = ModelQueue(4)
        bad, good = job("bad"), job("good")
        q.put(bad)
        q.put(good)

        refused = []

        def begin(j: LocalJob) -> bool:
            if j is bad:
                refused.append(j)
                j.fail(InvalidRequest("invalid_request", "cannot be framed"))
                return False
            j.started(time.monotonic())
            return True

        assert await q.take(begin) is good
        assert refused == [bad] and len(q) == 0

    asyncio.run(main())


def test_take_skips_cancelled_and_finished_jobs_and_len_does_not_count_them() -> None:
    async def main() -> None:
        q = ModelQueue(8)
        cancelled, finished, live = job("c"), job("f"), job("l")
        for j in (cancelled, finished, live):
            q.put(j)
        assert len(q) == 3
        cancelled.cancel()
        finished.fail(ServerError("engine_error", "x"))
        assert len(q) == 1
        w = Worker()
        assert await q.take(w.begin) is live
        assert w.begun == [live]  # begin never saw the dead ones
        assert len(q) == 0

    asyncio.run(main())


def test_a_queue_of_dead_jobs_makes_take_wait_for_a_live_one() -> None:
    async def main() -> None:
        q = ModelQueue(8)
        dead = job("dead")
        q.put(dead)
        dead.cancel()
        w = Worker()
        taker = asyncio.create_task(q.take(w.begin))
        await yield_a_few()
        assert not taker.done() and w.begun == []
        j = job("live")
        q.put(j)
        assert await taker is j

    asyncio.run(main())


# ---- wait_nonempty and drain_all --------------------------------------------------------


def test_wait_nonempty_returns_at_once_when_a_job_waits() -> None:
    async def main() -> None:
        q = ModelQueue(4)
        q.put(job())
        waiter = asyncio.create_task(q.wait_nonempty())
        await yield_a_few()
        assert waiter.done()

    asyncio.run(main())


def test_wait_nonempty_waits_for_a_queued_job_not_for_a_handed_off_one() -> None:
    async def main() -> None:
        q = ModelQueue(4)
        waiter = asyncio.create_task(q.wait_nonempty())
        await yield_a_few()
        assert not waiter.done()

        w = Worker()
        taker = asyncio.create_task(q.take(w.begin))
        await yield_a_few()
        q.put(job("handed"))  # goes straight to the worker: nothing waits in the queue
        await taker
        await yield_a_few()
        assert not waiter.done()

        dead = job("dead")
        q.put(dead)
        dead.cancel()  # a cancelled job is nothing to wait for
        await yield_a_few()
        assert not waiter.done()

        q.put(job("queued"))
        await asyncio.wait_for(waiter, timeout=5)

    asyncio.run(main())


def test_drain_all_returns_the_live_jobs_in_order_and_empties_the_queue() -> None:
    async def main() -> None:
        q = ModelQueue(8)
        a, dead, b = job("a"), job("dead"), job("b")
        for j in (a, dead, b):
            q.put(j)
        dead.cancel()
        assert q.drain_all() == [a, b]
        assert len(q) == 0
        assert q.drain_all() == []
        # nothing is left for a worker, and nothing to wait for
        w = Worker()
        taker = asyncio.create_task(q.take(w.begin))
        nonempty = asyncio.create_task(q.wait_nonempty())
        await yield_a_few()
        assert not taker.done() and not nonempty.done() and w.begun == []
        taker.cancel()
        nonempty.cancel()
        await asyncio.gather(taker, nonempty, return_exceptions=True)

    asyncio.run(main())


# ---- LocalJob: the one transition function ----------------------------------------------

LEGAL = {
    (S.QUEUED, S.RUNNING), (S.QUEUED, S.FINISHED), (S.QUEUED, S.CANCELLED),
    (S.RUNNING, S.QUEUED), (S.RUNNING, S.STREAMING), (S.RUNNING, S.FINISHED), (S.RUNNING, S.CANCELLED),
    (S.STREAMING, S.FINISHED), (S.STREAMING, S.CANCELLED),
}
ALL_PAIRS = list(itertools.product(JobStatus, JobStatus))


@pytest.mark.parametrize(("current", "target"), sorted(LEGAL), ids=lambda s: s.value)
def test_legal_job_transitions(current: JobStatus, target: JobStatus) -> None:
    assert job_transition(current, target) is target


@pytest.mark.parametrize(("current", "target"), [p for p in ALL_PAIRS if p not in LEGAL], ids=lambda s: s.value)
def test_illegal_job_transitions_raise(current: JobStatus, target: JobStatus) -> None:
    allowed = ", ".join(sorted(t.value for c, t in LEGAL if c is current)) or "nothing"
    with pytest.raises(IllegalTransition) as exc:
        job_transition(current, target)
    assert str(exc.value) == f"illegal job transition {current.value} -> {target.value} (allowed from {current.value}: {allowed})"


def test_over_is_true_only_for_finished_and_cancelled() -> None:
    assert {s for s in JobStatus if s.over} == {S.FINISHED, S.CANCELLED}


def test_a_new_job_is_queued_with_a_fresh_id() -> None:
    jobs = [job() for _ in range(100)]
    assert all(j.status is S.QUEUED and not j.over and j.attempts == 0 for j in jobs)
    assert all(re.fullmatch(r"req-[0-9a-f]{16}", j.id) for j in jobs)
    assert len({j.id for j in jobs}) == 100


def test_a_job_can_go_back_to_the_queue_before_it_streamed_but_not_after() -> None:
    j = job()
    j.started(1.0)
    j.requeued()
    assert j.status is S.QUEUED
    j.started(2.0)
    j.emit_token("x")
    with pytest.raises(IllegalTransition, match="streaming -> queued"):
        j.requeued()
    assert j.status is S.STREAMING


def test_emit_token_moves_running_to_streaming_and_queues_each_token() -> None:
    j = job()
    j.started(1.0)
    j.emit_token("Once")
    assert j.status is S.STREAMING
    j.emit_token(" upon")
    assert j.status is S.STREAMING
    assert [j.events.get_nowait(), j.events.get_nowait()] == [Token("Once"), Token(" upon")]
    assert j.events.empty()


def test_emit_token_on_a_job_that_is_not_running_does_nothing() -> None:
    queued = job()
    queued.emit_token("x")
    assert queued.status is S.QUEUED and queued.events.empty()

    ended = job()
    ended.started(1.0)
    ended.finish(Done("m", "text", "stop"))
    ended.events.get_nowait()
    ended.emit_token("late")
    assert ended.status is S.FINISHED and ended.events.empty()

    gone = job()
    gone.started(1.0)
    gone.cancel()
    gone.emit_token("late")
    assert gone.status is S.CANCELLED and gone.events.empty()


def test_finish_answers_once() -> None:
    j = job()
    j.started(1.0)
    first = Done("m", "one", "stop", Usage(2, 1))
    j.finish(first)
    j.finish(Done("m", "two", "stop"))
    j.fail(ServerError("engine_error", "late"))
    assert j.status is S.FINISHED
    assert j.events.get_nowait() is first
    assert j.events.empty()


def test_fail_answers_once_even_from_the_queue() -> None:
    j = job()
    err = ServerError("worker_crashed", "gone")
    j.fail(err)  # QUEUED -> FINISHED: a job answered before any worker took it
    j.fail(ServerError("other", "x"))
    j.finish(Done("m", "late", "stop"))
    assert j.status is S.FINISHED
    event = j.events.get_nowait()
    assert isinstance(event, Failed) and event.error is err
    assert j.events.empty()


def test_a_cancelled_job_is_never_answered() -> None:
    j = job()
    assert j.cancel()
    j.finish(Done("m", "late", "stop"))
    j.fail(ServerError("engine_error", "late"))
    assert j.status is S.CANCELLED and j.events.empty()


@pytest.mark.parametrize("reach", ["queued", "running", "streaming"])
def test_cancel_of_a_live_job_returns_true(reach: str) -> None:
    j = job()
    if reach != "queued":
        j.started(1.0)
    if reach == "streaming":
        j.emit_token("x")
    assert j.status.value == reach
    assert j.cancel() is True
    assert j.status is S.CANCELLED and j.over


def test_cancel_of_an_ended_job_returns_false() -> None:
    finished = job()
    finished.finish(Done("m"))
    assert finished.cancel() is False and finished.status is S.FINISHED
    cancelled = job()
    assert cancelled.cancel() is True
    assert cancelled.cancel() is False and cancelled.status is S.CANCELLED


def test_started_twice_is_illegal() -> None:
    j = job()
    j.started(1.0)
    with pytest.raises(IllegalTransition, match="running -> running"):
        j.started(2.0)


def test_queue_ms_is_none_until_started_then_the_wait_in_milliseconds() -> None:
    j = LocalJob(CompletionRequest("hi"), "m", enqueued_at=100.0)
    assert j.queue_ms() is None
    j.started(100.2505)
    assert j.started_at == 100.2505
    assert j.queue_ms() == 250.5


def test_a_job_is_enqueued_at_its_creation_by_default() -> None:
    before = time.monotonic()
    j = job()
    after = time.monotonic()
    assert before <= j.enqueued_at <= after
    j.started(j.enqueued_at)
    assert j.queue_ms() == 0.0


# ---- a job's worker frame (msting.daemon.local.frames) ----------------------------------


def _sent(j: LocalJob) -> dict:
    """The frame WorkerSupervisor writes for `j`, read back by the worker."""
    return protocol.decode(frames.request_frame(j))


def test_the_frame_of_a_completion() -> None:
    sampling = SamplingParams(max_tokens=7, temperature=0.1, top_p=0.5, presence_penalty=0.25, frequency_penalty=-0.5,
                              stop=("\n\n", "END"), seed=42)
    j = LocalJob(CompletionRequest("Once upon a time", "m", sampling), "m")
    assert not j.embed
    frame = _sent(j)
    assert frame == {"v": protocol.PROTOCOL_VERSION, "type": "generate", "id": j.id, "stream": False,
                     "prompt": "Once upon a time", "max_tokens": 7, "temperature": 0.1, "top_p": 0.5,
                     "presence_penalty": 0.25, "frequency_penalty": -0.5, "stop": ["\n\n", "END"], "seed": 42}
    parsed = params.parse_generate(frame)  # what the worker makes of it
    assert parsed["prompt"] == "Once upon a time" and parsed["messages"] is None
    assert (parsed["max_tokens"], parsed["temperature"], parsed["seed"], parsed["stop"]) == (7, 0.1, 42, ["\n\n", "END"])


def test_the_frame_of_a_chat() -> None:
    messages = (Message("system", "Be brief."), Message("user", "Hello?"), Message("assistant", "Hi."), Message("user", "Bye"))
    j = LocalJob(ChatRequest(messages, "m", SamplingParams(max_tokens=3, temperature=0.0)), "m", stream=True)
    frame = _sent(j)
    assert frame["type"] == "generate" and frame["id"] == j.id and frame["stream"] is True and "prompt" not in frame
    assert frame["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello?"},
                                 {"role": "assistant", "content": "Hi."}, {"role": "user", "content": "Bye"}]
    assert frame["max_tokens"] == 3 and frame["temperature"] == 0.0
    parsed = params.parse_generate(frame)
    assert parsed["prompt"] is None and parsed["stream"] is True and parsed["messages"] == frame["messages"]


def test_the_frame_of_an_embedding() -> None:
    j = LocalJob(EmbeddingRequest(("one", "two"), "m"), "m")
    assert j.embed
    frame = _sent(j)
    assert frame == {"v": protocol.PROTOCOL_VERSION, "type": "embed", "id": j.id, "input": ["one", "two"]}
    assert params.parse_embed(frame) == {"inputs": ["one", "two"]}


def test_a_request_that_cannot_be_framed_raises() -> None:
    j = LocalJob(CompletionRequest("bad \ud800 surrogate", "m"), "m")
    with pytest.raises(protocol.ProtocolError, match="lone surrogate"):
        frames.request_frame(j)


def test_a_done_frame_becomes_the_jobs_result_with_its_queue_time() -> None:
    j = LocalJob(CompletionRequest("x", "m"), "story", enqueued_at=10.0)
    j.started(10.125)
    done = frames.result(j, {"text": "Once", "finish_reason": "length", "usage": {"prompt_tokens": 2, "completion_tokens": 3},
                             "timings": {"prompt_ms": 1.5}})
    assert done == Done("story", "Once", "length", Usage(2, 3), {"prompt_ms": 1.5, "queue_ms": 125.0})
    e = LocalJob(EmbeddingRequest(("a",), "m"), "vec")
    vectors = frames.result(e, {"embeddings": [[1.0, 0.0]], "usage": {"prompt_tokens": 1}})
    assert vectors == Embeddings("vec", [[1.0, 0.0]], Usage(1), {})  # never started: no queue time


def test_an_error_frame_is_the_clients_fault_only_for_bad_requests() -> None:
    bad = frames.error({"kind": "bad_request", "message": "'prompt' must be a string"})
    assert isinstance(bad, InvalidRequest) and (bad.code, bad.message) == ("invalid_request", "'prompt' must be a string")
    engine = frames.error({"kind": "engine"})
    assert isinstance(engine, ServerError) and (engine.code, engine.message) == ("engine_error", "the engine failed")


def test_an_embedding_job_is_answered_with_embeddings() -> None:
    j = LocalJob(EmbeddingRequest(("one",), "m"), "m")
    j.started(1.0)
    result = Embeddings("m", [[0.6, 0.8]], Usage(1))
    j.finish(result)
    assert j.events.get_nowait() is result and j.status is S.FINISHED


# ---- slots ------------------------------------------------------------------------------


class SlottedWorker:
    """A worker with `slots` slots, taking jobs by the supervisor's rule (queue.fits):
    its `offer` says None while it may not begin the job now. Its serve loop takes
    again as soon as it took a job, as WorkerSupervisor._serve does."""

    def __init__(self, q: ModelQueue, slots: int):
        self.q = q
        self.slots = slots
        self.running: list[LocalJob] = []
        self.task: asyncio.Task | None = None

    def offer(self, j: LocalJob) -> bool | None:
        if not fits(j, self.running, self.slots):
            return None
        self.running.append(j)
        j.started(time.monotonic())
        return True

    async def serve(self) -> None:
        while True:
            await self.q.take(self.offer)

    def start(self) -> None:
        self.task = asyncio.create_task(self.serve())

    def finish(self, j: LocalJob) -> None:
        """`j` is answered: its slot frees and the queue's head is offered again."""
        self.running.remove(j)
        j.finish(Done("m", "", "stop", Usage(1, 1), {}))
        self.q.dispatch()

    async def stop(self) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


def suspect(prompt: str) -> LocalJob:
    j = job(prompt)
    j.attempts = 1  # it was in flight when a worker died
    return j


def test_a_worker_with_slots_takes_that_many_jobs_and_the_rest_wait() -> None:
    async def main() -> None:
        q = ModelQueue(8)
        w = SlottedWorker(q, 3)
        w.start()
        await yield_a_few()
        jobs = [job(f"p{i}") for i in range(5)]
        for j in jobs:
            q.put(j)
            await yield_a_few()
        assert w.running == jobs[:3] and len(q) == 2  # the bound counts the two waiting, not the slots
        w.finish(jobs[1])  # a slot frees: the head goes to it at once, inside finish()
        assert w.running == [jobs[0], jobs[2], jobs[3]] and len(q) == 1
        await w.stop()

    asyncio.run(main())


def test_a_suspect_waits_for_an_idle_worker_and_runs_alone() -> None:
    async def main() -> None:
        q = ModelQueue(8)
        w = SlottedWorker(q, 4)
        w.start()
        await yield_a_few()
        busy = job("busy")
        q.put(busy)
        await yield_a_few()
        s1, s2, later = suspect("s1"), suspect("s2"), job("later")
        q.put_front(s1, s2)  # in order, ahead of everything
        q.put(later)
        await yield_a_few()
        # the suspect at the head holds back the queue: no slot is given to `later` past it
        assert w.running == [busy] and len(q) == 3
        w.finish(busy)
        await yield_a_few()
        assert w.running == [s1]  # alone, though three slots are free
        w.finish(s1)
        await yield_a_few()
        assert w.running == [s2]
        w.finish(s2)
        await yield_a_few()
        assert w.running == [later] and len(q) == 0
        await w.stop()

    asyncio.run(main())


def test_put_front_keeps_the_order_given() -> None:
    async def main() -> None:
        q = ModelQueue(8)
        queued = job("queued")
        q.put(queued)
        a, b, c = job("a"), job("b"), job("c")
        q.put_front(a, b, c)
        w = Worker()
        assert [await q.take(w.begin) for _ in range(4)] == [a, b, c, queued]

    asyncio.run(main())


def test_a_full_worker_lets_the_next_waiting_worker_take_the_job() -> None:
    async def main() -> None:
        q = ModelQueue(8)
        full, free = SlottedWorker(q, 1), SlottedWorker(q, 1)
        full.start()
        await yield_a_few()
        first = job("first")
        q.put(first)
        await yield_a_few()
        free.start()
        await yield_a_few()
        second = job("second")
        q.put(second)
        assert full.running == [first] and free.running == [second]
        await full.stop()
        await free.stop()

    asyncio.run(main())


def test_fits_is_the_slot_rule() -> None:
    a, b, s = job("a"), job("b"), suspect("s")
    assert fits(a, [], 1) and not fits(a, [b], 1)
    assert fits(a, [b], 2)
    assert fits(s, [], 4) and not fits(s, [a], 4)  # a suspect only on an idle worker
    assert not fits(a, [s], 4)  # and nothing beside it
