"""The demo backend (guard/demo.py) as a real child process, spoken to over real sockets.

Everything here goes through `python -m guard.demo ...` on a free loopback port, because the
demo is what other tests and the benchmarks stand on: its wire behaviour is the contract.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httptools
import pytest

REPO = Path(__file__).resolve().parent.parent
CURL = "/usr/bin/curl"
PATTERN = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"


def expected_bytes(n: int) -> bytes:
    return (PATTERN * (n // len(PATTERN) + 1))[:n]


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Demo:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")


def _ready(mode: str, port: int) -> bool:
    try:
        if mode == "udp":
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(0.2)
                s.sendto(b"ping", ("127.0.0.1", port))
                return s.recv(16) == b"pong"
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def run_demo(
    tmp: Path,
    *args: str,
    mode: str = "http",
    port: int | None = None,
    env_port: bool = True,
    env: dict[str, str] | None = None,
) -> Iterator[Demo]:
    """Start the demo, wait until it answers, and always kill it afterwards."""
    if port is None:
        port = free_port(socket.SOCK_DGRAM if mode == "udp" else socket.SOCK_STREAM)
    env = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
    if env_port:
        env["PORT"] = str(port)
    log = tmp / f"demo-{mode}-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "guard.demo", *args],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 10
        while not _ready(mode, port):
            if proc.poll() is not None:
                raise AssertionError(f"demo exited with {proc.returncode}: {log.read_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"demo did not listen on {port}: {log.read_text()}")
            time.sleep(0.05)
        yield Demo(proc, port, log)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def http_demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    with run_demo(tmp_path_factory.mktemp("demo"), "http") as demo:
        yield demo


@pytest.fixture(scope="module")
def tcp_demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    with run_demo(tmp_path_factory.mktemp("demo"), "tcp", mode="tcp") as demo:
        yield demo


@pytest.fixture(scope="module")
def udp_demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    with run_demo(tmp_path_factory.mktemp("demo"), "udp", mode="udp") as demo:
        yield demo


# -- raw HTTP helpers ---------------------------------------------------------------------


@dataclass
class Response:
    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    # (monotonic time, bytes) per body piece, to see streaming as it happened.
    pieces: list[tuple[float, bytes]] = field(default_factory=list)
    complete: bool = False

    def header(self, name: str) -> str | None:
        for n, v in self.headers:
            if n.decode().lower() == name.lower():
                return v.decode("latin-1")
        return None

    def json(self) -> dict:
        return json.loads(self.body)


class _Collector:
    def __init__(self) -> None:
        self.done: list[Response] = []
        self.cur = Response()
        self.parser = httptools.HttpResponseParser(self)

    def on_message_begin(self) -> None:
        self.cur = Response()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.cur.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.cur.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.cur.body += body
        self.cur.pieces.append((time.monotonic(), bytes(body)))

    def on_message_complete(self) -> None:
        self.cur.complete = True
        self.done.append(self.cur)


def read_responses(sock: socket.socket, n: int, timeout: float = 10) -> list[Response]:
    """Read exactly n framed (Content-Length / chunked / no-body) responses from sock."""
    col = _Collector()
    sock.settimeout(timeout)
    while len(col.done) < n:
        data = sock.recv(65536)
        if not data:
            raise AssertionError(f"EOF after {len(col.done)} of {n} responses")
        col.parser.feed_data(data)
    return col.done


def read_all(sock: socket.socket, timeout: float = 10) -> bytes:
    sock.settimeout(timeout)
    chunks = []
    while data := sock.recv(65536):
        chunks.append(data)
    return b"".join(chunks)


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


def connect(demo: Demo) -> socket.socket:
    return socket.create_connection(("127.0.0.1", demo.port), timeout=10)


def get(demo: Demo, target: str, method: str = "GET", **kw: object) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", demo.port, timeout=10)
    conn.request(method, target, **kw)  # type: ignore[arg-type]
    return conn.getresponse()


# -- http mode ----------------------------------------------------------------------------


def test_healthz(http_demo: Demo) -> None:
    resp = get(http_demo, "/healthz")
    assert resp.status == 200
    assert resp.read() == b"ok"
    assert resp.getheader("X-Demo-Port") == str(http_demo.port)


@pytest.mark.parametrize("n", [0, 1, 63, 65536, 65537, 300_000])
def test_bytes_content_length(http_demo: Demo, n: int) -> None:
    resp = get(http_demo, f"/bytes/{n}")
    assert resp.status == 200
    assert resp.getheader("Content-Length") == str(n)
    assert resp.read() == expected_bytes(n)


@pytest.mark.parametrize("n", [0, 10, 200_000])
def test_bytes_chunked(http_demo: Demo, n: int) -> None:
    with connect(http_demo) as s:
        s.sendall(f"GET /bytes/{n}?chunked=1 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        (resp,) = read_responses(s, 1)
    assert resp.header("Transfer-Encoding") == "chunked"
    assert resp.header("Content-Length") is None
    assert bytes(resp.body) == expected_bytes(n)


def test_bytes_large_through_curl(http_demo: Demo) -> None:
    n = 64 * 1024 * 1024 + 7
    out = subprocess.run(
        [
            CURL,
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download}",
            f"http://127.0.0.1:{http_demo.port}/bytes/{n}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert out == f"200 {n}"


def test_bytes_respects_backpressure(http_demo: Demo) -> None:
    """A 1 GiB response to a client that reads slowly must not pile up in the server."""
    before = http_demo.rss_kib()
    with connect(http_demo) as s:
        s.sendall(b"GET /bytes/1073741824 HTTP/1.1\r\nHost: x\r\n\r\n")
        got = 0
        while got < 1024 * 1024:
            got += len(s.recv(65536))
        time.sleep(0.5)  # plenty of time to buffer hundreds of MiB if it ignored backpressure
        grown = http_demo.rss_kib() - before
    assert grown < 32 * 1024, f"server grew by {grown} KiB while the client wasn't reading"
    # The connection was dropped mid-body; the server must still serve others.
    assert get(http_demo, "/healthz").status == 200


def test_bytes_bad_n(http_demo: Demo) -> None:
    assert get(http_demo, "/bytes/abc").status == 400
    assert get(http_demo, "/bytes/-1").status == 400


def test_stream_arrives_chunk_by_chunk(http_demo: Demo) -> None:
    with connect(http_demo) as s:
        s.sendall(b"GET /stream?chunks=4&interval=0.2 HTTP/1.1\r\nHost: x\r\n\r\n")
        (resp,) = read_responses(s, 1)
    assert resp.header("Transfer-Encoding") == "chunked"
    assert bytes(resp.body) == b"chunk 0\nchunk 1\nchunk 2\nchunk 3\n"
    # Each line is its own write with a pause before the next: the first came well before
    # the last, so a proxy test can tell streaming from buffering.
    assert resp.pieces[-1][0] - resp.pieces[0][0] >= 0.5


def test_stream_defaults(http_demo: Demo) -> None:
    resp = get(http_demo, "/stream?interval=0")
    assert resp.read() == b"".join(b"chunk %d\n" % i for i in range(5))


@pytest.mark.parametrize("code", [200, 201, 302, 404, 418, 500, 503])
def test_status_with_empty_body(http_demo: Demo, code: int) -> None:
    resp = get(http_demo, f"/status/{code}")
    assert resp.status == code
    assert resp.getheader("Content-Length") == "0"
    assert resp.read() == b""


@pytest.mark.parametrize("code", [204, 304])
def test_status_without_body(http_demo: Demo, code: int) -> None:
    with connect(http_demo) as s:
        # The next request on the same connection proves no stray body bytes were sent.
        s.sendall(
            f"GET /status/{code} HTTP/1.1\r\nHost: x\r\n\r\n"
            "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        )
        first, second = read_responses(s, 2)
    assert first.header("Content-Length") is None
    assert first.header("Transfer-Encoding") is None
    assert bytes(first.body) == b""
    assert bytes(second.body) == b"ok"


@pytest.mark.parametrize("target", ["/status/abc", "/status/100", "/status/600"])
def test_status_invalid(http_demo: Demo, target: str) -> None:
    assert get(http_demo, target).status == 400


def test_slow(http_demo: Demo) -> None:
    start = time.monotonic()
    resp = get(http_demo, "/slow?delay=0.3")
    assert resp.status == 200
    resp.read()
    assert time.monotonic() - start >= 0.3


def test_slow_bad_delay(http_demo: Demo) -> None:
    assert get(http_demo, "/slow?delay=x").status == 400


def test_echo_get_keeps_target_and_header_order(http_demo: Demo) -> None:
    with connect(http_demo) as s:
        s.sendall(
            b"GET /some/where?a=1&b=%20two HTTP/1.1\r\n"
            b"Host: example.test\r\n"
            b"X-Mixed-Case: One\r\n"
            b"x-lower: two\r\n"
            b"X-Mixed-Case: three\r\n"
            b"\r\n"
        )
        (resp,) = read_responses(s, 1)
    doc = resp.json()
    assert resp.header("Content-Type") == "application/json"
    assert resp.header("X-Demo-Port") == str(http_demo.port)
    assert doc["method"] == "GET"
    assert doc["path"] == "/some/where?a=1&b=%20two"
    assert doc["headers"] == [
        ["Host", "example.test"],
        ["X-Mixed-Case", "One"],
        ["x-lower", "two"],
        ["X-Mixed-Case", "three"],
    ]
    assert doc["body"] == ""
    assert doc["body_length"] == 0
    assert doc["port"] == http_demo.port


def test_echo_post_utf8_body(http_demo: Demo) -> None:
    body = "héllo wörld".encode()
    doc = json.loads(get(http_demo, "/post", "POST", body=body).read())
    assert doc["method"] == "POST"
    assert doc["body"] == "héllo wörld"
    assert doc["body_length"] == len(body)


def test_echo_binary_body_is_base64(http_demo: Demo) -> None:
    import base64

    body = bytes(range(256))
    doc = json.loads(get(http_demo, "/bin", "PUT", body=body).read())
    assert doc["body_encoding"] == "base64"
    assert base64.b64decode(doc["body"]) == body
    assert doc["body_length"] == 256


def test_echo_chunked_request_body(http_demo: Demo) -> None:
    with connect(http_demo) as s:
        s.sendall(
            b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
        )
        time.sleep(0.05)  # the body arriving in separate packets must not matter
        s.sendall(b"6\r\n world\r\n0\r\n\r\n")
        (resp,) = read_responses(s, 1)
    doc = resp.json()
    assert doc["body"] == "hello world"
    assert doc["body_length"] == 11


def test_expect_100_continue(http_demo: Demo) -> None:
    with connect(http_demo) as s:
        s.sendall(
            b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n"
        )
        interim = s.recv(100)
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        s.sendall(b"abc")
        rest = interim[len(b"HTTP/1.1 100 Continue\r\n\r\n") :]
        if rest:  # the final response may have come in the same read, unlikely but legal
            pytest.skip("final response merged with 100 Continue")
        (resp,) = read_responses(s, 1)
    assert resp.json()["body"] == "abc"


def test_keep_alive_reuses_connection(http_demo: Demo) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", http_demo.port, timeout=10)
    try:
        conn.request("GET", "/healthz")
        assert conn.getresponse().read() == b"ok"
        sock = conn.sock
        conn.request("GET", "/a")
        assert json.loads(conn.getresponse().read())["path"] == "/a"
        assert conn.sock is sock
    finally:
        conn.close()


def test_pipelined_requests_answered_in_order(http_demo: Demo) -> None:
    with connect(http_demo) as s:
        # A slow first request must hold back the fast ones behind it.
        s.sendall(
            b"GET /slow?delay=0.2 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /status/204 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /bytes/100000 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /last HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"
        )
        slow, ok, empty, data, last = read_responses(s, 5)
    assert bytes(slow.body).startswith(b"slept")
    assert bytes(ok.body) == b"ok"
    assert empty.body == b""
    assert bytes(data.body) == expected_bytes(100000)
    assert last.json()["path"] == "/last"
    assert last.json()["body"] == "hi"


def test_many_pipelined_requests(http_demo: Demo) -> None:
    n = 200  # more than the demo's read-pause threshold
    with connect(http_demo) as s:
        s.sendall(b"".join(b"GET /r%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(n)))
        resps = read_responses(s, n)
    assert [r.json()["path"] for r in resps] == [f"/r{i}" for i in range(n)]


def test_http10_closes_by_default(http_demo: Demo) -> None:
    with connect(http_demo) as s:
        s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        raw = read_all(s)
    assert raw.startswith(b"HTTP/1.1 200")
    assert b"\r\nConnection: close\r\n" in raw
    assert raw.endswith(b"\r\n\r\nok")


def test_http10_keep_alive(http_demo: Demo) -> None:
    with connect(http_demo) as s:
        s.sendall(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        (first,) = read_responses(s, 1)
        assert first.header("Connection") == "keep-alive"
        s.sendall(b"GET /x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        (second,) = read_responses(s, 1)
    assert second.json()["http_version"] == "1.0"


@pytest.mark.parametrize(
    ("target", "body"),
    [
        ("/stream?chunks=3&interval=0", b"chunk 0\nchunk 1\nchunk 2\n"),
        ("/bytes/1000?chunked=1", expected_bytes(1000)),
    ],
)
def test_http10_gets_close_delimited_instead_of_chunked(
    http_demo: Demo, target: str, body: bytes
) -> None:
    with connect(http_demo) as s:
        s.sendall(f"GET {target} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n".encode())
        raw = read_all(s)
    head, _, got = raw.partition(b"\r\n\r\n")
    assert b"chunked" not in head.lower()
    assert b"Connection: close" in head
    assert got == body


def test_head(http_demo: Demo) -> None:
    resp = get(http_demo, "/bytes/1000", "HEAD")
    assert resp.status == 200
    assert resp.getheader("Content-Length") == "1000"
    assert resp.read() == b""


def test_bad_request_gets_400_and_close(http_demo: Demo) -> None:
    with connect(http_demo) as s:
        s.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        raw = read_all(s)
    assert status_of(raw) == 400


def test_half_close_still_answers(http_demo: Demo) -> None:
    with connect(http_demo) as s:
        s.sendall(b"GET /slow?delay=0.1 HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n")
        s.shutdown(socket.SHUT_WR)
        raw = read_all(s)
    assert raw.count(b"HTTP/1.1 200 OK") == 2
    assert raw.endswith(b"ok")


def test_curl_chunked_upload_and_headers(http_demo: Demo) -> None:
    out = subprocess.run(
        [
            CURL,
            "-sS",
            "-D",
            "-",
            "-H",
            "Transfer-Encoding: chunked",
            "-H",
            "X-Test: yes",
            "--data-binary",
            "payload",
            f"http://127.0.0.1:{http_demo.port}/curl?x=1",
        ],
        capture_output=True,
        timeout=30,
        check=True,
    ).stdout
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert f"X-Demo-Port: {http_demo.port}".encode() in head
    doc = json.loads(body)
    assert doc["path"] == "/curl?x=1"
    assert ["X-Test", "yes"] in doc["headers"]
    assert ["Transfer-Encoding", "chunked"] in doc["headers"]
    assert doc["body"] == "payload"


def test_concurrent_connections(http_demo: Demo) -> None:
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            for j in range(20):
                doc = json.loads(get(http_demo, f"/c{i}/{j}").read())
                assert doc["path"] == f"/c{i}/{j}"
        except BaseException as exc:  # collected and re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors


# -- websocket (/ws) ----------------------------------------------------------------------


class WsPeer:
    """wsproto's own client (handshake included) on a blocking socket."""

    def __init__(self, demo: Demo, path: str = "/ws") -> None:
        from wsproto import WSConnection
        from wsproto.connection import ConnectionType
        from wsproto.events import Request

        self.sock = connect(demo)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.sock.sendall(self.ws.send(Request(host="x", target=path)))
        self.pending: list[object] = []

    def send(self, event: object) -> None:
        self.sock.sendall(self.ws.send(event))  # type: ignore[arg-type]

    def next(self) -> object:
        while not self.pending:
            data = self.sock.recv(1 << 20)
            self.ws.receive_data(data or None)
            self.pending.extend(self.ws.events())
        return self.pending.pop(0)


