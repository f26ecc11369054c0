"""https listeners end to end: certificates made here (a test CA and leaves for a default
name, an exact name and a wildcard), real clients (the ssl module over a raw socket, and
curl with --resolve), Guard a real child process. Every test runs under both parsers."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from helpers import Conn, Demo, free_port, wait_for
from prometheus_client.parser import text_string_to_metric_families

from guard.config.model import CertificateConfig
from guard.proxy.tls import CertificateStore, TlsSetupError, certificate_names

# ---------------------------------------------------------------------------- certificates


@dataclass
class Leaf:
    cert: Path
    key: Path


class TestCA:
    """A CA made for one test; it signs leaves whose CN says which one was served."""

    __test__ = False  # not a test class, whatever pytest thinks of the name

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "guard test ca")])
        now = datetime.datetime.now(datetime.UTC)
        self.name = name
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.path = directory / "ca.pem"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def leaf(self, label: str, names: list[str], *, into: str | None = None) -> Leaf:
        """A certificate for ``names`` with CN ``label``, written to ``into``.pem/.key
        (``label`` by default) atomically: both files are renamed into place."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, label)]))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
            .sign(self.key, hashes.SHA256())
        )
        leaf = Leaf(self.dir / f"{into or label}.pem", self.dir / f"{into or label}.key")
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        for path, data in (
            (leaf.key, key_pem),
            (leaf.cert, cert.public_bytes(serialization.Encoding.PEM)),
        ):
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return leaf


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    d = tmp_path / "certs"
    d.mkdir()
    return TestCA(d)


@pytest.fixture
def leaves(ca: TestCA) -> list[Leaf]:
    # Listed order matters: the first is the default; the wildcard comes before the exact
    # name below it, and the exact one must still win.
    return [
        ca.leaf("default", ["default.test"]),
        ca.leaf("b-wild", ["*.b.test"]),
        ca.leaf("a", ["a.test"]),
        ca.leaf("c-exact", ["c.b.test"]),
    ]


def tls_listener(leaves: list[Leaf], port: int | None = None) -> dict:
    listener: dict = {
        "protocol": "https",
        "tls": {"certificates": [{"cert": str(x.cert), "key": str(x.key)} for x in leaves]},
    }
    if port is not None:
        listener["address"] = f"127.0.0.1:{port}"
    return {"listeners": {"web": listener}}


# ---------------------------------------------------------------------------- clients


def client_context(ca: TestCA | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca.path)) if ca else ssl.create_default_context()
    if ca is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    return ctx


def served_cn(sock: ssl.SSLSocket) -> str:
    der = sock.getpeercert(binary_form=True)
    assert der is not None
    cert = x509.load_der_x509_certificate(der)
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def handshake(port: int, server_name: str | None, ctx: ssl.SSLContext | None = None) -> str:
    """The CN of the certificate Guard serves for ``server_name`` (None: no SNI)."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        (ctx or client_context()).wrap_socket(raw, server_hostname=server_name) as s,
    ):
        return served_cn(s)


def eager_handshake(port: int, server_name: str) -> str:
    """A handshake whose ClientHello is sent the moment the connection is up, so it is in
    Guard's socket before Guard has even seen the accept (uvloop then reads at once)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = client_context().wrap_bio(incoming, outgoing, server_hostname=server_name)
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    hello = outgoing.read()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(hello)
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                if out := outgoing.read():
                    s.sendall(out)
                data = s.recv(65536)
                if not data:
                    raise ConnectionResetError("closed mid-handshake") from None
                incoming.write(data)
        if out := outgoing.read():
            s.sendall(out)
        der = obj.getpeercert(binary_form=True)
    assert der is not None
    cert = x509.load_der_x509_certificate(der)
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


class TlsConn(Conn):
    """helpers.Conn over TLS: the same request/response tools on an SSLSocket."""

    def __init__(self, port: int, server_name: str | None, ctx: ssl.SSLContext) -> None:
        super().__init__(port)
        self.sock = ctx.wrap_socket(self.sock, server_hostname=server_name)


