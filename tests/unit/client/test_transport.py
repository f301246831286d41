"""msting.client.transport.PlainHTTPTransport against a real HTTP/1.1 server (the
standard library's http.server on a Unix socket): keep-alive reuse, a connection the
server closed while idle, chunked streams, timeouts and errors as httpx exceptions."""

from __future__ import annotations

import http.server
import json
import socketserver
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest

from msting.client import DaemonUnavailable, MstingClient, RequestTimeout
from msting.client.transport import PlainHTTPTransport


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        server = self.server
        server.requests.append(self.path)
        if self.path == "/slow":
            time.sleep(1.0)
        if self.path == "/stream":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(3):
                data = f"data: {i}\n\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
                server.sent.append(time.monotonic())
                time.sleep(0.2)
            self.wfile.write(b"0\r\n\r\n")
            return
        body = json.dumps({"path": self.path, "status": "ok"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        if self.path == "/drop":  # answer, then close without saying so
            self.close_connection = True

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        echo = self.rfile.read(length)
        self.server.requests.append(self.path)
        self.send_response(201)
        self.send_header("Content-Length", str(len(echo)))
        self.end_headers()
        self.wfile.write(echo)


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str) -> None:
        self.requests: list[str] = []
        self.sent: list[float] = []
        self.connections = 0
        super().__init__(path, _Handler)

    def process_request(self, request, client_address) -> None:
        self.connections += 1
        super().process_request(request, client_address)


@pytest.fixture
def server():
    with tempfile.TemporaryDirectory(prefix="mst") as d:
        path = str(Path(d) / "s.sock")
        srv = _Server(path)
        thread = threading.Thread(target=srv.serve_forever, daemon=True)
        thread.start()
        yield srv, path
        srv.shutdown()
        srv.server_close()


def _client(path: str, timeout: float = 5.0) -> httpx.Client:
    return httpx.Client(base_url="http://msting", transport=PlainHTTPTransport(uds=path), timeout=timeout)


def test_requests_reuse_one_connection(server):
    srv, path = server
    with _client(path) as c:
        for i in range(5):
            r = c.get(f"/r{i}")
            assert r.status_code == 200 and r.json() == {"path": f"/r{i}", "status": "ok"}
        r = c.post("/echo", json={"a": 1})
        assert r.status_code == 201 and r.json() == {"a": 1}
    assert srv.requests == [f"/r{i}" for i in range(5)] + ["/echo"]
    assert srv.connections == 1


def test_a_connection_the_server_closed_while_idle_is_replaced(server):
    srv, path = server
    with _client(path) as c:
        assert c.get("/drop").status_code == 200  # the server closes it after answering
        time.sleep(0.1)
        r = c.post("/echo", json={"after": "drop"})  # sent on the dead connection first, then again
        assert r.status_code == 201 and r.json() == {"after": "drop"}
    assert srv.requests == ["/drop", "/echo"]  # the POST was served exactly once
    assert srv.connections == 2


def test_chunked_stream_arrives_piece_by_piece(server):
    srv, path = server
    with _client(path) as c, c.stream("GET", "/stream") as r:
        assert r.status_code == 200 and "transfer-encoding" not in r.headers
        got = []
        for line in r.iter_lines():
            if line:
                got.append((line, time.monotonic()))
    assert [line for line, _ in got] == ["data: 0", "data: 1", "data: 2"]
    # each piece was read before the server wrote the next one (0.2 s apart)
    assert got[0][1] < srv.sent[1] and got[1][1] < srv.sent[2]


def test_read_timeout_and_connect_errors_are_httpx_errors(server, tmp_path):
    _, path = server
    with _client(path, timeout=0.2) as c:
        with pytest.raises(httpx.ReadTimeout):
            c.get("/slow")
    with _client(str(tmp_path / "missing.sock")) as c:
        with pytest.raises(httpx.ConnectError):
            c.get("/x")
    with pytest.raises(httpx.UnsupportedProtocol):
        httpx.Client(transport=PlainHTTPTransport()).get("https://localhost:1/")


def test_msting_client_maps_them(server, tmp_path):
    _, path = server
    with MstingClient(socket_path=path, timeout=0.2) as c:
        with pytest.raises(RequestTimeout):
            c._json("GET", "/slow")
    with MstingClient(socket_path=tmp_path / "missing.sock") as c:
        with pytest.raises(DaemonUnavailable, match="not running"):
            c.health()
