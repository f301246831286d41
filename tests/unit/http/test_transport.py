"""msting.http.transport: a response's head goes out with the start of its body, in one write."""

from __future__ import annotations

import asyncio

from msting.http.transport import HeadHeldTransport

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"


class Recording:
    """What an asyncio transport was asked to do, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes]] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.calls.append(("write", bytes(data)))

    def close(self) -> None:
        self.calls.append(("close", b""))
        self.closing = True

    def abort(self) -> None:
        self.calls.append(("abort", b""))

    def write_eof(self) -> None:
        self.calls.append(("write_eof", b""))

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str, default=None):
        return {"peername": ("127.0.0.1", 1)}.get(name, default)


def test_a_head_and_the_body_written_in_one_turn_go_out_as_one_write() -> None:
    async def go() -> list:
        raw = Recording()
        t = HeadHeldTransport(raw)
        t.write(HEAD)
        assert raw.calls == []  # held
        t.write(b"hello")
        await asyncio.sleep(0)  # the flush scheduled for the head finds nothing to do
        return raw.calls

    assert asyncio.run(go()) == [("write", HEAD + b"hello")]


def test_a_head_without_a_body_in_the_same_turn_goes_out_alone_at_the_next_turn() -> None:
    async def go() -> tuple[list, list]:
        raw = Recording()
        t = HeadHeldTransport(raw)
        t.write(HEAD)
        before = list(raw.calls)
        await asyncio.sleep(0)
        after = list(raw.calls)
        t.write(b"data: 1\n\n")  # a stream's later chunk: at once
        return before, after + [raw.calls[-1]]

    before, after = asyncio.run(go())
    assert before == []
    assert after == [("write", HEAD), ("write", b"data: 1\n\n")]


def test_other_writes_go_through_at_once_and_in_order() -> None:
    async def go() -> list:
        raw = Recording()
        t = HeadHeldTransport(raw)
        t.write(b"5\r\nhello\r\n")
        t.writelines([b"0\r\n", b"\r\n"])
        return raw.calls

    assert asyncio.run(go()) == [("write", b"5\r\nhello\r\n"), ("write", b"0\r\n\r\n")]


def test_closing_sends_a_held_head_first() -> None:
    async def go() -> list:
        raw = Recording()
        t = HeadHeldTransport(raw)
        t.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        t.close()
        await asyncio.sleep(0)
        return raw.calls

    assert asyncio.run(go()) == [("write", b"HTTP/1.1 100 Continue\r\n\r\n"), ("close", b"")]


def test_abort_drops_a_held_head_and_the_rest_is_the_wrapped_transport() -> None:
    async def go() -> tuple[list, object]:
        raw = Recording()
        t = HeadHeldTransport(raw)
        t.write(HEAD)
        t.abort()
        await asyncio.sleep(0)
        return raw.calls, t.get_extra_info("peername")

    calls, peer = asyncio.run(go())
    assert calls == [("abort", b"")]
    assert peer == ("127.0.0.1", 1)


def test_through_a_real_socket_the_client_reads_head_and_body_whole() -> None:
    """A server protocol writing a head and a body through the wrapper, a real client:
    the bytes arrive complete and in order."""
    async def go() -> bytes:
        class Server(asyncio.Protocol):
            def connection_made(self, transport) -> None:
                self.t = HeadHeldTransport(transport)

            def data_received(self, data: bytes) -> None:
                self.t.write(HEAD)
                self.t.write(b"hello")
                self.t.close()

        server = await asyncio.get_running_loop().create_server(Server, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\n\r\n")
        data = await reader.read()
        writer.close()
        server.close()
        await server.wait_closed()
        return data

    assert asyncio.run(go()) == HEAD + b"hello"
