"""Who may call the daemon: API key on TCP, Host-header check on TCP, peer uid on the
Unix socket, and the refusal to bind a non-loopback address without a key. Real
daemons, real sockets, real clients (curl, httpx, the openai package, websockets)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import httpx
import pytest

pytestmark = pytest.mark.e2e

KEY = "s3cret-key-for-tests"
GEN = {"prompt": "Hello", "max_tokens": 5, "temperature": 0}


def _assert_openai_error(resp: httpx.Response, status: int, type_: str, code: str) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert err["type"] == type_ and err["code"] == code and err["param"] is None and err["message"]
    return err


def _raw_http(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        chunks = []
        while data := s.recv(65536):
            chunks.append(data)
    return b"".join(chunks)


# ------------------------------------------------------------------------ API key


def test_api_key_guards_tcp_but_not_health_or_the_socket(daemon_home):
    daemon_home.env["LLM_API_KEY"] = KEY
    daemon_home.start()  # the CLI talks over the socket: no key needed to start or wait
    good = {"Authorization": f"Bearer {KEY}"}
    with daemon_home.tcp_client() as tcp:
        # liveness stays open
        r = tcp.get("/health")
        assert r.status_code == 200 and r.json()["status"] == "ok"
        # no key, wrong key, wrong scheme: 401 in the OpenAI format
        r = tcp.post("/generate", json=GEN)
        _assert_openai_error(r, 401, "authentication_error", "invalid_api_key")
        assert r.headers["www-authenticate"] == "Bearer"
        assert KEY not in r.text
        for headers in ({"Authorization": "Bearer nope"}, {"Authorization": f"Bearer {KEY}x"},
                        {"Authorization": f"Basic {KEY}"}, {"Authorization": KEY}, {"Authorization": "Bearer"}):
            r = tcp.post("/generate", json=GEN, headers=headers)
            _assert_openai_error(r, 401, "authentication_error", "invalid_api_key")
            assert r.headers["www-authenticate"] == "Bearer"
        # readiness is not liveness: it needs the key
        _assert_openai_error(tcp.get("/health/ready"), 401, "authentication_error", "invalid_api_key")
        assert tcp.get("/health/ready", headers=good).status_code == 200
        _assert_openai_error(tcp.get("/v1/status"), 401, "authentication_error", "invalid_api_key")
        # an unknown route is a 401 too, not a 404 that maps the API for strangers
        _assert_openai_error(tcp.get("/nowhere"), 401, "authentication_error", "invalid_api_key")
        # the right key (the scheme is case-insensitive)
        r = tcp.post("/generate", json=GEN, headers=good)
        assert r.status_code == 200 and r.json()["text"], r.text
        r = tcp.post("/generate", json=GEN, headers={"Authorization": f"bearer {KEY}"})
        assert r.status_code == 200
        # streaming passes through the middleware untouched
        events = []
        with tcp.stream("POST", "/generate", json={**GEN, "max_tokens": 20, "stream": True}, headers=good) as resp:
            assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
            events = [line[7:] for line in resp.iter_lines() if line.startswith("event: ")]
        assert events.count("token") >= 1 and events[-1] == "done"
    # the Unix socket never needs the key
    with daemon_home.client() as unix:
        assert unix.post("/generate", json=GEN).status_code == 200
        assert unix.get("/health/ready").status_code == 200
        assert unix.get("/v1/status").status_code == 200
    # curl, as in the README
    out = subprocess.run(["curl", "-q", "-sS", "-o", "/dev/null", "-w", "%{http_code}", f"{daemon_home.url}/generate",
                          "-H", f"Authorization: Bearer {KEY}", "-d", json.dumps(GEN)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert out == "200"
    log = daemon_home.log_file.read_text()
    assert "API-key auth ON" in log and "LLM_API_KEY" in log
    assert KEY not in log


def test_openai_client_sees_authentication_error(daemon_home):
    openai = pytest.importorskip("openai")
    daemon_home.env["LLM_API_KEY"] = KEY
    daemon_home.start()
    wrong = openai.OpenAI(base_url=daemon_home.url + "/v1", api_key="not-the-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        wrong.models.list()
    assert info.value.status_code == 401
    assert info.value.code == "invalid_api_key"
    right = openai.OpenAI(base_url=daemon_home.url + "/v1", api_key=KEY, max_retries=0)
    ids = [m.id for m in right.models.list()]
    assert "msting-tiny" in ids


def test_without_a_key_tcp_is_open_on_loopback(daemon_home):
    daemon_home.env.pop("LLM_API_KEY", None)
    daemon_home.start()
    with daemon_home.tcp_client() as tcp:
        assert tcp.post("/generate", json=GEN).status_code == 200
        assert tcp.get("/health/ready").status_code == 200
    assert "API-key auth OFF" in daemon_home.log_file.read_text()


# ----------------------------------------------------------------------- Host header


def test_host_header_must_be_loopback_or_allowed(daemon_home):
    daemon_home.env.pop("LLM_API_KEY", None)
    daemon_home.write_config({"llm_service": {"allowed_hosts": ["My-Box.LAN", "fe80::1"]}})
    daemon_home.start()
    port = daemon_home.port
    with daemon_home.tcp_client() as tcp:
        for host in ("evil.example", f"evil.example:{port}", "localhost.evil.example", "127.0.0.1.evil.example",
                     "localhost:notaport", "my-box.lan.evil.example"):
            r = tcp.get("/health", headers={"Host": host})
            err = _assert_openai_error(r, 403, "permission_error", "host_not_allowed")
            assert "llm_service.allowed_hosts" in err["message"]
        r = tcp.post("/generate", json=GEN, headers={"Host": "evil.example"})
        err = _assert_openai_error(r, 403, "permission_error", "host_not_allowed")
        assert err["message"] == "Host header 'evil.example' is not allowed; add it to llm_service.allowed_hosts"
        for host in (f"localhost:{port}", "localhost", "LOCALHOST", f"127.0.0.1:{port}", "127.8.9.10", f"[::1]:{port}",
                     "my-box.lan", f"MY-BOX.lan:{port}", "my-box.lan:1", "[fe80::1]:8086"):
            r = tcp.get("/health", headers={"Host": host})
            assert r.status_code == 200, (host, r.text)
        assert tcp.post("/generate", json=GEN, headers={"Host": f"localhost:{port}"}).status_code == 200
        # a web page elsewhere posting to loopback: right Host, foreign Origin
        r = tcp.post("/generate", json=GEN, headers={"Origin": "https://evil.example"})
        err = _assert_openai_error(r, 403, "permission_error", "host_not_allowed")
        assert "cross-origin" in err["message"] and "evil.example" in err["message"]
        assert tcp.post("/generate", json=GEN, headers={"Origin": "null"}).status_code == 403
        for origin in (f"http://localhost:{port}", "http://127.0.0.1", "https://my-box.lan"):
            assert tcp.post("/generate", json=GEN, headers={"Origin": origin}).status_code == 200, origin
    # HTTP/1.1 without Host is refused; HTTP/1.0 may omit it
    raw = _raw_http(port, b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 403") and b"host_not_allowed" in raw
    raw = _raw_http(port, b"GET /health HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\nConnection: close\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 403") and b"host_not_allowed" in raw
    raw = _raw_http(port, b"GET /health HTTP/1.0\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200"), raw[:200]
    # the Unix socket does not check Host (the CLI sends "msting")
    with daemon_home.client() as unix:
        assert unix.get("/health", headers={"Host": "evil.example"}).status_code == 200


def test_websocket_is_refused_before_accept(daemon_home):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    daemon_home.env["LLM_API_KEY"] = KEY
    daemon_home.start()
    base = f"ws://127.0.0.1:{daemon_home.port}"
    with pytest.raises(InvalidStatus) as info:
        connect(f"{base}/v1/ws", open_timeout=10).close()
    assert info.value.response.status_code == 401
    assert json.loads(info.value.response.body)["error"]["code"] == "invalid_api_key"
    # A rebinding page: the browser connects to 127.0.0.1 but names evil.example.
    sock = socket.create_connection(("127.0.0.1", daemon_home.port), timeout=10)
    with pytest.raises(InvalidStatus) as info:
        connect(f"ws://evil.example:{daemon_home.port}/v1/ws", sock=sock, open_timeout=10,
                additional_headers={"Authorization": f"Bearer {KEY}"}).close()
    assert info.value.response.status_code == 403
    assert json.loads(info.value.response.body)["error"]["code"] == "host_not_allowed"


# ------------------------------------------------------------------ start-up refusal


def test_non_loopback_bind_without_key_is_refused(daemon_home):
    daemon_home.env.pop("LLM_API_KEY", None)
    daemon_home.env.pop("MSTING_TEST_KEY", None)
    daemon_home.write_config({"llm_service": {"host": "0.0.0.0", "api_key_env_var": "MSTING_TEST_KEY"}})
    proc = daemon_home.cli("llm", "start", "--timeout", "30", timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    text = proc.stdout + proc.stderr
    assert "MSTING_TEST_KEY" in text and "0.0.0.0" in text and "loopback" in text, text
    # nothing keeps running, nothing is left behind
    assert daemon_home.our_processes() == []
    assert not daemon_home.socket.exists() and not daemon_home.pidfile.exists()
    with pytest.raises(httpx.ConnectError):
        httpx.get(daemon_home.url + "/health", timeout=2)
    # an empty variable counts as unset
    daemon_home.env["MSTING_TEST_KEY"] = "  "
    proc = daemon_home.cli("llm", "start", "--timeout", "30", timeout=60)
    assert proc.returncode == 2 and "MSTING_TEST_KEY" in proc.stdout + proc.stderr
    assert daemon_home.our_processes() == []


def test_non_loopback_bind_with_key_serves_with_auth(daemon_home):
    daemon_home.env["LLM_API_KEY"] = KEY
    daemon_home.write_config({"llm_service": {"host": "0.0.0.0"}})
    daemon_home.start()
    with daemon_home.tcp_client() as tcp:
        _assert_openai_error(tcp.post("/generate", json=GEN), 401, "authentication_error", "invalid_api_key")
        assert tcp.post("/generate", json=GEN, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


# ---------------------------------------------------------------- peer credentials


@pytest.mark.skipif(shutil.which("setpriv") is None or shutil.which("curl") is None, reason="needs setpriv (util-linux) and curl")
@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another uid needs root")
@pytest.mark.skipif(not hasattr(socket, "SO_PEERCRED"), reason="SO_PEERCRED is Linux-only")
def test_unix_socket_drops_peers_of_another_uid(daemon_home):
    daemon_home.start()
    # Open the way for uid 65534 on purpose, so only the peer-credential check stands.
    for d in (daemon_home.home, daemon_home.socket.parent):
        os.chmod(d, 0o755)
    os.chmod(daemon_home.socket, 0o666)

    def curl(*prefix: str) -> subprocess.CompletedProcess:
        return subprocess.run([*prefix, "curl", "-q", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10",
                               "--unix-socket", str(daemon_home.socket), "http://localhost/health"],
                              capture_output=True, text=True, timeout=30, check=False)

    def warnings() -> int:
        return daemon_home.log_file.read_text().count("uid 65534: only uid")

    setpriv = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
    before = warnings()
    other = curl(*setpriv)
    # The daemon closes the connection at accept, before reading a byte: curl reports an
    # empty reply (52), a reset (56) or, when the close beats its connect check, 7.
    assert other.returncode in (7, 52, 56), (other.returncode, other.stdout, other.stderr)
    assert other.stdout in ("", "000") and "Permission denied" not in other.stderr
    daemon_home.wait_for(lambda: warnings() == before + 1, timeout=5, what="one peer warning in the log")
    # The same, deterministically: connect() succeeds (mode 0666), then no byte comes back.
    probe = ("import socket, sys\n"
             "s = socket.socket(socket.AF_UNIX); s.settimeout(10); s.connect(sys.argv[1])\n"
             "try:\n"
             "    s.sendall(b'GET /health HTTP/1.1\\r\\nHost: localhost\\r\\n\\r\\n'); data = s.recv(1024)\n"
             "except (ConnectionResetError, BrokenPipeError):\n"
             "    data = b''\n"
             "print('connected', len(data))\n")
    out = subprocess.run([*setpriv, sys.executable, "-I", "-c", probe, str(daemon_home.socket)],
                         capture_output=True, text=True, timeout=30, check=False)
    assert out.stdout.strip() == "connected 0", (out.returncode, out.stdout, out.stderr)
    daemon_home.wait_for(lambda: warnings() == before + 2, timeout=5, what="a second peer warning in the log")
    # The daemon's own uid gets its answer through the very same socket.
    same = curl()
    assert same.returncode == 0 and same.stdout == "200", (same.returncode, same.stdout, same.stderr)
    # the daemon is unharmed
    with daemon_home.client() as unix:
        assert unix.post("/generate", json=GEN).status_code == 200
