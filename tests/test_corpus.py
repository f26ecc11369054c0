"""The request-safety corpus (tests/corpus/*.yaml) replayed over raw sockets.

Every case is a raw HTTP/1.1 byte string and the verdict Guard must reach: rejected with a
status (and nothing reaching the backend), or forwarded with exactly the bytes the backend
must receive. ``test_corpus_guard`` replays each case through a running Guard, under both
parsers, to a backend that records every byte it reads; ``test_corpus_haproxy`` replays
the same bytes through HAProxy (when ``haproxy`` is on PATH) and fails only on differences
the corpus does not explain in a ``haproxy:`` note. tests/corpus/README.md describes the
file format.

``python tests/test_corpus.py [--haproxy]`` prints the corpus size by family and, with
``--haproxy``, every case where HAProxy and Guard differ, with the corpus's explanation.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import BackendConn, Closed, Conn, RawBackend, free_port, stop_process

CORPUS_DIR = Path(__file__).resolve().parent / "corpus"
HOST = "corpus.test"
CLIENT_IP = "127.0.0.1"

# Guard's configuration for the corpus (tests/corpus/README.md states it for the cases).
GUARD_HTTP: dict[str, Any] = {
    "limits": {"max_header_bytes": 16384, "max_headers": 100, "max_body": "64KiB"},
    # short, so a case that leaves Guard waiting costs a second, not a minute
    "timeouts": {"request_header": "2s", "response_header": "3s", "idle": "5s", "drain": "0s"},
}
READ_TIMEOUT = 1.0  # a response (or the close) that takes longer is "nothing came"

# The x-guard-error code of each status Guard answers with, unless a case names another.
DEFAULT_ERRORS = {
    400: "bad_request",
    408: "request_timeout",
    413: "body_too_large",
    417: "expectation_failed",
    431: "header_too_large",
    501: "not_implemented",
    502: "upstream_protocol_error",
}
PARSERS = ("httptools", "h11")
BACKEND_MODES = ("ok", "switch", "switch-bad-accept")  # how the backend answers (_answer)


# ---------------------------------------------------------------------------- the corpus


def _token(host: bytes) -> bool:
    # Guard writes Forwarded's host= bare only for [A-Za-z0-9.-]+ (forwarding._is_token)
    return bool(re.fullmatch(rb"[A-Za-z0-9.\-]+", host))


def forwarding_lines(host: str) -> bytes:
    """The headers Guard appends for an untrusted client at 127.0.0.1 (the ``{{fwd}}``
    placeholder): X-Forwarded-For/Proto always, X-Forwarded-Host and Forwarded's host=
    only when the request named a host."""
    h = host.encode("latin-1")
    out = b"x-forwarded-for: %s\r\nx-forwarded-proto: http\r\n" % CLIENT_IP.encode()
    fwd = b"for=%s;proto=http" % CLIENT_IP.encode()
    if h:
        out += b"x-forwarded-host: %s\r\n" % h
        quoted = b'"%s"' % h.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
        fwd += b";host=" + (h if _token(h) else quoted)
    return out + b"forwarded: " + fwd + b"\r\n"


_PLACEHOLDER = re.compile(r"\{\{(fwd|pad|headers)(?::([^}]*))?\}\}")


def expand(text: str) -> bytes:
    """A corpus string as bytes: YAML escapes already applied, each character one byte
    (latin-1), placeholders expanded."""

    def sub(m: re.Match[str]) -> str:
        kind, arg = m.group(1), m.group(2)
        if kind == "fwd":
            return forwarding_lines(HOST if arg is None else arg).decode("latin-1")
        if kind == "pad":
            return "a" * int(arg or "0")
        return "".join(f"x-h{i:04d}: v\r\n" for i in range(int(arg or "0")))

    return _PLACEHOLDER.sub(sub, text).encode("latin-1")


@dataclass
class Case:
    family: str
    name: str
    raw: bytes
    verdict: str  # "reject" | "forward"
    responses: list[int]  # statuses the client gets, in order
    errors: list[str | None]  # x-guard-error of each (None: the backend answered)
    forwarded: list[bytes]  # exactly what reaches the backend, request by request
    close: bool | None  # Guard closes the connection after the last response (None: either)
    incomplete: bool  # Guard waits for more bytes: no answer, the client gives up
    informational: list[int]
    split: list[int]  # send the raw bytes cut at these offsets, with pauses
    xfail: dict[str, str]  # parser (or "haproxy") -> why the case fails there today
    haproxy: dict[str, Any] | None  # how and why HAProxy differs, when it does
    why: str
    backend: str  # how the recording backend answers (BACKEND_MODES)
    tunnel_close: int | None  # the close code Guard sends the backend when the client leaves

    @property
    def id(self) -> str:
        return f"{self.family}/{self.name}"

    def methods(self) -> list[str]:
        return [f.split(b" ", 1)[0].decode("latin-1") for f in self.forwarded]


def _as_list(v: Any) -> list[Any]:
    if v is None:
        return []
    return v if isinstance(v, list) else [v]


def _case(family: str, doc: dict[str, Any]) -> Case:
    name = doc["name"]
    known = {
        "name",
        "raw",
        "raw_b64",
        "verdict",
        "status",
        "error",
        "forwarded",
        "responses",
        "close",
        "incomplete",
        "informational",
        "split",
        "xfail",
        "haproxy",
        "why",
        "backend",
        "tunnel_close",
    }
    unknown = set(doc) - known
    assert not unknown, f"{family}/{name}: unknown keys {sorted(unknown)}"
    raw = base64.b64decode(doc["raw_b64"]) if "raw_b64" in doc else expand(doc["raw"])
    verdict = doc["verdict"]
    assert verdict in ("reject", "forward"), f"{family}/{name}: verdict {verdict!r}"
    forwarded = [expand(f) for f in _as_list(doc.get("forwarded"))]
    if verdict == "reject":
        # (a rejected case may list what was streamed before the error was seen)
        status = doc.get("status", 400)
        responses = _as_list(doc.get("responses")) or [status]
        close = doc.get("close", True)
    else:
        assert forwarded, f"{family}/{name}: a forwarded case says what is forwarded"
        incomplete = doc.get("incomplete", False)
        responses = _as_list(doc.get("responses", [] if incomplete else [200] * len(forwarded)))
        close = doc.get("close", False)
    error = doc.get("error")
    errors = [None if s == 200 else (error or DEFAULT_ERRORS.get(s)) for s in responses]
    xfail = doc.get("xfail") or {}
    if isinstance(xfail, str):
        xfail = dict.fromkeys(PARSERS, xfail)
    assert set(xfail) <= {*PARSERS, "haproxy"}, f"{family}/{name}: xfail keys {xfail}"
    assert doc.get("backend", "ok") in BACKEND_MODES, f"{family}/{name}: backend mode"
    haproxy = doc.get("haproxy")
    if haproxy is not None:
        assert "why" in haproxy, f"{family}/{name}: a haproxy note says why"
        assert set(haproxy) <= {"why", "responses", "requests", "or_guard"}, haproxy
    return Case(
        family=family,
        name=name,
        raw=raw,
        verdict=verdict,
        responses=responses,
        errors=errors,
        forwarded=forwarded,
        close=None if close == "any" else close,
        incomplete=doc.get("incomplete", False),
        informational=_as_list(doc.get("informational")),
        split=_as_list(doc.get("split")),
        xfail=xfail,
        haproxy=haproxy,
        why=doc.get("why", ""),
        backend=doc.get("backend", "ok"),
        tunnel_close=doc.get("tunnel_close"),
    )


def load_corpus(directory: Path = CORPUS_DIR) -> list[Case]:
    cases: list[Case] = []
    for path in sorted(directory.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        family = doc.get("family", path.stem)
        assert doc.get("rfc") and doc.get("why"), f"{path.name}: say why the rules exist"
        cases += [_case(family, c) for c in doc["cases"]]
    names = [c.id for c in cases]
    dupes = {n for n in names if names.count(n) > 1}
    assert not dupes, f"duplicate case names: {sorted(dupes)}"
    return cases


CORPUS = load_corpus()


# ------------------------------------------------------------------ recording backend


class _RecordingConn(BackendConn):
    def _fill(self) -> bool:
        before = len(self.buf)
        ok = super()._fill()
        if ok:
            self.backend.note(self, bytes(self.buf[before:]))  # type: ignore[attr-defined]
        return ok


def _accept_value(key: str) -> bytes:
    digest = hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
    return base64.b64encode(digest)


def _answer(conn: BackendConn) -> None:
    """Answer each whole request, as the case's ``backend`` mode says: "ok" is 200 (HEAD:
    no body); "switch" accepts a WebSocket upgrade with 101 and then only records what the
    tunnel carries; "switch-bad-accept" answers 101 with a wrong Sec-WebSocket-Accept."""
    backend: RecordingBackend = conn.backend  # type: ignore[assignment]
    while True:
        try:
            req = conn.read_request()
        except (ValueError, IndexError):
            return  # bytes that are no request: recorded, never answered
        if req is None:
            return
        backend.requests.append(req)
        key = req.header("sec-websocket-key")
        if backend.mode != "ok" and key is not None:
            accept = _accept_value(key) if backend.mode == "switch" else b"d3Jvbmc="
            conn.send(
                b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\n"
                b"upgrade: websocket\r\nsec-websocket-accept: %s\r\n\r\n" % accept
            )
            while conn._fill():  # the tunnel: bytes are recorded, nothing is parsed
                pass
            return
        body = b"" if req.method == "HEAD" else b"ok"
        conn.send(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n" + body)


class RecordingBackend(RawBackend):
    """A RawBackend whose connections log every byte read, in arrival order."""

    conn_class = _RecordingConn

    def __init__(self) -> None:
        self.log: list[tuple[int, bytes]] = []  # (connection number, bytes)
        self.mode = "ok"  # how requests are answered (BACKEND_MODES)
        self.last = time.monotonic()
        self._ids: dict[int, int] = {}
        super().__init__(_answer, record=False)

    def note(self, conn: BackendConn, data: bytes) -> None:
        with self.lock:
            n = self._ids.setdefault(id(conn), len(self._ids))
            self.log.append((n, data))
            self.last = time.monotonic()

    def mark(self) -> tuple[int, int]:
        with self.lock:
            return len(self.log), len(self.requests)

    def wait_quiet(self, quiet: float, limit: float = 1.0) -> None:
        """Until no byte arrived for ``quiet`` seconds (at most ``limit``)."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            with self.lock:
                idle = time.monotonic() - self.last
            if idle >= quiet:
                return
            time.sleep(quiet - idle)

    def since(self, mark: tuple[int, int]) -> tuple[bytes, list[Any]]:
        """The bytes received since ``mark``, connection by connection, and the requests."""
        with self.lock:
            entries = self.log[mark[0] :]
            requests = list(self.requests[mark[1] :])
        order: dict[int, list[bytes]] = {}
        for n, data in entries:
            order.setdefault(n, []).append(data)
        return b"".join(b"".join(parts) for parts in order.values()), requests


