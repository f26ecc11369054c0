"""Raw-socket tools for the proxy integration tests: a small HTTP/1.1 client that shows
exactly what came over the wire, scriptable raw backends, and process helpers.

Nothing here trusts an HTTP library's leniency: framing is read by hand so a stray body
byte, a missing final chunk or a wrong header is visible to the test.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PATTERN = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
MiB = 1024 * 1024


def expected_bytes(n: int, start: int = 0) -> bytes:
    """Bytes start..start+n of the demo's /bytes/N body."""
    reps = (start + n) // len(PATTERN) + 2
    return (PATTERN * reps)[start : start + n]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def wait_for(cond: Callable[[], bool], timeout: float, what: str, step: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


def stop_process(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``grace``; always reaps."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# ---------------------------------------------------------------------- raw client


@dataclass
class Resp:
    status: int
    reason: str
    version: str
    headers: list[tuple[str, str]]  # lowercase names, received order
    body: bytes = b""
    chunked: bool = False
    trailers: list[tuple[str, str]] = field(default_factory=list)
    informational: list[int] = field(default_factory=list)
    raw_head: bytes = b""

    def header(self, name: str) -> str | None:
        name = name.lower()
        for n, v in self.headers:
            if n == name:
                return v
        return None

    def all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for n, v in self.headers if n == name]

    def json(self) -> dict:
        return json.loads(self.body)


class Closed(AssertionError):
    """The peer closed the connection before a whole message arrived."""


class Conn:
    """One raw client connection to Guard (or anything), with its own read buffer."""

    def __init__(self, port: int, timeout: float = 5.0, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.buf = bytearray()
        self.eof = False

    def __enter__(self) -> Conn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(
        self,
        method: str = "GET",
        target: str = "/",
        host: str | None = "test",
        headers: Iterable[tuple[str, str]] = (),
        body: bytes | None = None,
        version: str = "1.1",
    ) -> None:
        lines = [f"{method} {target} HTTP/{version}"]
        if host is not None:
            lines.append(f"Host: {host}")
        hdrs = list(headers)
        lines += [f"{n}: {v}" for n, v in hdrs]
        if body is not None and not any(
            n.lower() in ("content-length", "transfer-encoding") for n, _ in hdrs
        ):
            lines.append(f"Content-Length: {len(body)}")
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b""))

    def _fill(self) -> None:
        if self.eof:
            raise Closed("connection closed")
        try:
            data = self.sock.recv(256 * 1024)
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            raise Closed("connection closed")
        self.buf += data

    def _read_line(self) -> bytes:
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[: i + 2]
                return line
            self._fill()

    def _read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def read_head(self) -> Resp:
        while True:
            i = self.buf.find(b"\r\n\r\n")
            if i >= 0:
                break
            self._fill()
        raw = bytes(self.buf[: i + 4])
        del self.buf[: i + 4]
        lines = raw[:-4].split(b"\r\n")
        version, _, rest = lines[0].partition(b" ")
        code, _, reason = rest.partition(b" ")
        headers = []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            assert sep, f"bad header line {line!r}"
            headers.append((name.decode("latin-1").lower(), value.strip().decode("latin-1")))
        return Resp(int(code), reason.decode("latin-1"), version.decode(), headers, raw_head=raw)

    def read_response(self, method: str = "GET", *, informational: bool = False) -> Resp:
        """One whole response, framed by the rules a client uses (HEAD/1xx/204/304 bodyless)."""
        seen: list[int] = []
        while True:
            resp = self.read_head()
            if resp.status >= 200 or informational:
                break
            seen.append(resp.status)
        resp.informational = seen
        te = resp.header("transfer-encoding")
        cl = resp.header("content-length")
        if method == "HEAD" or resp.status < 200 or resp.status in (204, 304):
            return resp
        if te is not None:
            assert te.lower() == "chunked", te
            resp.chunked = True
            parts = []
            while True:
                size = int(self._read_line().split(b";")[0], 16)
                if size == 0:
                    break
                parts.append(self._read_exact(size))
                assert self._read_exact(2) == b"\r\n", "chunk not followed by CRLF"
            while line := self._read_line():
                name, _, value = line.partition(b":")
                resp.trailers.append((name.decode().lower(), value.strip().decode()))
            resp.body = b"".join(parts)
        elif cl is not None:
            resp.body = self._read_exact(int(cl))
        else:
            resp.body = self.read_until_close()
        return resp

    def read_until_close(self, limit: float = 10.0) -> bytes:
        deadline = time.monotonic() + limit
        while not self.eof:
            if time.monotonic() > deadline:
                raise AssertionError("connection not closed in time")
            try:
                self._fill()
            except Closed:
                break
        data = bytes(self.buf)
        self.buf.clear()
        return data

    def closed_within(self, timeout: float) -> bool:
        """True when the peer closes (EOF or reset) within timeout with nothing more sent."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
        if data:
            self.buf += data
            return False
        self.eof = True
        return True


def fetch(
    port: int,
    method: str = "GET",
    target: str = "/",
    host: str | None = "test",
    headers: Iterable[tuple[str, str]] = (),
    body: bytes | None = None,
    version: str = "1.1",
    timeout: float = 5.0,
) -> Resp:
    with Conn(port, timeout=timeout) as c:
        c.request(method, target, host, headers, body, version)
        return c.read_response(method)


def assert_guard_error(resp: Resp, status: int, code: str) -> None:
    """An answer Guard made itself: status, x-guard-error and {"error","message"}."""
    assert resp.status == status, (resp.status, resp.raw_head, resp.body)
    assert resp.header("x-guard-error") == code, resp.raw_head
    assert resp.header("content-type") == "application/json"
    doc = resp.json()
    assert doc["error"] == code
    assert isinstance(doc["message"], str) and doc["message"]


# ---------------------------------------------------------------------- raw backends


@dataclass
class Req:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes
    raw: bytes  # exactly the bytes of this request as received (head + framed body)

    def header(self, name: str) -> str | None:
        name = name.lower()
        for n, v in self.headers:
            if n == name:
                return v
        return None


class BackendConn:
    """The server side of one connection accepted by a RawBackend."""

    def __init__(self, backend: RawBackend, sock: socket.socket) -> None:
        self.backend = backend
        self.sock = sock
        self.buf = bytearray()
        self.received = bytearray()  # every byte ever read on this connection
        self.body_bytes = 0  # body bytes read by read_body()
        self.throttle = 0.0  # seconds to sleep every 8 reads: a slow reader
        self._reads = 0

    def _fill(self) -> bool:
        if self.throttle:
            self._reads += 1
            if self._reads % 8 == 0:
                time.sleep(self.throttle)
        try:
            data = self.sock.recv(256 * 1024)
        except OSError:
            data = b""
        if not data:
            return False
        self.buf += data
        if self.backend.record:
            self.received += data
        return True

    def _line(self) -> bytes | None:
        while (i := self.buf.find(b"\r\n")) < 0:
            if not self._fill():
                return None
        line = bytes(self.buf[:i])
        del self.buf[: i + 2]
        return line

    def read_request(self, *, read_body: bool = True, count_only: bool = False) -> Req | None:
        """The next request (None on EOF). ``count_only`` discards body bytes as they come."""
        while (i := self.buf.find(b"\r\n\r\n")) < 0:
            if not self._fill():
                return None
        head = bytes(self.buf[: i + 4])
        del self.buf[: i + 4]
        lines = head[:-4].decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ", 2)
        headers = []
        for line in lines[1:]:
            n, _, v = line.partition(":")
            headers.append((n.strip().lower(), v.strip()))
        req = Req(method, target, version, headers, b"", head)
        if not read_body:
            return req
        return req if self.read_body(req, count_only=count_only) else None

    def read_body(self, req: Req, *, count_only: bool = False) -> bool:
        """Read req's body into req.body/req.raw (or only count it); False on EOF."""
        body = bytearray()
        raw = bytearray(req.raw)
        te = req.header("transfer-encoding")
        if te is not None and "chunked" in te.lower():
            while True:
                line = self._line()
                if line is None:
                    return False
                raw += line + b"\r\n"
                size = int(line.split(b";")[0], 16)
                if size == 0:
                    while True:  # trailers until the empty line
                        t = self._line()
                        if t is None:
                            return False
                        raw += t + b"\r\n"
                        if not t:
                            break
                    break
                while len(self.buf) < size + 2:
                    if not self._fill():
                        return False
                chunk = bytes(self.buf[:size])
                del self.buf[: size + 2]
                self.body_bytes += size
                if not count_only:
                    body += chunk
                    raw += chunk + b"\r\n"
        else:
            n = int(req.header("content-length") or 0)
            while n:
                if not self.buf and not self._fill():
                    return False
                take = min(n, len(self.buf))
                if not count_only:
                    body += self.buf[:take]
                    raw += self.buf[:take]
                del self.buf[:take]
                n -= take
                self.body_bytes += take
        req.body = bytes(body)
        req.raw = bytes(raw)
        return True

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def respond(
        self, status: int = 200, body: bytes = b"ok", headers: Iterable[tuple[str, str]] = ()
    ) -> None:
        lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}"]
        lines += [f"{n}: {v}" for n, v in headers]
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode() + body)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()