def metric(admin: int, name: str, **labels: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def demo_services(demo: Demo) -> dict:
    return {"app": {"servers": [demo.address]}}


# ---------------------------------------------------------------------------- tests


@pytest.mark.parametrize(
    ("server_name", "cn"),
    [
        ("a.test", "a"),
        ("A.Test", "a"),  # names are matched without case
        ("x.b.test", "b-wild"),
        ("c.b.test", "c-exact"),  # exact beats a wildcard listed before it
        ("other.test", "default"),
        ("b.test", "default"),  # *.b.test does not cover b.test itself
        (None, "default"),  # no SNI at all
    ],
)
def test_certificate_chosen_by_sni(guard, demo, leaves, server_name, cn) -> None:
    g = guard(services=demo_services(demo), extra=tls_listener(leaves))
    assert handshake(g.port, server_name) == cn


def test_client_hello_sent_with_the_connect(guard, demo, leaves) -> None:
    # Regression: with a ClientHello already waiting, a handshake started one loop turn
    # after the accept lost it (read into the plain protocol) and timed out.
    g = guard(services=demo_services(demo), extra=tls_listener(leaves))
    for i in range(20):
        name, cn = ("a.test", "a") if i % 2 else ("x.b.test", "b-wild")
        socket.create_connection(("127.0.0.1", g.port)).close()  # a port check in between
        assert eager_handshake(g.port, name) == cn


def test_verified_clients_alpn_and_x_forwarded_proto(guard, demo, ca, leaves) -> None:
    g = guard(services=demo_services(demo), extra=tls_listener(leaves))
    ctx = client_context(ca)  # verifies the chain and the name: the right cert or nothing
    for name, cn in (("a.test", "a"), ("x.b.test", "b-wild")):
        with TlsConn(g.port, name, ctx) as c:
            sock = c.sock
            assert isinstance(sock, ssl.SSLSocket)
            assert served_cn(sock) == cn
            assert sock.selected_alpn_protocol() == "http/1.1"
            assert sock.version() in ("TLSv1.2", "TLSv1.3")
            for _ in range(2):  # keep-alive over the one TLS connection
                c.request("GET", "/echo", name)
                resp = c.read_response()
                assert resp.status == 200, resp.raw_head
                headers = {n.lower(): v for n, v in resp.json()["headers"]}
                assert headers["x-forwarded-proto"] == "https"
                assert headers["host"] == name


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_with_resolve_for_two_names(guard, demo, ca, leaves) -> None:
    g = guard(services=demo_services(demo), extra=tls_listener(leaves))
    for name, cn in (("a.test", "a"), ("deep.x.b.test", "b-wild"), ("x.b.test", "b-wild")):
        cmd = [
            "curl",
            "-sS",
            "-v",
            "--resolve",
            f"{name}:{g.port}:127.0.0.1",
            "--cacert",
            str(ca.path),
            "-w",
            "\n%{http_code} %{http_version}",
            f"https://{name}:{g.port}/echo",
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        if name.startswith("deep."):
            # *.b.test is served (longest suffix), but it covers one label only: curl says no
            assert out.returncode == 60, out.stderr
            assert f"CN={cn}" in out.stderr
            continue
        assert out.returncode == 0, out.stderr
        body, _, status = out.stdout.rpartition("\n")
        assert status == "200 1.1", out.stdout  # ALPN: curl offers h2, Guard picks http/1.1
        assert ["x-forwarded-proto", "https"] in json.loads(body)["headers"]
        assert re.search(rf"subject: CN\s*=\s*{cn}\b", out.stderr), out.stderr
        assert "ALPN: server accepted http/1.1" in out.stderr or "ALPN, server accepted" in (
            out.stderr
        )


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_old_protocols_and_weak_ciphers_refused(guard, demo, leaves) -> None:
    admin = free_port()
    extra = {**tls_listener(leaves), "admin": {"address": f"127.0.0.1:{admin}"}}
    g = guard(services=demo_services(demo), extra=extra)
    old = client_context()
    old.minimum_version = ssl.TLSVersion.TLSv1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer TLS 1.0/1.1 at all
    weak = client_context()
    weak.maximum_version = ssl.TLSVersion.TLSv1_2
    weak.set_ciphers("AES128-SHA:AES256-SHA256")  # RSA key exchange, CBC
    for ctx in (old, weak):
        with pytest.raises(ssl.SSLError) as info:
            handshake(g.port, "a.test", ctx)
        # Guard refused the hello (uvloop closes without sending the alert), not the
        # client itself before sending one.
        assert "NO_PROTOCOLS_AVAILABLE" not in str(info.value)
        assert "NO_CIPHERS_AVAILABLE" not in str(info.value)
    wait_for(
        lambda: (
            metric(admin, "guard_tls_handshake_errors_total", listener="web", reason="error") == 2
        ),
        5,
        "two handshake errors counted",
    )
    tls12 = client_context()
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    assert handshake(g.port, "a.test", tls12) == "a"  # 1.2 with a sane suite is fine


def test_idle_handshake_closed_after_tls_handshake_timeout(guard, demo, leaves) -> None:
    admin = free_port()
    extra = {**tls_listener(leaves), "admin": {"address": f"127.0.0.1:{admin}"}}
    g = guard(
        services=demo_services(demo), http={"timeouts": {"tls_handshake": "500ms"}}, extra=extra
    )
    base = metric(admin, "guard_tls_handshake_errors_total", listener="web", reason="timeout")
    with Conn(g.port) as idle:  # connects, never sends a ClientHello
        t0 = time.monotonic()
        assert idle.closed_within(5.0)
        took = time.monotonic() - t0
    assert 0.4 <= took < 2.5, took
    wait_for(
        lambda: (
            metric(admin, "guard_tls_handshake_errors_total", listener="web", reason="timeout")
            == base + 1
        ),
        5,
        "the timeout counted",
    )
    # A client that sends half a ClientHello and stalls is no better off.
    with Conn(g.port) as slow:
        slow.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        assert slow.closed_within(5.0)
    # Plain HTTP on the https port is a TLS error, counted as such.
    with Conn(g.port) as plain:
        plain.request("GET", "/", "a.test")
        assert plain.closed_within(5.0)
    wait_for(
        lambda: (
            metric(admin, "guard_tls_handshake_errors_total", listener="web", reason="error") >= 1
        ),
        5,
        "the plain-http error counted",
    )
    assert handshake(g.port, "a.test") == "a"  # and the listener serves on


def test_certificate_files_reloaded_open_connections_keep_theirs(guard, demo, ca, leaves) -> None:
    g = guard(services=demo_services(demo), extra=tls_listener(leaves))
    ctx = client_context(ca)
    with TlsConn(g.port, "a.test", ctx) as before:
        before.request("GET", "/echo", "a.test")
        assert before.read_response().status == 200
        assert served_cn(before.sock) == "a"  # type: ignore[arg-type]

        # A broken certificate file is refused: the one loaded before keeps serving.
        a = leaves[2]
        a.cert.write_text("not a certificate\n")
        time.sleep(2.5)  # past the check interval
        assert handshake(g.port, "a.test") == "a"
        wait_for(lambda: "keeping the certificate loaded before" in g.stderr, 5, "the log line")

        # A good new pair (renamed into place): the next handshakes see it.
        ca.leaf("a-v2", ["a.test"], into="a")
        wait_for(lambda: handshake(g.port, "a.test") == "a-v2", 8, "the new certificate")
        with TlsConn(g.port, "a.test", ctx) as after:  # verifies against the CA too
            assert served_cn(after.sock) == "a-v2"  # type: ignore[arg-type]
            after.request("GET", "/echo", "a.test")
            assert after.read_response().status == 200
        assert handshake(g.port, "x.b.test") == "b-wild"  # the others are untouched

        # The connection opened before the reload goes on, on its own session.
        before.request("GET", "/echo", "a.test")
        resp = before.read_response()
        assert resp.status == 200
        assert dict(resp.json()["headers"])["x-forwarded-proto"] == "https"


def test_unloadable_certificate_stops_guard_run_naming_the_key(tmp_path: Path, ca) -> None:
    good = ca.leaf("a", ["a.test"])
    cfg = tmp_path / "guard.yaml"
    (tmp_path / "routes.yaml").write_text("routes: []\nservices: {}\n")
    listener = tls_listener([good, Leaf(good.cert, tmp_path / "missing.key")], free_port())
    cfg.write_text(json.dumps({"routes": "routes.yaml", **listener}))
    out = subprocess.run(
        [sys.executable, "-m", "guard", "run", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=20,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert out.returncode == 1, out.stderr
    assert "listeners.web.tls.certificates[1]" in out.stderr, out.stderr
    assert "missing.key" in out.stderr


# ---------------------------------------------------------------------------- the store


def test_store_names_and_choice(ca) -> None:
    a = ca.leaf("a", ["a.test", "www.a.test"])
    w = ca.leaf("w", ["*.w.test"])
    assert certificate_names(a.cert) == ("a.test", "www.a.test")
    store = CertificateStore(
        [CertificateConfig(w.cert, w.key), CertificateConfig(a.cert, a.key)],
        check_interval=0,
    )
    assert store.choose("www.a.test") is not store.context
    assert store.choose("x.w.test") is store.context
    assert store.choose(None) is store.context
    assert store.choose("nothing.test") is store.context
    assert not store.refresh()  # nothing changed
    ca.leaf("a2", ["a.test"], into="a")
    assert store.refresh()
    assert store.choose("a.test") is not store.context
    assert store.choose("www.a.test") is store.context  # no longer named: the default
    assert store.reloads == 1
    with pytest.raises(TlsSetupError, match=r"tls\.certificates\[0\]"):
        CertificateStore([CertificateConfig(a.cert, w.key)])  # key does not match