# ------------------------------------------------------------------------ observation


@dataclass
class Observation:
    responses: list[int] = field(default_factory=list)
    errors: list[str | None] = field(default_factory=list)
    informational: list[int] = field(default_factory=list)
    close: bool = False  # a response said "connection: close", or the close came early
    timed_out: bool = False
    switched: bool = False  # a 101 came: the connection is a tunnel now
    close_code: int | None = None  # the close frame Guard sent the backend, once switched
    received: bytes = b""
    requests: list[Any] = field(default_factory=list)


# A masked WebSocket close frame with a 2-byte status code (RFC 6455 5.5.1), at the end.
CLOSE_FRAME = re.compile(rb"\x88\x82(.{4})(.{2})\Z", re.DOTALL)


def _read(c: Conn, obs: Observation, method: str, *, half_closed: bool = False) -> bool:
    """One final response (or a 101) into ``obs``; False once the connection closed, went
    silent or switched protocols."""
    try:
        while True:
            r = c.read_response(method, informational=True)
            if r.status == 101 or r.status >= 200:
                break
            obs.informational.append(r.status)
    except Closed:
        obs.close = obs.close or not half_closed  # after our half-close it is expected
        return False
    except (TimeoutError, OSError):
        obs.timed_out = True
        return False
    obs.responses.append(r.status)
    obs.errors.append(r.header("x-guard-error"))
    if r.status == 101:
        obs.switched = True
        return False
    if (r.header("connection") or "").lower() == "close":
        obs.close = True
    return True


