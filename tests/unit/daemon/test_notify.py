"""msting.daemon.notify against a real Unix datagram socket."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid

import pytest

from msting.daemon import notify
from msting.daemon.notify import Notifier


@pytest.fixture
def listener(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "n.sock")
    sock.bind(path)
    sock.settimeout(5)
    yield path, sock
    sock.close()


def test_lines_arrive_as_one_datagram(listener):
    path, sock = listener
    n = Notifier.from_environ({"NOTIFY_SOCKET": path})
    assert n.enabled and n.ready("ready: all\nmodels\tfine")
    assert sock.recv(4096) == b"READY=1\nSTATUS=ready: all models fine"
    assert n.stopping("draining") and sock.recv(4096) == b"STOPPING=1\nSTATUS=draining"
    assert n.watchdog() and sock.recv(4096) == b"WATCHDOG=1"
    assert n.reloading("restarting")
    reload_lines = sock.recv(4096).split(b"\n")
    assert reload_lines[0] == b"RELOADING=1" and reload_lines[1].startswith(b"MONOTONIC_USEC=") and reload_lines[2] == b"STATUS=restarting"
    n.close()


def test_the_abstract_namespace():
    name = f"msting-unit-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        n = Notifier.from_environ({"NOTIFY_SOCKET": "@" + name})
        assert n.status("hello")
        assert sock.recv(4096) == b"STATUS=hello"
        n.close()
    finally:
        sock.close()


def test_inert_without_a_socket_or_with_one_it_cannot_speak():
    for env in ({}, {"NOTIFY_SOCKET": ""}, {"NOTIFY_SOCKET": "vsock:2:1"}, {"NOTIFY_SOCKET": "relative/path"}):
        n = Notifier.from_environ(env)
        assert not n.enabled and n.watchdog_interval is None and not n.ready("x")


def test_a_vanished_socket_is_not_an_error(tmp_path):
    n = Notifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert n.enabled and n.status("x") is False  # the daemon goes on


def test_watchdog_interval_is_half_the_timeout_and_only_for_this_process(listener):
    path, _ = listener
    assert Notifier.from_environ({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000"}).watchdog_interval == 15.0
    mine = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier.from_environ(mine).watchdog_interval == 1.0
    other = dict(mine, WATCHDOG_PID=str(os.getpid() + 1))
    assert Notifier.from_environ(other).watchdog_interval is None
    assert Notifier.from_environ({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "junk"}).watchdog_interval is None


def test_a_long_status_is_cut():
    line = notify.status_line("x" * 5000)
    assert len(line) == len("STATUS=") + notify.MAX_STATUS_CHARS and line.endswith("...")


def test_follow_readiness_sends_ready_once_on_the_first_ready(listener, monkeypatch):
    path, sock = listener
    states = iter([("loading", "loading: a"), ("loading", "loading: a"), ("ready", "ready: a"), ("degraded", "degraded: a"),
                   ("ready", "ready: a")])
    seen: list[bytes] = []

    async def run():
        n = Notifier(path)
        done = asyncio.Event()

        def milestone():
            try:
                return next(states)
            except StopIteration:
                done.set()
                return "ready", "ready: a"

        task = asyncio.create_task(notify.follow_readiness(n, milestone))
        await asyncio.wait_for(done.wait(), 30)
        task.cancel()
        n.close()

    monkeypatch.setattr(notify, "STARTING_POLL_SEC", 0.001)
    monkeypatch.setattr(notify, "RUNNING_POLL_SEC", 0.001)
    asyncio.run(run())
    sock.settimeout(0.5)
    while True:
        try:
            seen.append(sock.recv(4096))
        except TimeoutError:
            break
    assert seen == [b"STATUS=loading: a", b"READY=1\nSTATUS=ready: a", b"STATUS=degraded: a", b"STATUS=ready: a"]


def test_a_reader_that_falls_behind_never_blocks_the_sender(listener):
    """A datagram socket holds a few unread datagrams (net.unix.max_dgram_qlen); beyond
    them a blocking send would stall the daemon's event loop."""
    path, sock = listener
    n = Notifier(path)
    results = [n.watchdog() for _ in range(500)]  # returns at once, full or not
    assert results[0] is True and results[-1] is False
    while True:  # drained, it sends again
        try:
            sock.recv(4096)
        except TimeoutError:
            break
        sock.settimeout(0.05)
    assert n.watchdog() is True
    n.close()


def test_a_ready_line_that_could_not_be_sent_is_sent_again(listener, monkeypatch):
    path, sock = listener
    monkeypatch.setattr(notify, "STARTING_POLL_SEC", 0.001)
    monkeypatch.setattr(notify, "RUNNING_POLL_SEC", 0.001)
    sock.settimeout(0.05)

    async def run():
        n = Notifier(path)
        while n.watchdog():  # fill the reader's queue
            pass
        task = asyncio.create_task(notify.follow_readiness(n, lambda: ("ready", "ready: a")))
        await asyncio.sleep(0.05)  # READY=1 is tried (and dropped) meanwhile
        got = []
        while True:  # the reader catches up ...
            try:
                got.append(sock.recv(4096))
            except TimeoutError:
                break
        got += [await asyncio.to_thread(sock.recv, 4096)]  # ... and READY=1 comes
        task.cancel()
        n.close()
        return got

    got = asyncio.run(run())
    assert got[-1] == b"READY=1\nSTATUS=ready: a" and got.count(b"READY=1\nSTATUS=ready: a") == 1
