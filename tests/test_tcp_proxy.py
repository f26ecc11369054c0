"""``protocol: tcp`` listeners over real sockets: Guard and demo echo backends run as
child processes; TLS and PROXY-parsing backends run in threads of the test."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import random
import signal
import socket
import socketserver
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from helpers import client_hello
from l4_procs import free_port, start_demo, start_guard

MiB = 1024 * 1024


# ------------------------------------------------------------------ in-test backends


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def serve(handler: Callable[[socket.socket], None]) -> tuple[_Server, int]:
    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.settimeout(10)
            with contextlib.suppress(OSError, ssl.SSLError):
                handler(self.request)

    server = _Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed early")
        data += chunk
    return bytes(data)


def parse_proxy_header(sock: socket.socket) -> str:
    """Read a PROXY v1/v2 header the way a backend would; describe it as text.

    Written independently of guard.proxy.proxy_protocol on purpose."""
    first = recv_exact(sock, 12)
    if first == b"\r\n\r\n\x00\r\nQUIT\n":
        ver_cmd, fam, length = struct.unpack("!BBH", recv_exact(sock, 4))
        body = recv_exact(sock, length)
        assert ver_cmd == 0x21, ver_cmd
        if fam == 0x11:
            src, dst = (
                socket.inet_ntop(socket.AF_INET, body[:4]),
                socket.inet_ntop(socket.AF_INET, body[4:8]),
            )
            sport, dport = struct.unpack("!HH", body[8:12])
            return f"v2 TCP4 {src} {dst} {sport} {dport}"
        return f"v2 fam={fam:#x}"
    line = bytearray(first)
    while not line.endswith(b"\r\n"):
        line += recv_exact(sock, 1)
        assert len(line) <= 107
    return "v1 " + line[6:-2].decode()


def proxy_reporter(sock: socket.socket) -> None:
    """Answers with the PROXY header it parsed, then echoes the rest."""
    sock.sendall(parse_proxy_header(sock).encode() + b"\n")
    while data := sock.recv(65536):
        sock.sendall(data)


def named(name: bytes) -> Callable[[socket.socket], None]:
    def handler(sock: socket.socket) -> None:
        sock.sendall(name)
        sock.shutdown(socket.SHUT_WR)
        with contextlib.suppress(OSError):
            sock.recv(1)

    return handler


def make_cert(tmp: Path, name: str) -> tuple[Path, Path, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    safe = name.replace("*", "star")
    cert_path, key_path = tmp / f"{safe}.pem", tmp / f"{safe}.key"
    cert_path.write_bytes(pem)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path, pem


def tls_echo(cert: Path, key: Path, tag: bytes) -> Callable[[socket.socket], None]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)

    def handler(sock: socket.socket) -> None:
        with ctx.wrap_socket(sock, server_side=True) as tls:
            while data := tls.recv(65536):
                tls.sendall(tag + data)

    return handler


# ------------------------------------------------------------------ the Guard under test


class Env:
    def __init__(self) -> None:
        self.ports: dict[str, int] = {}
        self.client_ctx: ssl.SSLContext | None = None


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("tcp")
    children = []
    servers: list[_Server] = []
    e = Env()
    try:
        echo1, echo1_port = start_demo("tcp")
        children.append(echo1)
        cert_a, key_a, pem_a = make_cert(tmp, "a.test")
        cert_w, key_w, pem_w = make_cert(tmp, "*.wild.test")
        backends = {
            "tls_a": serve(tls_echo(cert_a, key_a, b"A:")),
            "tls_w": serve(tls_echo(cert_w, key_w, b"W:")),
            "pp": serve(proxy_reporter),
            "one": serve(named(b"one")),
            "two": serve(named(b"two")),
        }
        servers.extend(s for s, _ in backends.values())
        bp = {k: p for k, (_, p) in backends.items()}
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client.load_verify_locations(cadata=(pem_a + pem_w).decode())
        e.client_ctx = client
        names = ["plain", "sni", "send_v1", "send_v2", "accept", "untrusted", "idle", "rr", "down"]
        e.ports = {n: free_port() for n in names}
        listeners = "\n".join(
            f'  {n}: {{protocol: tcp, address: "127.0.0.1:{p}"'
            + {
                "idle": ", idle: 300ms",
                "accept": ", proxy_protocol: {accept: true, trusted: [127.0.0.0/8]}",
                "untrusted": ", proxy_protocol: {accept: true, trusted: [10.0.0.0/8]}",
            }.get(n, "")
            + "}"
            for n, p in e.ports.items()
        )
        guard_yaml = f"workers: 1\nroutes: routes\nlisteners:\n{listeners}\n"
        routes_yaml = f"""