def test_ws_echo(http_demo: Demo) -> None:
    from wsproto.events import (
        AcceptConnection,
        BytesMessage,
        CloseConnection,
        Ping,
        Pong,
        TextMessage,
    )

    peer = WsPeer(http_demo)
    assert isinstance(peer.next(), AcceptConnection)
    peer.send(TextMessage(data="héllo"))
    ev = peer.next()
    assert isinstance(ev, TextMessage) and ev.data == "héllo" and ev.message_finished
    peer.send(BytesMessage(data=b"\x00" * 70000))
    got = b""
    while True:
        ev = peer.next()
        assert isinstance(ev, BytesMessage)
        got += ev.data
        if ev.message_finished:
            break
    assert got == b"\x00" * 70000
    peer.send(Ping(payload=b"p"))
    ev = peer.next()
    assert isinstance(ev, Pong) and ev.payload == b"p"
    peer.send(TextMessage(data="!send 100"))
    ev = peer.next()
    assert isinstance(ev, BytesMessage) and ev.data == expected_bytes(100)
    peer.send(CloseConnection(code=4000, reason="bye"))
    ev = peer.next()
    assert isinstance(ev, CloseConnection) and (ev.code, ev.reason) == (4000, "bye")
    assert read_all(peer.sock) == b""  # then the demo closes the connection