Handler = Callable[[BackendConn], None]


class RawBackend:
    """A threaded TCP server on 127.0.0.1:0; ``handler(conn)`` scripts each connection.

    Counts accepted connections and (with ``record``) keeps the exact bytes received.
    """

    conn_class: type[BackendConn] = BackendConn  # a subclass may record more per connection

    def __init__(self, handler: Handler, *, record: bool = True) -> None:
        self.handler = handler
        self.record = record
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.port = self.listener.getsockname()[1]
        self.conns: list[BackendConn] = []
        self.requests: list[Req] = []  # handlers may append what they saw
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self.threads.append(t)

    @property
    def accepted(self) -> int:
        with self.lock:
            return len(self.conns)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self.stopping.is_set():
            r, _, _ = select.select([self.listener], [], [], 0.05)
            if not r:
                continue
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            sock.settimeout(30)
            conn = self.conn_class(self, sock)
            with self.lock:
                self.conns.append(conn)
            t = threading.Thread(target=self._run, args=(conn,), daemon=True)
            t.start()
            self.threads.append(t)

    def _run(self, conn: BackendConn) -> None:
        try:
            self.handler(conn)
        except OSError:
            pass
        except BaseException as e:  # surfaced by close()
            self.errors.append(e)
        finally:
            conn.close()

    def close(self) -> None:
        self.stopping.set()
        with contextlib.suppress(OSError):
            self.listener.close()
        with self.lock:
            conns = list(self.conns)
        for c in conns:
            c.close()
        for t in self.threads:
            t.join(2)