routes:
  - {{name: plain, listener: plain, service: echo}}
  - {{name: sni-a, listener: sni, service: tls_a, match: {{sni: a.test}}}}
  - {{name: sni-w, listener: sni, service: tls_w, match: {{sni: "*.wild.test"}}}}
  - {{name: send_v1, listener: send_v1, service: pp_v1}}
  - {{name: send_v2, listener: send_v2, service: pp_v2}}
  - {{name: accept, listener: accept, service: pp_v2}}
  - {{name: untrusted, listener: untrusted, service: echo}}
  - {{name: idle, listener: idle, service: echo}}
  - {{name: rr, listener: rr, service: rr}}
  - {{name: down, listener: down, service: down}}
services:
  echo: {{servers: ["127.0.0.1:{echo1_port}"]}}
  tls_a: {{servers: ["127.0.0.1:{bp["tls_a"]}"]}}
  tls_w: {{servers: ["127.0.0.1:{bp["tls_w"]}"]}}
  pp_v1: {{servers: ["127.0.0.1:{bp["pp"]}"], proxy_protocol: {{send: v1}}}}
  pp_v2: {{servers: ["127.0.0.1:{bp["pp"]}"], proxy_protocol: {{send: v2}}}}
  rr: {{servers: ["127.0.0.1:{bp["one"]}", "127.0.0.1:{bp["two"]}"], balance: round_robin}}
  down: {{servers: ["127.0.0.1:{free_port()}"]}}