def test_ws_close_command(http_demo: Demo) -> None:
    from wsproto.events import AcceptConnection, CloseConnection, TextMessage

    peer = WsPeer(http_demo)
    assert isinstance(peer.next(), AcceptConnection)
    peer.send(TextMessage(data="!close 4100 later"))
    ev = peer.next()
    assert isinstance(ev, CloseConnection) and (ev.code, ev.reason) == (4100, "later")


def test_ws_needs_an_upgrade_and_other_upgrades_close(http_demo: Demo) -> None:
    assert get(http_demo, "/ws").status == 400
    with connect(http_demo) as s:
        s.sendall(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n"
        )
        raw = read_all(s)
    assert raw.startswith(b"HTTP/1.1 200") and b"Connection: close" in raw


# -- process behaviour --------------------------------------------------------------------


def test_no_mode_means_http_and_port_flag_wins(tmp_path: Path) -> None:
    port = free_port()
    other = {"PORT": str(free_port())}
    with run_demo(tmp_path, "--port", str(port), port=port, env_port=False, env=other) as demo:
        assert get(demo, "/healthz").read() == b"ok"
        assert get(demo, "/x").getheader("X-Demo-Port") == str(port)


def test_port_from_env(tmp_path: Path) -> None:
    with run_demo(tmp_path) as demo:
        assert json.loads(get(demo, "/").read())["port"] == demo.port