def serve_keepalive(body: bytes = b"ok", extra: Iterable[tuple[str, str]] = ()) -> Handler:
    """Answer every request on the connection with 200 and ``body``; keep it open."""
    extra = list(extra)

    def handler(conn: BackendConn) -> None:
        while (req := conn.read_request()) is not None:
            conn.backend.requests.append(req)
            conn.respond(200, body, extra)

    return handler


# ---------------------------------------------------------------------- demo backend


@dataclass
class Demo:
    proc: subprocess.Popen
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@contextlib.contextmanager
def run_demo(log_dir: Path) -> Iterator[Demo]:
    """``python -m guard.demo http --port 0``; the port is read from its announcement."""
    log = log_dir / f"demo-{time.monotonic_ns()}.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "guard.demo", "http", "--port", "0"],
            cwd=REPO,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
            stdout=subprocess.PIPE,
            stderr=err,
        )
    try:
        assert proc.stdout is not None
        r, _, _ = select.select([proc.stdout], [], [], 10)
        line = proc.stdout.readline().decode() if r else ""
        if "listening on" not in line:
            raise AssertionError(f"demo did not start: {line!r} {log.read_text()}")
        port = int(line.rsplit(":", 1)[1])
        yield Demo(proc, port)
    finally:
        stop_process(proc)
        if proc.stdout is not None:
            proc.stdout.close()


def client_hello(server_name: str | None) -> bytes:
    """A real ClientHello from the ssl module (one TLS record)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def splits(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at each offset in ``cuts`` (taken modulo its length + 1, deduplicated):
    the reads a peer might deliver it in, for feeding a parser piece by piece."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for c in [*points, len(data)]:
        out.append(data[prev:c])
        prev = c
    return out