"""
        children.append(start_guard(tmp, guard_yaml, routes_yaml))
        yield e
    finally:
        for child in children:
            child.stop()
        for server in servers:
            server.shutdown()
            server.server_close()


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def read_to_eof(sock: socket.socket) -> bytes:
    data = bytearray()
    while chunk := sock.recv(65536):
        data += chunk
    return bytes(data)


def closed_within(sock: socket.socket, timeout: float) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(65536) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


# ------------------------------------------------------------------ relay


def test_echo_100_mib_with_checksums(env: Env) -> None:
    block = random.Random(7).randbytes(MiB)
    total = 100
    sent = hashlib.sha256()
    got = hashlib.sha256()
    received = 0
    with connect(env.ports["plain"], timeout=30) as sock:

        def reader() -> None:
            nonlocal received
            while chunk := sock.recv(1 << 20):
                got.update(chunk)
                received += len(chunk)

        t = threading.Thread(target=reader, daemon=True)
        start = time.monotonic()
        t.start()
        for i in range(total):
            piece = block[i:] + block[:i]  # every MiB differs: a reordering would show
            sent.update(piece)
            sock.sendall(piece)
        sock.shutdown(socket.SHUT_WR)
        t.join(60)
        elapsed = time.monotonic() - start
    assert not t.is_alive()
    assert received == total * MiB
    assert got.hexdigest() == sent.hexdigest()
    assert elapsed < 45, elapsed


def test_half_close_keeps_the_return_direction(env: Env) -> None:
    payload = random.Random(1).randbytes(200_000)
    with connect(env.ports["plain"]) as sock:
        sender = threading.Thread(
            target=lambda: (sock.sendall(payload), sock.shutdown(socket.SHUT_WR))
        )
        sender.start()
        time.sleep(0.2)  # the client's FIN is through Guard before we read anything
        data = read_to_eof(sock)
        sender.join(10)
    assert data == payload


def test_half_close_before_anything_is_echoed(env: Env) -> None:
    with connect(env.ports["plain"]) as sock:
        sock.sendall(b"last words")
        sock.shutdown(socket.SHUT_WR)
        assert read_to_eof(sock) == b"last words"


def test_round_robin_by_connection(env: Env) -> None:
    seen = []
    for _ in range(4):
        with connect(env.ports["rr"]) as sock:
            seen.append(read_to_eof(sock))
    assert sorted(seen) == [b"one", b"one", b"two", b"two"]
    assert seen[0] != seen[1] and seen[1] != seen[2] and seen[2] != seen[3]


def test_backend_down_closes_client_promptly(env: Env) -> None:
    start = time.monotonic()
    with connect(env.ports["down"]) as sock:
        assert closed_within(sock, 3)
    assert time.monotonic() - start < 1.5


def test_idle_timeout_closes(env: Env) -> None:
    with connect(env.ports["idle"]) as sock:
        sock.sendall(b"ping")
        assert recv_exact(sock, 4) == b"ping"
        start = time.monotonic()
        assert closed_within(sock, 3)
        waited = time.monotonic() - start
    assert 0.2 < waited < 1.5, waited


def test_activity_keeps_idle_connection_open(env: Env) -> None:
    with connect(env.ports["idle"]) as sock:
        for _ in range(6):  # 600ms of traffic, 100ms apart: twice the idle timeout
            sock.sendall(b"x")
            assert recv_exact(sock, 1) == b"x"
            time.sleep(0.1)


# ------------------------------------------------------------------ SNI


def tls_roundtrip(env: Env, server_name: str, split: bool = False) -> bytes:
    """A real TLS client through Guard; ``split`` sends the ClientHello in 3 pieces."""
    assert env.client_ctx is not None
    with connect(env.ports["sni"]) as raw:
        if not split:
            with env.client_ctx.wrap_socket(raw, server_hostname=server_name) as tls:
                tls.sendall(b"hello")
                return tls.recv(100)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = env.client_ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
        with contextlib.suppress(ssl.SSLWantReadError):
            obj.do_handshake()
        hello = outgoing.read()
        for piece in (hello[:3], hello[3:40], hello[40:]):  # record header split too
            raw.sendall(piece)
            time.sleep(0.05)
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                if out := outgoing.read():
                    raw.sendall(out)
                data = raw.recv(65536)
                if not data:
                    raise ConnectionError("closed during handshake") from None
                incoming.write(data)
        if out := outgoing.read():
            raw.sendall(out)
        obj.write(b"hello")
        raw.sendall(outgoing.read())
        while True:
            try:
                return obj.read(100)
            except ssl.SSLWantReadError:
                incoming.write(raw.recv(65536))


def test_sni_exact_and_wildcard(env: Env) -> None:
    assert tls_roundtrip(env, "a.test") == b"A:hello"
    assert tls_roundtrip(env, "x.wild.test") == b"W:hello"
    assert tls_roundtrip(env, "other.wild.test") == b"W:hello"


def test_sni_client_hello_split_across_reads(env: Env) -> None:
    assert tls_roundtrip(env, "a.test", split=True) == b"A:hello"


@pytest.mark.parametrize("name", ["nope.test", "wild.test", None])
def test_unknown_or_missing_sni_is_closed(env: Env, name: str | None) -> None:
    # Closed by Guard before any backend answers: no ServerHello comes back.
    with connect(env.ports["sni"]) as sock:
        sock.sendall(client_hello(name))
        assert closed_within(sock, 3)
    # The same hello with a known name does get a ServerHello (a TLS record).
    with connect(env.ports["sni"]) as sock:
        sock.sendall(client_hello("a.test"))
        sock.settimeout(3)
        assert sock.recv(1) == b"\x16"


def test_plain_text_on_sni_port_is_closed(env: Env) -> None:
    with connect(env.ports["sni"]) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        assert closed_within(sock, 3)


# ------------------------------------------------------------------ PROXY protocol


def test_send_proxy_v1(env: Env) -> None:
    with connect(env.ports["send_v1"]) as sock:
        sock.sendall(b"data")
        line = sock.makefile("rb").readline().decode()
        local = sock.getsockname()
    assert line == f"v1 TCP4 127.0.0.1 127.0.0.1 {local[1]} {env.ports['send_v1']}\n"


def test_send_proxy_v2(env: Env) -> None:
    with connect(env.ports["send_v2"]) as sock:
        f = sock.makefile("rb")
        sock.sendall(b"data")
        line = f.readline().decode()
        local = sock.getsockname()
        assert f.read(4) == b"data"
    assert line == f"v2 TCP4 127.0.0.1 127.0.0.1 {local[1]} {env.ports['send_v2']}\n"


@pytest.mark.parametrize(
    "header",
    [
        b"PROXY TCP4 203.0.113.7 198.51.100.1 40000 5432\r\n",
        b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c"
        + socket.inet_aton("203.0.113.7")
        + socket.inet_aton("198.51.100.1")
        + struct.pack("!HH", 40000, 5432),
    ],
    ids=["v1", "v2"],
)
def test_accept_proxy_from_trusted_peer(env: Env, header: bytes) -> None:
    # Guard decodes the client's header and re-encodes the decoded addresses as v2.
    with connect(env.ports["accept"]) as sock:
        f = sock.makefile("rb")
        sock.sendall(header[:5])
        time.sleep(0.05)  # a header split across reads
        sock.sendall(header[5:] + b"after")
        assert f.readline() == b"v2 TCP4 203.0.113.7 198.51.100.1 40000 5432\n"
        assert f.read(5) == b"after"


@pytest.mark.parametrize(
    "data",
    [
        b"PROXY TCP4 203.0.113.7 198.51.100.1 040000 5432\r\n",
        b"PROXY TCP9 a b c d\r\n",
        b"hello, no header here\r\n",
        b"\r\n\r\n\x00\r\nQUIT\n\x31\x11\x00\x0c" + b"\x00" * 12,
    ],
    ids=["leading-zero-port", "bad-family", "missing", "bad-v2-version"],
)
def test_malformed_or_missing_header_from_trusted_peer_is_closed(env: Env, data: bytes) -> None:
    with connect(env.ports["accept"]) as sock:
        sock.sendall(data)
        assert closed_within(sock, 3)


def test_proxy_header_from_untrusted_peer_is_rejected(env: Env) -> None:
    with connect(env.ports["untrusted"]) as sock:
        sock.sendall(b"PROXY TCP4 203.0.113.7 198.51.100.1 40000 5432\r\nhello")
        assert closed_within(sock, 3)
    # Without a header the untrusted peer is relayed as itself.
    with connect(env.ports["untrusted"]) as sock:
        sock.sendall(b"hello")
        assert recv_exact(sock, 5) == b"hello"


# ------------------------------------------------------------------ what `guard run` serves


def test_l4_keys_are_served_http_only_ones_are_not(tmp_path: Path) -> None:
    from guard.config import load_config
    from guard.runtime.support import unsupported

    (tmp_path / "routes").mkdir()
    (tmp_path / "guard.yaml").write_text("""routes: routes