def observe(
    port: int,
    backend: RecordingBackend,
    case: Case,
    expect: int,
    *,
    timeout: float = READ_TIMEOUT,
    close_frame: bool = True,
) -> Observation:
    """Send the case's bytes, read ``expect`` responses, half-close, read to the end.

    ``close_frame``: after a 101, wait for the close frame Guard sends the backend."""
    backend.mode = case.backend
    mark = backend.mark()
    obs = Observation()
    methods = case.methods()
    with Conn(port, timeout=timeout) as c:
        prev = 0
        for cut in [*case.split, len(case.raw)]:
            c.send(case.raw[prev:cut])
            prev = cut
            if cut < len(case.raw):
                time.sleep(0.02)  # its own segment, read by its own data_received
        if case.incomplete:
            # Guard forwards what it has and waits for the rest: see what arrived, give up.
            backend.wait_quiet(0.1, limit=1.0)
            c.sock.settimeout(0.05)
            while _read(c, obs, "GET"):
                pass
        else:
            i = 0
            while i < expect and _read(c, obs, methods[i] if i < len(methods) else "GET"):
                i += 1
            if obs.switched:
                backend.wait_quiet(0.1)  # the tail the client sent goes through the tunnel
            elif not obs.timed_out:
                # Nothing more is coming from the client: Guard (or HAProxy) answers
                # anything still pending, then closes.
                with contextlib.suppress(OSError):
                    c.sock.shutdown(socket.SHUT_WR)
                while _read(c, obs, methods[i] if i < len(methods) else "GET", half_closed=True):
                    i += 1
    if obs.switched and close_frame and case.tunnel_close is not None:
        # The client went away: Guard ends the tunnel with a close frame to the backend.
        deadline = time.monotonic() + 1.0
        while not CLOSE_FRAME.search(backend.since(mark)[0]) and time.monotonic() < deadline:
            time.sleep(0.01)
    # late bytes (a forward that should not be) arrive within a millisecond on loopback
    backend.wait_quiet(0.01)
    obs.received, obs.requests = backend.since(mark)
    if obs.switched and (m := CLOSE_FRAME.search(obs.received)):
        obs.received = obs.received[: m.start()]
        mask, payload = m.group(1), m.group(2)
        obs.close_code = int.from_bytes(bytes(a ^ b for a, b in zip(payload, mask, strict=False)))
    return obs


