"""Bodies stream through Guard in both directions with bounded memory, and chunked framing
is re-made for each client. Both parsers (``parser`` fixture)."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from helpers import BackendConn, Conn, MiB, expected_bytes, fetch

GiB = 1024 * MiB


class RssWatch:
    """Samples a process's VmRSS in a thread; ``peak`` is the highest seen (KiB)."""

    def __init__(self, g) -> None:
        self.g = g
        self.start = g.rss_kib()
        self.peak = self.start
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.peak = max(self.peak, self.g.rss_kib())
            except (FileNotFoundError, AssertionError):
                return

    def stop(self) -> int:
        """Stop sampling; the growth over the start in MiB."""
        self._stop.set()
        self._t.join(1)
        self.peak = max(self.peak, self.g.rss_kib())
        return (self.peak - self.start) // 1024


def test_1gib_response_to_slow_client_keeps_memory_bounded(guard, demos) -> None:
    g = guard(servers=[demos[2].address])
    assert fetch(g.port, "GET", "/bytes/65536").status == 200  # warm up
    watch = RssWatch(g)
    want = 200 * MiB
    got = 0
    with Conn(g.port, timeout=10) as c:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
        c.request("GET", f"/bytes/{GiB}")
        head = c.read_head()
        assert head.status == 200 and head.header("content-length") == str(GiB)
        got = len(c.buf)
        assert bytes(c.buf) == expected_bytes(got)
        c.buf.clear()
        t0 = time.monotonic()
        while got < want:
            # ~64 KiB per read, paced to ~100 MiB/s: far slower than the backend
            data = c.sock.recv(64 * 1024)
            assert data, f"closed after {got} bytes"
            if got < MiB:
                assert data == expected_bytes(len(data), got)
            got += len(data)
            if got % (640 * 1024) < len(data):
                time.sleep(max(0.0, got / (100 * MiB) - (time.monotonic() - t0)))
    grew = watch.stop()
    assert grew < 100, f"Guard RSS grew {grew} MiB while relaying {got >> 20} MiB"
    # the abandoned 1 GiB exchange did not wedge anything
    r = fetch(g.port, "GET", "/bytes/10")
    assert r.body == b"abcdefghij"