listeners:
  web: {protocol: http, address: "127.0.0.1:1", proxy_protocol: {accept: true}}
  pg: {protocol: tcp, address: "127.0.0.1:2", idle: 1h,
       proxy_protocol: {accept: true, trusted: [127.0.0.1/32]}}
  dns: {protocol: udp, address: "127.0.0.1:3", udp_idle: 30s, max_sessions: 10}
""")
    (tmp_path / "routes" / "r.yaml").write_text("""routes:
  - {name: web, listener: web, service: app}
  - {name: pg, listener: pg, service: pg, match: {sni: db.localhost}}
  - {name: dns, listener: dns, service: dns}
services:
  app: {servers: ["127.0.0.1:9"], proxy_protocol: {send: v1}}
  pg: {servers: ["127.0.0.1:9"], proxy_protocol: {send: v2}}
  dns: {servers: ["127.0.0.1:9"]}
""")
    found = sorted(e.key for e in unsupported(load_config(tmp_path / "guard.yaml")))
    # The http proxy neither reads nor sends PROXY headers yet; tcp/udp keys all serve.
    assert found == ["listeners.web.proxy_protocol", "services.app.proxy_protocol"]


def test_drain_lets_open_connections_finish(tmp_path: Path) -> None:
    echo, echo_port = start_demo("tcp")
    port = free_port()
    guard = None
    try:
        guard = start_guard(
            tmp_path,
            f"workers: 1\nroutes: routes\nhttp: {{timeouts: {{drain: 10s}}}}\nlisteners:\n"
            f'  t: {{protocol: tcp, address: "127.0.0.1:{port}"}}\n',
            f"routes:\n  - {{name: t, listener: t, service: e}}\n"
            f'services:\n  e: {{servers: ["127.0.0.1:{echo_port}"]}}\n',
        )
        with connect(port) as sock:
            sock.sendall(b"before")
            assert recv_exact(sock, 6) == b"before"
            guard.proc.send_signal(signal.SIGTERM)
            guard.wait_line(r"draining")
            # The listener closes (just after that line is logged): no new connections ...
            deadline = time.monotonic() + 3
            while True:
                try:
                    connect(port, timeout=1).close()
                except OSError:
                    break
                assert time.monotonic() < deadline, "listener still accepting"
                time.sleep(0.02)
            # ... but the open one still relays both ways until it ends.
            sock.sendall(b"after")
            assert recv_exact(sock, 5) == b"after"
            assert guard.proc.poll() is None
            sock.shutdown(socket.SHUT_WR)
            assert read_to_eof(sock) == b""
        assert guard.proc.wait(5) == 0
    finally:
        if guard is not None:
            guard.stop()
        echo.stop()