# ------------------------------------------------------------------- exact comparison


def _split_requests(stream: bytes) -> list[tuple[bytes, bytes, bool]] | None:
    """(head, de-chunked body, chunked) per request; None when the framing is invalid."""
    out = []
    pos = 0
    while pos < len(stream):
        end = stream.find(b"\r\n\r\n", pos)
        if end < 0:
            return None
        head = stream[pos : end + 4]
        pos = end + 4
        names = [line.split(b":", 1)[0].lower() for line in head.split(b"\r\n")[1:]]
        if b"transfer-encoding" in names:
            body = b""
            while True:
                eol = stream.find(b"\r\n", pos)
                if eol < 0 or not re.fullmatch(rb"[0-9a-f]+", stream[pos:eol]):
                    return None
                size = int(stream[pos:eol], 16)
                pos = eol + 2
                if size == 0:
                    if stream[pos : pos + 2] != b"\r\n":
                        return None
                    pos += 2
                    break
                body += stream[pos : pos + size]
                if stream[pos + size : pos + size + 2] != b"\r\n":
                    return None
                pos += size + 2
            out.append((head, body, True))
        else:
            m = re.search(rb"\r\ncontent-length: ([0-9]+)\r\n", head, re.IGNORECASE)
            n = int(m.group(1)) if m else 0
            out.append((head, stream[pos : pos + n], False))
            pos += n
    return out


def same_bytes(got: bytes, want: bytes) -> bool:
    """Exactly equal; or equal but for where chunk boundaries fall, since Guard re-chunks
    each body piece as it reads it and TCP decides the pieces."""
    if got == want:
        return True
    a, b = _split_requests(got), _split_requests(want)
    return a is not None and a == b


def check_guard(case: Case, obs: Observation) -> list[str]:
    problems = []
    want = b"".join(case.forwarded)
    if not same_bytes(obs.received, want):
        problems.append(f"backend received {obs.received!r}\n  expected {want!r}")
    if obs.responses != case.responses:
        problems.append(f"client got statuses {obs.responses}, expected {case.responses}")
    elif obs.errors != case.errors:
        problems.append(f"x-guard-error {obs.errors}, expected {case.errors}")
    if obs.informational != case.informational:
        problems.append(f"interim {obs.informational}, expected {case.informational}")
    if (
        not case.incomplete
        and case.close is not None
        and obs.responses == case.responses
        and obs.close != case.close
    ):
        problems.append(f"closed: {obs.close}, expected {case.close}")
    if obs.timed_out and not case.incomplete:
        problems.append("Guard neither answered nor closed in time")
    if obs.switched and obs.close_code != case.tunnel_close:
        problems.append(
            f"tunnel closed toward the backend with {obs.close_code}, not {case.tunnel_close}"
        )
    return problems