def _count_upload(conn: BackendConn) -> None:
    """Read each request body (CL or chunked) slowly, counting bytes; answer the count."""
    conn.throttle = 0.02  # ~8 reads per 20 ms: slower than the client sends
    while (req := conn.read_request(read_body=False)) is not None:
        conn.body_bytes = 0
        if not conn.read_body(req, count_only=True):
            return
        conn.backend.requests.append(req)
        conn.respond(200, b"%d" % conn.body_bytes)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_50mib_upload_streams_with_bounded_memory(guard, raw_backend, framing) -> None:
    backend = raw_backend(_count_upload, record=False)
    g = guard(servers=[backend.address])
    size = 50 * MiB
    piece = expected_bytes(MiB)
    watch = RssWatch(g)
    with Conn(g.port, timeout=20) as c:
        if framing == "chunked":
            c.send(b"POST /up HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n")
            for _ in range(size // MiB):
                c.send(b"%x\r\n%s\r\n" % (len(piece), piece))
            c.send(b"0\r\n\r\n")
        else:
            c.send(b"POST /up HTTP/1.1\r\nHost: test\r\nContent-Length: %d\r\n\r\n" % size)
            for _ in range(size // MiB):
                c.send(piece)
        r = c.read_response()
    grew = watch.stop()
    assert (r.status, r.body) == (200, b"%d" % size), (r.raw_head, r.body)
    assert backend.accepted == 1
    # Guard held far less than the 50 MiB body at any time
    assert grew < 16, f"Guard RSS grew {grew} MiB for a {size >> 20} MiB upload"


# ------------------------------------------------------------------ chunked relay


def test_chunked_response_streams_chunked_to_http11(std_guard) -> None:
    with Conn(std_guard.port) as c:
        t0 = time.monotonic()
        c.request("GET", "/stream?chunks=4&interval=0.25", "demo.test")
        head = c.read_head()
        assert head.status == 200
        assert head.header("transfer-encoding") == "chunked"
        assert head.header("content-length") is None
        first_line = c._read_line()  # first chunk size: it arrives before the stream ends
        first_at = time.monotonic() - t0
        c.buf[:0] = first_line + b"\r\n"
        c.buf[:0] = head.raw_head
        r = c.read_response()
        total = time.monotonic() - t0
    assert r.chunked and r.body == b"".join(b"chunk %d\n" % i for i in range(4))
    assert first_at < 0.3 and total >= 0.7, (first_at, total)
    # and the connection is reusable after the final chunk
    r = fetch(std_guard.port, "GET", "/bytes/100000?chunked=1", "demo.test")
    assert r.chunked and r.body == expected_bytes(100000)


def test_chunked_response_close_delimited_to_http10(std_guard) -> None:
    with Conn(std_guard.port) as c:
        c.request(
            "GET",
            "/bytes/100000?chunked=1",
            "demo.test",
            [("Connection", "keep-alive")],
            version="1.0",
        )
        # Guard asks the backend in HTTP/1.1, gets chunked, and must un-chunk it
        r = c.read_response()
        assert r.status == 200
        assert r.header("transfer-encoding") is None
        assert r.header("connection") == "close"
        assert r.body == expected_bytes(100000)
        assert c.eof


def test_keep_alive_after_chunked_to_http11(std_guard) -> None:
    with Conn(std_guard.port) as c:
        for _ in range(3):
            c.request("GET", "/stream?chunks=3&interval=0", "demo.test")
            r = c.read_response()
            assert r.body == b"chunk 0\nchunk 1\nchunk 2\n"


# ------------------------------------------------------------------------ trailers


def _chunked_with_trailers(conn: BackendConn) -> None:
    while (req := conn.read_request()) is not None:
        conn.backend.requests.append(req)
        conn.send(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n"
            b"X-Head: 1\r\n\r\n"
            b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Checksum: abc\r\nX-Other: 2\r\n\r\n"
        )


def test_response_trailers_dropped(guard, raw_backend) -> None:
    backend = raw_backend(_chunked_with_trailers)
    g = guard(servers=[backend.address])
    with Conn(g.port) as c:
        for _ in range(2):
            c.request("GET", "/t")
            r = c.read_response()
            assert r.status == 200 and r.chunked
            assert r.body == b"hello, world"
            assert r.trailers == []
            assert r.header("x-head") == "1"
            assert r.header("trailer") is None  # hop-by-hop
            assert r.header("x-checksum") is None
    assert backend.accepted == 1  # the trailer section ended the message cleanly


def test_response_trailers_http10_client(guard, raw_backend) -> None:
    backend = raw_backend(_chunked_with_trailers)
    g = guard(servers=[backend.address])
    with Conn(g.port) as c:
        c.request("GET", "/t", version="1.0")
        r = c.read_response()
        assert r.body == b"hello, world" and c.eof


def test_request_trailers_dropped(guard, raw_backend) -> None:
    backend = raw_backend(lambda conn: _record_and_answer(conn))
    g = guard(servers=[backend.address])
    with Conn(g.port) as c:
        c.send(
            b"POST /t HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n"
            b"Trailer: X-Sum\r\n\r\n"
            b"3\r\nabc\r\n4;name=v\r\ndefg\r\n0\r\nX-Sum: 99\r\n\r\n"
            b"GET /after HTTP/1.1\r\nHost: test\r\n\r\n"
        )
        r1, r2 = c.read_response(), c.read_response()
    assert (r1.status, r1.body) == (200, b"/t")
    assert (r2.status, r2.body) == (200, b"/after")
    first, second = backend.requests
    assert first.body == b"abcdefg"
    assert first.header("transfer-encoding") == "chunked"
    assert first.header("trailer") is None
    assert first.header("x-sum") is None
    # exactly: the body re-chunked and the message ended with an empty trailer section
    body_wire = first.raw[len(first.raw.split(b"\r\n\r\n", 1)[0]) + 4 :]
    assert b"X-Sum" not in first.raw
    assert body_wire.endswith(b"0\r\n\r\n")
    assert _dechunk(body_wire) == b"abcdefg"
    assert second.target == "/after"


def _record_and_answer(conn: BackendConn) -> None:
    while (req := conn.read_request()) is not None:
        conn.backend.requests.append(req)
        conn.respond(200, req.target.encode())


def _dechunk(wire: bytes) -> bytes:
    out = b""
    while True:
        line, _, wire = wire.partition(b"\r\n")
        size = int(line.split(b";")[0], 16)
        if size == 0:
            assert wire == b"\r\n", wire
            return out
        out += wire[:size]
        assert wire[size : size + 2] == b"\r\n"
        wire = wire[size + 2 :]


def _early_streaming_answer(conn: BackendConn) -> None:
    """Answer once the head arrives, stream the body for ~2.5 s, then read the upload."""
    req = conn.read_request(read_body=False)
    if req is None:
        return
    conn.send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
    for i in range(10):
        conn.send(b"5\r\npart%d\r\n" % i)
        time.sleep(0.25)
    conn.send(b"0\r\n\r\n")
    conn.read_body(req)


def test_early_answer_streams_past_response_header_timeout(guard, raw_backend) -> None:
    """A response that began before the request body ended is a stream, not a wait for a
    header: finishing the body must not put it back under ``response_header``."""
    backend = raw_backend(_early_streaming_answer)
    g = guard(servers=[backend.address], http={"timeouts": {"response_header": "1s"}})
    with Conn(g.port, timeout=10) as c:
        c.send(b"POST /up HTTP/1.1\r\nHost: test\r\nContent-Length: 10\r\n\r\nhello")
        head = c.read_head()
        assert head.status == 200
        assert head.header("transfer-encoding") == "chunked"
        c.send(b"world")  # the body ends while the response streams on
        parts = []
        while size := int(c._read_line(), 16):
            parts.append(c._read_exact(size))
            assert c._read_exact(2) == b"\r\n"
        assert c._read_line() == b""  # the end of the (empty) trailer section
    assert b"".join(parts) == b"".join(b"part%d" % i for i in range(10))