@pytest.mark.parametrize("mode", ["http", "tcp", "udp"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_exits_zero(tmp_path: Path, mode: str, sig: signal.Signals) -> None:
    with run_demo(tmp_path, mode, mode=mode) as demo:
        if mode == "http":
            # An open keep-alive connection must not keep the process alive.
            held = connect(demo)
            held.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            read_responses(held, 1)
        demo.proc.send_signal(sig)
        assert demo.proc.wait(5) == 0
        if mode == "http":
            held.close()


def test_unknown_mode_exits_2_with_usage() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "guard.demo", "gopher"],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "usage" in proc.stderr.lower()
    assert "gopher" in proc.stderr


# -- tcp mode -----------------------------------------------------------------------------


def test_tcp_echo(tcp_demo: Demo) -> None:
    with connect(tcp_demo) as s:
        for msg in (b"hello", b"\x00\xff binary", b"x" * 10000):
            s.sendall(msg)
            got = b""
            while len(got) < len(msg):
                got += s.recv(65536)
            assert got == msg


def test_tcp_half_close_finishes_echo_then_closes(tcp_demo: Demo) -> None:
    payload = expected_bytes(8 * 1024 * 1024)
    with connect(tcp_demo) as s:

        def send() -> None:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)

        # Send from a thread: the echo comes back while we are still sending, and with
        # nobody reading both sides' buffers would fill and stall.
        sender = threading.Thread(target=send)
        sender.start()
        got = read_all(s, timeout=30)
        sender.join(10)
    assert got == payload


def test_tcp_many_connections(tcp_demo: Demo) -> None:
    socks = [connect(tcp_demo) for _ in range(20)]
    try:
        for i, s in enumerate(socks):
            s.sendall(b"conn %d" % i)
        for i, s in enumerate(socks):
            assert s.recv(100) == b"conn %d" % i
    finally:
        for s in socks:
            s.close()


# -- udp mode -----------------------------------------------------------------------------


def test_udp_ping_pong(udp_demo: Demo) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(b"ping", ("127.0.0.1", udp_demo.port))
        assert s.recv(100) == b"pong"


@pytest.mark.parametrize("payload", [b"hello", b"\x00\x01\x02", b"pingpong", b"y" * 60000])
def test_udp_echo(udp_demo: Demo, payload: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(payload, ("127.0.0.1", udp_demo.port))
        data, addr = s.recvfrom(65536)
    assert data == payload
    assert addr == ("127.0.0.1", udp_demo.port)