# --------------------------------------------------------------------- Guard fixtures


@pytest.fixture(scope="module")
def corpus_backend() -> Iterator[RecordingBackend]:
    b = RecordingBackend()
    yield b
    b.close()


@pytest.fixture(scope="module")
def corpus_guard(
    tmp_path_factory: pytest.TempPathFactory, parser: str, corpus_backend: RecordingBackend
) -> Iterator[Any]:
    from conftest import run_guard

    routes = [{"name": "all", "match": {"path_prefix": "/"}, "service": "app"}]
    services = {"app": {"servers": [corpus_backend.address]}}
    directory = tmp_path_factory.mktemp(f"corpus-{parser}")
    with run_guard(directory, parser, routes, services, GUARD_HTTP) as g:
        yield g
        assert g.proc.poll() is None, f"Guard exited during the corpus:\n{g.stderr}"
        assert "Traceback" not in g.stderr, g.stderr


def _params(target: str) -> list[Any]:
    out = []
    for case in CORPUS:
        marks = []
        if target in case.xfail:
            marks.append(pytest.mark.xfail(strict=True, reason=case.xfail[target]))
        out.append(pytest.param(case, id=case.id, marks=marks))
    return out


def _parser_params() -> list[Any]:
    # xfail marks depend on the parser, so both are parameters of the test itself
    out = []
    for parser in PARSERS:
        for p in _params(parser):
            out.append(pytest.param(parser, *p.values, id=f"{parser}-{p.id}", marks=p.marks))
    return out


@pytest.fixture(scope="module")
def parser(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.mark.parametrize(("parser", "case"), _parser_params(), indirect=["parser"], scope="module")
def test_corpus_guard(corpus_guard: Any, corpus_backend: RecordingBackend, case: Case) -> None:
    obs = observe(corpus_guard.port, corpus_backend, case, len(case.responses))
    problems = check_guard(case, obs)
    assert not problems, f"{case.id}:\n  " + "\n  ".join(problems)


def test_corpus_is_large_and_grouped() -> None:
    families = {c.family for c in CORPUS}
    assert len(CORPUS) >= 150, len(CORPUS)
    assert len(families) >= 10, families
    assert any(c.verdict == "forward" for c in CORPUS)
    assert any(c.verdict == "reject" for c in CORPUS)


# ------------------------------------------------------------------------------ HAProxy


HAPROXY = shutil.which("haproxy")

HAPROXY_CFG = """\
global
    maxconn 200
defaults
    mode http
    timeout connect 2s
    timeout client 5s
    timeout server 5s
    timeout http-request 2s
frontend corpus
    bind 127.0.0.1:{port}
    default_backend app
backend app
    server s1 {backend}
"""


@contextlib.contextmanager
def run_haproxy(directory: Path, backend: str) -> Iterator[int]:
    port = free_port()
    cfg = directory / "haproxy.cfg"
    cfg.write_text(HAPROXY_CFG.format(port=port, backend=backend))
    log = directory / "haproxy.log"
    assert HAPROXY is not None
    with log.open("wb") as err:
        proc = subprocess.Popen([HAPROXY, "-db", "-f", str(cfg)], stdout=err, stderr=err)
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"haproxy exited: {log.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"haproxy did not listen: {log.read_text()}") from None
                time.sleep(0.02)
        yield port
    finally:
        stop_process(proc)


@dataclass(frozen=True)
class Outcome:
    """What a proxy did with a case, in terms both proxies share: the statuses the client
    saw and, per request reaching the backend, its method, target and body. (Header
    rewriting differs by design and is not compared.)"""

    responses: tuple[int, ...]
    requests: tuple[tuple[str, str, bytes], ...]

    def describe(self) -> str:
        reqs = ", ".join(f"{m} {t} {b!r}" if b else f"{m} {t}" for m, t, b in self.requests)
        return f"statuses {list(self.responses)}; forwarded [{reqs}]"


def _summary(requests: list[Any]) -> tuple[tuple[str, str, bytes], ...]:
    return tuple((r.method, r.target, r.body) for r in requests)


def guard_outcome(case: Case) -> Outcome:
    """The outcome the corpus states for Guard, in the terms HAProxy is compared by."""
    reqs = []
    for f in case.forwarded:
        parsed = _split_requests(f)
        head, body = (parsed[0][0], parsed[0][1]) if parsed else (f, b"")
        method, target = head.split(b" ", 2)[:2]
        reqs.append((method.decode("latin-1"), target.decode("latin-1"), body))
    if case.incomplete or case.verdict == "reject":
        reqs = []  # the backend never got a whole request: nothing to compare by
    return Outcome(tuple(case.responses), tuple(reqs))


def noted_outcome(case: Case) -> Outcome | None:
    note = case.haproxy
    if note is None:
        return None
    base = guard_outcome(case)
    responses = tuple(note["responses"]) if "responses" in note else base.responses
    if "requests" in note:
        reqs = tuple(
            (
                expand(r[0]).decode("latin-1"),
                expand(r[1]).decode("latin-1"),
                expand(r[2]) if len(r) > 2 else b"",
            )
            for r in note["requests"] or []
        )
    else:
        reqs = base.requests
    return Outcome(responses, reqs)


def haproxy_outcome(port: int, backend: RecordingBackend, case: Case) -> Outcome:
    # Half-close where Guard's answers end, whatever the note says, so that the note never
    # changes what is observed.
    obs = observe(port, backend, case, len(case.responses), timeout=0.5, close_frame=False)
    reqs = [] if case.incomplete else obs.requests
    return Outcome(tuple(obs.responses), _summary(reqs))


@pytest.fixture(scope="module")
def haproxy_port(
    tmp_path_factory: pytest.TempPathFactory, corpus_backend: RecordingBackend
) -> Iterator[int]:
    if HAPROXY is None:
        pytest.skip("haproxy is not installed (Debian package: haproxy)")
    with run_haproxy(tmp_path_factory.mktemp("haproxy"), corpus_backend.address) as port:
        yield port


@pytest.mark.parametrize("case", _params("haproxy"))
def test_corpus_haproxy(haproxy_port: int, corpus_backend: RecordingBackend, case: Case) -> None:
    """HAProxy reaches the corpus's verdict, or the corpus says how and why it does not."""
    got = haproxy_outcome(haproxy_port, corpus_backend, case)
    want = guard_outcome(case)
    noted = noted_outcome(case)
    if noted is None:
        assert got == want, (
            f"{case.id}: HAProxy differs from Guard and the corpus does not explain it\n"
            f"  guard:   {want.describe()}\n  haproxy: {got.describe()}"
        )
    elif not (case.haproxy and case.haproxy.get("or_guard") and got == want):
        # (or_guard: HAProxy's outcome depends on timing, and is sometimes Guard's)
        assert got == noted, (
            f"{case.id}: the haproxy note is stale\n"
            f"  noted:   {noted.describe()}\n  haproxy: {got.describe()}"
        )
        assert noted != want, f"{case.id}: a haproxy note for a case where both agree"


# --------------------------------------------------------------------------- the report


def main(argv: list[str]) -> int:
    by_family: dict[str, list[Case]] = {}
    for c in CORPUS:
        by_family.setdefault(c.family, []).append(c)
    print(f"{len(CORPUS)} cases")
    for family, cases in by_family.items():
        fwd = sum(c.verdict == "forward" for c in cases)
        print(f"  {family:22} {len(cases):4}  ({fwd} forwarded, {len(cases) - fwd} rejected)")
    xfails = [c for c in CORPUS if c.xfail]
    if xfails:
        print(f"\n{len(xfails)} known failures:")
        for c in xfails:
            for who, why in c.xfail.items():
                print(f"  {c.id} [{who}]: {why}")
    if "--haproxy" in argv:
        if HAPROXY is None:
            print("haproxy is not installed")
            return 1
        import tempfile

        backend = RecordingBackend()
        try:
            with (
                tempfile.TemporaryDirectory() as d,
                run_haproxy(Path(d), backend.address) as port,
            ):
                print("\nHAProxy differences:")
                for c in CORPUS:
                    got = haproxy_outcome(port, backend, c)
                    want = guard_outcome(c)
                    if got == want:
                        continue
                    note = c.haproxy["why"] if c.haproxy else "UNEXPLAINED"
                    print(f"- {c.id}\n    guard:   {want.describe()}")
                    print(f"    haproxy: {got.describe()}\n    why: {note}")
        finally:
            backend.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
