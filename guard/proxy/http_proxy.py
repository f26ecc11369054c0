"""The client side of the HTTP/1.1 proxy: one ``asyncio.Protocol`` per client connection.

Everything runs in callbacks; the only task is opening a new upstream connection. One
request is *active* at a time (responses must go back in order); pipelined requests that
arrive meanwhile wait in ``_pending`` with reading paused. Bodies stream in both directions
and each side's write buffer pauses the other side's reading, so memory stays bounded
whatever the client or backend speed.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import deque
from typing import Final

from guard.errors import (
    BadRequest,
    BodyTooLarge,
    GuardError,
    NoHealthyUpstream,
    NotImplementedByGuard,
    RateLimited,
    RequestTimeout,
    RouteNotFound,
    UpstreamConnectFailed,
    UpstreamProtocolError,
    UpstreamTimeout,
    WakeTimeout,
)
from guard.http.codec import (
    VALID_HOST,
    Headers,
    RequestHead,
    ResponseHead,
    make_request_parser,
)
from guard.http.forwarding import (
    RequestForwarder,
    error_response_bytes,
    forwarded_for_value,
    informational_bytes,
    plain_response_bytes,
    response_head_bytes,
    switching_bytes,
)
from guard.proxy import websocket
from guard.proxy.context import ListenerContext, RouteStats
from guard.proxy.deadlines import NEVER
from guard.proxy.ratelimit import retry_after_header
from guard.proxy.writes import CORK, BufferedWriter
from guard.upstream.container_service import Hold, WakeableService
from guard.upstream.pool import UpstreamConnection, UpstreamPool
from guard.upstream.service import Service

# Read-pause reasons: reading resumes only when none is left.
_PAUSE_PIPELINE: Final = 1  # a complete request waits for the active one's response
_PAUSE_UPSTREAM: Final = 2  # the backend's socket buffer is full
_PAUSE_BUFFER: Final = 4  # body bytes wait for an upstream connection
_PAUSE_STOPPED: Final = 8  # nothing more will be read (parse error, upgrade until answered)

_MAX_EARLY_BODY: Final = 256 * 1024  # body buffered before the upstream connection is ready
_MAX_REPLAY: Final = 64 * 1024  # bytes kept so a request can be resent on a fresh connection
# A plain response's body up to this is sent in one write with its head.
_JOIN_MAX: Final = 64 * 1024
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_IDEMPOTENT: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})

_clock: Final = time.perf_counter

# Passed for the headers where nothing reads them (never mutated): a plain request's
# header list is then never built (see RequestHead.headers).
_NONE: Final[Headers] = []

# Deadline kinds
_T_HEADER: Final = 1
_T_IDLE: Final = 2
_T_RESPONSE: Final = 3
_T_WAKE: Final = 4
_T_BODY: Final = 5


class _BadAuthority(BadRequest):
    """An absolute-form target whose authority is empty or carries userinfo."""


class _Request:
    """A parsed request head plus what arrived of its body before it became active."""

    __slots__ = ("body", "complete", "head")

    def __init__(self, head: RequestHead) -> None:
        self.head = head
        self.body: list[bytes] = []
        self.complete = False


class HttpProxyProtocol(BufferedWriter, asyncio.Protocol):
    __slots__ = (
        "_active",
        "_attempts",
        "_body_bytes",
        "_client_ip",
        "_closed",
        "_cold_ms",
        "_container",
        "_ctx",
        "_deadline_kind",
        "_error_after_active",
        "_forwarder",
        "_hold",
        "_ip_counted",
        "_keep_alive",
        "_out_chunked",
        "_parser",
        "_parsing",
        "_pending",
        "_pool",
        "_read_paused",
        "_replay",
        "_requests_served",
        "_resp_keep_alive",
        "_response_started",
        "_retried",
        "_route_name",
        "_service_name",
        "_stats",
        "_status",
        "_svc",
        "_t_start",
        "_t_upstream",
        "_target",
        "_upstream",
        "_waiting_conn",
        "_wbuf",
        "_write_paused",
        "_ws_max",
        "bytes_in",
        "bytes_out",
        "deadline",
        "transport",
    )

    def __init__(self, ctx: ListenerContext) -> None:
        self._ctx = ctx
        http = ctx.http
        self._parser = make_request_parser(
            http.parser,
            self,
            max_header_bytes=http.limits.max_header_bytes,
            max_headers=http.limits.max_headers,
        )
        self.transport: asyncio.Transport | None = None
        self._wbuf: list[bytes] = []
        self._closed = False
        self._active: _Request | None = None
        self._parsing: _Request | None = None
        self._pending: deque[_Request] = deque()
        self._read_paused = 0
        self._write_paused = False
        self._upstream: UpstreamConnection | None = None
        self._pool: UpstreamPool | None = None
        self._error_after_active: GuardError | None = None
        self._requests_served = 0
        self._ip_counted = False
        self._client_ip = ""
        self._hold: Hold | None = None
        # A service woken on demand (a ContainerService, or an API container's PortService)
        self._container: WakeableService | None = None
        self._svc: Service | None = None  # set only for services with limits/retries/outlier
        self._waiting_conn = False  # counted in the service's pending connections
        self._attempts = 0  # retries of the active request (retries:)
        self._reset_exchange()
        self.deadline = NEVER
        self._deadline_kind = 0

    def _reset_exchange(self) -> None:
        self._response_started = False
        self._resp_keep_alive = False
        self._status = 0
        self._out_chunked = False
        self._keep_alive = True
        self._body_bytes = 0
        self._replay: list[bytes] | None = []
        self._retried = False
        self._target = b""
        self._route_name = ""
        self._service_name = ""
        self._stats: RouteStats | None = None
        self._t_start = 0.0
        self._t_upstream = 0.0
        self._cold_ms = -1
        self._ws_max: int | None = None  # a frame-mode route's websocket.max_message
        self.bytes_in = 0
        self.bytes_out = 0

    # ------------------------------------------------------------------ connection
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        ctx = self._ctx
        peer = transport.get_extra_info("peername")
        ip = peer[0] if isinstance(peer, tuple) else ""
        self._client_ip = ip
        # Connection caps (slowloris and floods): refused at once, with an answer that
        # says why, before any state is made for the connection.
        if len(ctx.connections) >= ctx.max_connections:
            self._refuse("max_connections", "the listener has too many connections open")
            return
        per_ip = ctx.per_ip
        open_here = per_ip.get(ip, 0)
        if open_here >= ctx.max_connections_per_ip:
            self._refuse("max_connections_per_ip", "too many connections from this address")
            return
        per_ip[ip] = open_here + 1
        self._ip_counted = True
        self._forwarder = RequestForwarder(
            client_ip=ip.encode(),
            forwarded_for=forwarded_for_value(ip) if ip else b"for=unknown",
            proto=ctx.proto,
            trusted=ip in ctx.trusted,
            via=ctx.via,
        )
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ctx.connections.add(self)
        ctx.sweeper.add(self)
        self._set_deadline(_T_HEADER, ctx.request_header_timeout)

    def _refuse(self, cap: str, message: str) -> None:
        ctx = self._ctx
        ctx.refused[cap] += 1
        self._closed = True
        assert self.transport is not None
        self.transport.write(
            error_response_bytes(503, "connection_limit", message, keep_alive=False)
        )
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        ctx = self._ctx
        if self._ip_counted:
            self._ip_counted = False
            ip = self._client_ip
            left = ctx.per_ip.get(ip, 1) - 1
            if left > 0:
                ctx.per_ip[ip] = left
            else:
                ctx.per_ip.pop(ip, None)
        ctx.connections.discard(self)
        ctx.sweeper.discard(self)
        self._cancel_hold()
        if self._active is not None:
            self._abort_upstream()
            self._finish_stats(499 if not self._response_started else 0, "client_closed")
            self._active = None
        self._pending.clear()

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if self._active is None and self._parsing is None and not self._closed:
            head = parser.take_plain(data)
            if head is not None:
                # One whole plain request (the usual keep-alive GET), without the parser's
                # per-header work. (Uncorked: it makes one write, the head upstream, or
                # Guard's own answer.) It sets the response deadline itself.
                self._plain_request(head)
                return
        if self._deadline_kind == _T_IDLE:
            self._set_deadline(_T_HEADER, self._ctx.request_header_timeout)
        cork = CORK
        while True:
            cork.depth += 1
            try:
                parser.feed(data)
            except GuardError as e:
                self._on_parse_error(e)
                return
            finally:
                cork.depth -= 1  # CORK.release(), inlined: this runs once per read
                if not cork.depth and cork.dirty:
                    cork.flush()
            if parser.upgraded_tail is None or self._parsing is not None or self._closed:
                return
            if self._active is not None or self._pending:
                # An Upgrade request ended the HTTP stream until its answer says otherwise.
                self._stop_reading()
                return
            # Guard answered the upgrade request while it arrived: the stream stays HTTP.
            data = parser.resume()

    def eof_received(self) -> bool:
        # A client half-close ends the connection after the active response (if any).
        if self._active is None:
            return False
        if self._hold is not None:
            # Still waiting for a wake: a client that gave up leaves the queue now rather
            # than taking a place (and an instance) nobody will read from. HAProxy does the
            # same for queued requests with "option abortonclose".
            self._finish_stats(499, "client_closed")
            self._active = None
            self._pending.clear()
            return False
        self._keep_alive = False
        self._pending.clear()
        return True

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._upstream is not None:
            self._upstream.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._upstream is not None:
            self._upstream.resume_reading()

    def on_deadline(self) -> None:
        kind = self._deadline_kind
        self._deadline_kind = 0
        if kind == _T_BODY:
            if self._read_paused:
                # Guard stopped reading (the backend is slow to take the body): not the
                # client's silence. Look again later.
                self._set_deadline(_T_BODY, self._ctx.body_read_timeout)
                return
            self._fail_exchange(RequestTimeout("request body not received in time"), close=True)
        elif kind == _T_RESPONSE:
            if not self._retry("timeout"):
                self._fail_exchange(UpstreamTimeout("upstream did not answer in time"))
        elif kind == _T_WAKE:
            container = self._container
            self._cancel_hold()
            timeout = container.wake_timeout if container is not None else 0.0
            self._fail_exchange(WakeTimeout(f"no instance ready within {timeout:g}s"))
        elif kind == _T_HEADER and (self._parsing is not None or self._active is not None):
            self._respond_error_and_close(RequestTimeout("request header not received in time"))
        else:
            self._close()

    def _set_deadline(self, kind: int, timeout: float) -> None:
        self._deadline_kind = kind
        self.deadline = self._ctx.sweeper.now + timeout if timeout > 0 else NEVER

    def _clear_deadline(self) -> None:
        self._deadline_kind = 0
        self.deadline = NEVER

    def _pause(self, reason: int) -> None:
        if not self._read_paused and self.transport is not None and not self._closed:
            self.transport.pause_reading()
        self._read_paused |= reason

    def _resume(self, reason: int) -> None:
        if self._read_paused & reason:
            self._read_paused &= ~reason
            if not self._read_paused and self.transport is not None and not self._closed:
                self.transport.resume_reading()

    def _stop_reading(self) -> None:
        self._pause(_PAUSE_STOPPED)

    def _close(self) -> None:
        if not self._closed and self.transport is not None:
            self.flush_writes()
            self._closed = True
            self.transport.close()

    def drain(self) -> None:
        """Graceful shutdown: close now if idle, else after the active response."""
        if self._active is None and self._parsing is None:
            self._close()
        else:
            self._keep_alive = False

    # ------------------------------------------------------------ request events
    def on_request_head(self, head: RequestHead) -> None:
        req = _Request(head)
        self._parsing = req
        if self._active is None:
            self._activate(req)
        else:
            self._pending.append(req)
            self._pause(_PAUSE_PIPELINE)

    def on_request_body(self, data: bytes) -> None:
        req = self._parsing
        if req is None:
            return
        if req is not self._active:
            req.body.append(data)
            return
        self._body_bytes += len(data)
        if self._body_bytes > self._ctx.max_body:
            self._fail_exchange(BodyTooLarge("request body too large"), close=True)
            return
        if self._deadline_kind == _T_BODY:
            self.deadline = self._ctx.sweeper.now + self._ctx.body_read_timeout
        self._send_body(data)

    def on_request_complete(self) -> None:
        req = self._parsing
        self._parsing = None
        if req is None:
            return
        req.complete = True
        if req is self._active:
            # Held requests wait on the wake deadline instead; a request without a body
            # got its response deadline when it became active, a moment ago; and a
            # response that began before the body ended (an early answer) has no header
            # left to wait for: its stream must not be cut at response_header.
            if (
                self._hold is None
                and not self._response_started
                and self._deadline_kind != _T_RESPONSE
            ):
                self._set_deadline(_T_RESPONSE, self._ctx.response_header_timeout)
            if req.head.chunked and self._upstream is not None:
                self._send_upstream(b"0\r\n\r\n")
        elif req in self._pending:
            if self._deadline_kind == _T_HEADER:
                self._clear_deadline()
        elif self._active is None and not self._pending:
            # Answered (by Guard) before it finished arriving: now the connection idles.
            self._set_deadline(_T_IDLE, self._ctx.idle_timeout)

    def _on_parse_error(self, err: GuardError) -> None:
        parsing, self._parsing = self._parsing, None
        self._stop_reading()
        if parsing is not None and parsing is not self._active and parsing in self._pending:
            # A pipelined request whose own body broke: it must never be forwarded.
            self._pending.remove(parsing)
        active = self._active
        if active is not None and (self._response_started or active.complete):
            # Answer the broken request in order, after the response in progress (and any
            # whole pipelined requests before it). A request that arrived whole was maybe
            # already forwarded: aborting it would answer 400 to a valid request the
            # backend may have executed.
            self._error_after_active = err
            return
        if self._active is not None:
            self._abort_upstream()
            self._finish_stats(err.status, err.code)
            self._active = None
        self._respond_error_and_close(err)

    # ---------------------------------------------------------- starting exchange
    def _plain_request(self, head: RequestHead) -> None:
        """A whole plain request (guard.http.plain) while no other is active: what
        on_request_head, _activate, _dispatch, _attach and on_request_complete do, in one
        call. A plain request has no body, Expect or Upgrade, is not CONNECT, has an
        origin-form target and one Host, so the steps for those are left out."""
        req = _Request(head)
        req.complete = True
        self._reset_exchange()
        self._active = req
        self._t_start = _clock()
        ctx = self._ctx
        self._deadline_kind = _T_RESPONSE
        timeout = ctx.response_header_timeout
        self.deadline = ctx.sweeper.now + timeout if timeout > 0 else NEVER
        if self._requests_served >= ctx.max_requests - 1 or not head.keep_alive or ctx.draining:
            self._keep_alive = False
        try:
            pool = self._route(head, head.target)
        except GuardError as e:
            self._answer_error(e)
            return
        if pool is None:
            return  # held for a wake
        self._pool = pool
        pool.backend.in_flight += 1
        self._connect_or_attach(pool)

    def _activate(self, req: _Request) -> None:
        self._reset_exchange()
        self._active = req
        self._t_start = _clock()
        ctx = self._ctx
        head = req.head
        if req.complete or not (head.chunked or head.content_length):
            self._set_deadline(_T_RESPONSE, ctx.response_header_timeout)
        else:
            # The body is still coming: each chunk must follow the last within body_read.
            self._set_deadline(_T_BODY, ctx.body_read_timeout)
        if self._requests_served >= ctx.max_requests - 1:
            self._keep_alive = False
        if not head.keep_alive or ctx.draining:
            self._keep_alive = False
        if req.body:
            # a pipelined request whose body arrived while it waited
            self._body_bytes = sum(map(len, req.body))
        try:
            if self._body_bytes > ctx.max_body:
                raise BodyTooLarge("request body too large")
            if head.upgrade is not None:
                self._check_upgrade(head)
            if head.method == b"CONNECT":
                raise NotImplementedByGuard("CONNECT is not supported")
            if head.content_length is not None and head.content_length > ctx.max_body:
                raise BodyTooLarge("request body too large")
            target = head.target
            if not target.startswith(b"/"):
                try:
                    target = self._origin_form(head)
                except _BadAuthority:
                    self._keep_alive = False  # llhttp closes on these too: one verdict
                    raise
            pool = self._route(head, target)
        except GuardError as e:
            self._answer_error(e)
            return
        if pool is not None:
            self._dispatch(pool)

    def _route(self, head: RequestHead, target: bytes) -> UpstreamPool | None:
        """The active request's route, service and backend (``target`` in origin form):
        the pool to send it to, or None when it is held for a wake. Raises the GuardError
        that answers it instead."""
        ctx = self._ctx
        path = target if (q := target.find(b"?")) < 0 else target[:q]
        table = ctx.table
        match = table.match(
            head.host, path, head.method, head.headers if table.reads_headers else _NONE
        )
        if match is None:
            raise RouteNotFound(f"no route for {head.host.decode('latin-1')}")
        route = match.route
        self._route_name = route.name
        limiters = ctx.limiters
        if limiters:
            limiter = limiters.get(route.name)
            if limiter is not None:
                wait = limiter.check(self._client_ip, head.headers)
                if wait:
                    raise RateLimited(f"rate limit of route {route.name} reached", wait)
        if head.upgrade is not None and route.config.websocket is not None:
            # Frame mode: Guard reads every frame, so no extension may be negotiated
            # (it could not decode, say, permessage-deflate on the client's behalf).
            self._ws_max = route.config.websocket.max_message
            head.drop(b"sec-websocket-extensions")
        service = route.target
        self._stats = ctx.stats.get(route.name) or ctx.route_stats(route.name, service.name)
        self._service_name = service.name
        self._target = route.rewrite_target(target) if route.strip_prefix else target
        headers = head.headers if service.reads_headers else _NONE
        if service.wakeable:
            self._container = service
            key = service.key_of(match.key, headers)
            pool = service.pick(headers, self._client_ip, path, key)
            if pool is None:
                # No instance can take it now: wait for a wake, on the wake deadline
                # (never on the upstream timeouts). The body keeps arriving into
                # req.body until the early-body cap pauses reading.
                self._hold = service.hold(self, key, headers, self._client_ip, path)
                self._set_deadline(_T_WAKE, service.wake_timeout)
                return None
            return pool
        pool = service.pick(headers, self._client_ip, path)
        if pool is None:
            raise NoHealthyUpstream(f"no available server for service {service.name}")
        if service.policed:
            service.admit()  # circuit breaking: 503 overloaded, fast
            service.active += 1
            self._svc = service
        return pool

    def _check_upgrade(self, head: RequestHead) -> None:
        assert head.upgrade is not None
        if head.content_length is not None or head.chunked:
            # llhttp takes such a body for the new protocol's first bytes, h11 for a body:
            # the codecs cannot agree where the next request starts, so none may follow.
            self._keep_alive = False
            raise BadRequest("upgrade request with a body")
        if head.upgrade.strip().lower() != b"websocket":
            # Not one Guard carries: served as a plain request (the forwarder drops the
            # Upgrade header), which RFC 9110 7.8 allows; h2c clients fall back to HTTP/1.1.
            head.upgrade = None
            return
        error = websocket.request_error(head)
        if error is not None:
            raise BadRequest(error)

    # ------------------------------------------------------------- held requests
    def on_woken(self, pool: UpstreamPool, waited: float) -> None:
        """An instance is ready for the held request."""
        self._hold = None
        req = self._active
        if req is None or self._closed:
            return
        self._cold_ms = int(waited * 1000)
        if req.complete:
            self._set_deadline(_T_RESPONSE, self._ctx.response_header_timeout)
        else:
            self._set_deadline(_T_BODY, self._ctx.body_read_timeout)
        CORK.depth += 1
        try:
            self._dispatch(pool)
        finally:
            CORK.release()

    def on_wake_failed(self, error: GuardError) -> None:
        self._hold = None
        if self._active is not None and not self._closed:
            CORK.depth += 1
            try:
                self._fail_exchange(error)
            finally:
                CORK.release()

    def _cancel_hold(self) -> None:
        hold = self._hold
        if hold is not None:
            self._hold = None
            if self._container is not None:
                self._container.cancel(hold)

    def _dispatch(self, pool: UpstreamPool) -> None:
        head = self._active.head  # type: ignore[union-attr]
        # Forwarded as HTTP/1.1, which requires a Host: an HTTP/1.0 client may send none,
        # and a target without an authority gets an empty one (RFC 9112 3.2).
        if (
            not head.host
            and head.version == b"1.0"
            and all(name != b"host" for name, _ in head.headers)
        ):
            head.put_first(b"host", b"")
        self._pool = pool
        pool.backend.in_flight += 1
        if head.expect_continue:
            # The request passed every check Guard makes (route, size, a backend): invite
            # the body now, the same way whether the upstream connection is pooled or new.
            # Expect is not forwarded, so the client never waits on a backend that does
            # not answer 100 (nginx does the same).
            head.expect_continue = False
            if head.version == b"1.1":
                self._write(_CONTINUE)
        self._connect_or_attach(pool)

    def _connect_or_attach(self, pool: UpstreamPool) -> None:
        conn = pool.acquire()
        if conn is not None:
            self._attach(conn)
            return
        svc = self._svc
        if svc is not None:
            refusal = svc.may_connect()
            if refusal is not None:
                self._fail_exchange(refusal)
                return
            if not self._waiting_conn:
                self._waiting_conn = True
                svc.pending += 1
        pool.connect(self._on_connected)

    def _connected(self) -> None:
        """A connection attempt ended: the request no longer waits for one."""
        if self._waiting_conn:
            self._waiting_conn = False
            if self._svc is not None:
                self._svc.pending -= 1

    def _retry(self, reason: str) -> bool:
        """Send the active request again, to another server, if ``retries:`` allows it.

        Only before any of the response went to the client, only while what was sent is
        still held for replay (heads and bodies up to 64 KiB), only for idempotent methods
        unless nothing reached the backend (a connect error), within ``attempts`` and the
        service's retry budget."""
        svc = self._svc
        req = self._active
        pool = self._pool
        if svc is None or req is None or pool is None or reason not in svc.retry_on:
            return False
        retries = svc.retries
        if retries is None or self._attempts >= retries.attempts or self._response_started:
            return False
        if self._replay is None:
            return False  # the body outgrew the replay buffer
        if reason != "connect_error" and req.head.method not in _IDEMPOTENT:
            return False  # the backend may have acted on it (RFC 9110 9.2.2)
        if not self._attempts and not svc.can_retry():
            return False
        nxt = svc.pick_other(pool.backend)
        if nxt is None:
            return False
        if not self._attempts:
            svc.retrying += 1
        self._attempts += 1
        svc.retries_total += 1
        self._abort_upstream()
        if svc.outlier is not None:
            svc.report(pool.backend, False)
        pool.backend.in_flight -= 1
        self._pool = nxt
        nxt.backend.in_flight += 1
        self._retried = True  # _attach replays what the first attempt sent
        if req.complete:
            self._set_deadline(_T_RESPONSE, self._ctx.response_header_timeout)
        self._connect_or_attach(nxt)
        return True

    @staticmethod
    def _origin_form(head: RequestHead) -> bytes:
        target = head.target
        if target == b"*" and head.method == b"OPTIONS":
            return target
        # absolute-form: the proxy routes by the URI's authority (RFC 9112 3.2.2)
        scheme_end = target.find(b"://")
        if scheme_end < 0:
            raise BadRequest("invalid request target")
        rest = target[scheme_end + 3 :]
        # The authority ends at the path or the query (RFC 3986 3.2): "http://h?x=1" is
        # host h, target "/?x=1".
        end = len(rest)
        for stop in (b"/", b"?"):
            i = rest.find(stop)
            if 0 <= i < end:
                end = i
        authority, origin = rest[:end], rest[end:]
        if not origin.startswith(b"/"):
            origin = b"/" + origin
        if not authority or b"@" in authority or not VALID_HOST.fullmatch(authority):
            # Empty, or with userinfo ("user@host", "h:pw@evil"): never a host to route
            # by or to hand a backend (RFC 9110 4.2.4 deprecates userinfo in http URIs).
            raise _BadAuthority("invalid authority in the request target")
        head.host = authority
        # RFC 9112 3.2.2: the received Host is ignored and the one sent on is the target's
        # authority. Forwarding the client's Host let the backend see another virtual host
        # than the one Guard routed by.
        head.put_first(b"host", authority)
        return origin

    def _on_connected(self, conn: UpstreamConnection | None, err: GuardError | None) -> None:
        pool = self._pool
        if conn is not None and pool is not None and conn.pool is not pool:
            conn.pool.release(conn)  # a connect from before a retry moved on: keep it pooled
            return
        self._connected()
        if self._active is None or self._closed or pool is None:
            if conn is not None and pool is not None:
                pool.release(conn)
            elif conn is not None:
                conn.close()
            return
        if conn is None:
            assert err is not None
            reason = "connect_error" if isinstance(err, UpstreamConnectFailed) else "timeout"
            if not self._retry(reason):
                self._fail_exchange(err)
            return
        self._attach(conn)

    def _attach(self, conn: UpstreamConnection) -> None:
        req = self._active
        assert req is not None
        head = req.head
        self._upstream = conn
        conn.attach(self, head.method)
        ended = False
        if self._retried and self._replay:
            # A fresh connection after a stale pooled one, or a retry on another server:
            # what was sent goes again.
            replay = self._replay or []
            for data in replay:
                conn.write(data)
            ended = bool(replay) and replay[-1] == b"0\r\n\r\n"
        else:
            self._t_upstream = _clock()
            data = self._forwarder.head_bytes(head, self._target)
            self._replay = [data]
            conn.write(data)
        if self._write_paused:
            conn.pause_reading()
        if req.body:
            # Body that arrived before the connection was ready was parked in req.body.
            body, req.body = req.body, []
            for chunk in body:
                self._send_body(chunk)
        if req.complete and head.chunked and not ended:
            self._send_upstream(b"0\r\n\r\n")
        if self._read_paused:
            self._resume(_PAUSE_BUFFER)

    def _send_body(self, data: bytes) -> None:
        if self._upstream is None:
            req = self._active
            assert req is not None
            req.body.append(data)
            if sum(map(len, req.body)) > _MAX_EARLY_BODY:
                self._pause(_PAUSE_BUFFER)
            return
        if self._active is not None and self._active.head.chunked:
            self._send_upstream(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            self._send_upstream(data)

    def _send_upstream(self, data: bytes) -> None:
        self.bytes_in += len(data)
        replay = self._replay
        if replay is not None:
            if sum(map(len, replay)) + len(data) <= _MAX_REPLAY:
                replay.append(data)
            else:
                self._replay = None
        upstream = self._upstream
        if upstream is not None:
            upstream.write(data)

    # -------------------------------------------------------- upstream callbacks
    def on_response_head(self, head: ResponseHead) -> None:
        req = self._active
        if req is None:
            return
        client_version = req.head.version
        if head.status < 200:
            if head.status == 101:
                self._on_switching(req, head)
            elif head.status == 100:
                pass  # Guard already answered the client's Expect itself (see _activate)
            elif client_version == b"1.1":
                self._write(informational_bytes(head))
            return
        svc = self._svc
        if svc is not None and svc.retry_on and self._retry(str(head.status)):
            return  # this answer is dropped with its connection; another server's comes
        self._response_started = True
        self._status = head.status
        self._resp_keep_alive = head.keep_alive
        self._clear_deadline()
        if not req.complete:
            # An early answer: the rest of the request body would be left unread.
            self._keep_alive = False
        delimited = head.chunked or head.until_close
        if delimited and client_version == b"1.1":
            self._out_chunked = True
        elif delimited:
            self._keep_alive = False  # an HTTP/1.0 client reads to the close
        data = response_head_bytes(
            head,
            chunked=self._out_chunked,
            keep_alive=self._keep_alive,
            client_version=client_version,
            via=self._ctx.via,
        )
        if self._cold_ms >= 0:
            # The request waited for a wake: say how long (ms), before the head's end.
            data = b"%bx-guard-cold-start: %d\r\n\r\n" % (data[:-2], self._cold_ms)
        self._write(data)
        self._replay = None

    def on_plain_response(self, head: ResponseHead, body: bytes) -> None:
        """A whole plain response (see guard.http.plain): what on_response_head, _body and
        _complete do, in one call and one write."""
        req = self._active
        if req is None or self._svc is not None or self._cold_ms >= 0 or self._closed:
            # (retries and cold-start headers are the general path's business)
            upstream = self._upstream
            CORK.depth += 1
            try:
                self.on_response_head(head)
                if self._upstream is upstream:
                    if body:
                        self.on_response_body(body)
                    self.on_response_complete()
            finally:
                CORK.release()
            return
        self._response_started = True
        self._status = head.status
        self._resp_keep_alive = head.keep_alive
        self._clear_deadline()
        if not req.complete:
            self._keep_alive = False  # an early answer: the rest of the body goes unread
        self.bytes_out += len(body)
        raw = head.raw
        if raw is not None and self._ctx.via is None and len(body) <= _JOIN_MAX:
            self._write(plain_response_bytes(head, raw, body, self._keep_alive, req.head.version))
        else:
            self._write(
                response_head_bytes(
                    head,
                    chunked=False,
                    keep_alive=self._keep_alive,
                    client_version=req.head.version,
                    via=self._ctx.via,
                )
            )
            if body:
                self._write(body)  # (a large body is not copied: two sends)
        self._replay = None
        self.on_response_complete()

    def _on_switching(self, req: _Request, head: ResponseHead) -> None:
        error: str | None
        if req.head.upgrade is None:
            error = "unexpected protocol switch"
        else:
            why = websocket.handshake_error(req.head, head, frames=self._ws_max is not None)
            error = None if why is None else f"invalid websocket handshake: {why}"
        if error is not None:
            self.on_upstream_error(self._upstream, UpstreamProtocolError(error))
            return
        self._status = 101  # the switch itself follows in on_upstream_switched
        self._clear_deadline()
        self._write(switching_bytes(head, via=self._ctx.via))

    def on_upstream_switched(self, conn: UpstreamConnection, tail: bytes) -> None:
        """The backend switched protocols: both sockets leave HTTP for a WebSocket relay."""
        req, pool, stats, client = self._active, self._pool, self._stats, self.transport
        if (
            conn is not self._upstream
            or self._status != 101
            or req is None
            or pool is None
            or stats is None
            or client is None
            or self._closed
        ):
            conn.close()
            return
        ctx = self._ctx
        self.flush_writes()  # the 101 reaches the client before anything relayed
        backend = conn.detach()
        # As HTTP the exchange is over: the relay counts bytes as they pass, and releases
        # the backend (in_flight, the container's activity) when the connection ends.
        now = time.perf_counter()
        upstream = now - self._t_upstream if self._t_upstream else 0.0
        stats.observe(101, req.head.method, "", now - self._t_start, upstream)
        log = self._log_fields(req, pool) if ctx.access_log is not None else None
        handover = websocket.Handover(
            ctx, self._route_name, stats, pool, self._container, self._ws_max, log
        )
        # This protocol is done; its socket and its place in the listener go to the relay.
        self._upstream = None
        self._pool = None
        self._container = None
        self._active = None
        self._pending.clear()
        self._closed = True
        self.transport = None
        self._clear_deadline()
        ctx.connections.discard(self)
        ctx.sweeper.discard(self)
        websocket.start_relay(
            handover,
            client,
            backend,
            client_tail=self._parser.upgraded_tail or b"",
            backend_tail=tail,
            client_write_paused=self._write_paused,
            backend_write_paused=bool(self._read_paused & _PAUSE_UPSTREAM),
        )

    def on_response_body(self, data: bytes) -> None:
        if self._closed or self.transport is None:
            return
        self.bytes_out += len(data)
        if self._out_chunked:
            self._out(b"%x\r\n" % len(data))
            self._out(data)
            self._out(b"\r\n")
        else:
            self._out(data)

    def on_response_complete(self) -> None:
        if self._out_chunked:
            self._write(b"0\r\n\r\n")
        req = self._active
        upstream = self._upstream
        self._upstream = None
        pool = self._pool
        if upstream is not None and pool is not None:
            if req is not None and req.complete and self._resp_keep_alive:
                pool.release(upstream)
            else:
                upstream.close()
        self._end_exchange(self._status, "")

    def on_upstream_error(self, conn: UpstreamConnection | None, error: GuardError) -> None:
        if conn is not self._upstream:
            return
        self._fail_exchange(error)

    def on_upstream_lost(self, conn: UpstreamConnection) -> None:
        if conn is not self._upstream or self._active is None:
            return
        self._upstream = None
        if (
            not self._response_started
            and conn.uses > 1
            and not self._retried
            and self._active.head.method in _IDEMPOTENT
            and self._replay is not None
            and self._pool is not None
        ):
            # A keep-alive connection the backend closed as we reused it: send the request
            # again, once, on a fresh connection. Only idempotent methods: the backend may
            # have acted on a POST before closing (RFC 9110 9.2.2).
            self._retried = True
            self._pool.connect(self._on_connected)
            return
        if self._response_started:
            self._fail_exchange(UpstreamProtocolError("upstream closed mid-response"))
        elif not self._retry("reset"):
            self._fail_exchange(
                UpstreamProtocolError("upstream closed the connection without a response")
            )

    def on_upstream_pause(self) -> None:
        self._pause(_PAUSE_UPSTREAM)

    def on_upstream_resume(self) -> None:
        self._resume(_PAUSE_UPSTREAM)

    # ----------------------------------------------------------------- endings
    def _fail_exchange(self, err: GuardError, *, close: bool = False) -> None:
        """The active exchange cannot complete normally."""
        if self._active is None:
            return
        self._abort_upstream()
        if self._response_started:
            # Too late for an error answer: cut the connection so the client sees a
            # truncated body, never a silently short one.
            self._finish_stats(0, err.code)
            self._active = None
            self._close()
            return
        if close or (self._active is not None and not self._active.complete):
            self._keep_alive = False
        self._answer_error(err)

    def _answer_error(self, err: GuardError) -> None:
        req = self._active
        if req is not None and not req.complete and req.head.has_body:
            # The body was not read: the connection cannot carry another request.
            self._keep_alive = False
        head_only = req is not None and req.head.method == b"HEAD"
        extra = b""
        if isinstance(err, RateLimited):
            extra = b"retry-after: %b\r\n" % retry_after_header(err.retry_after)
        self._write(
            error_response_bytes(
                err.status,
                err.code,
                err.message,
                keep_alive=self._keep_alive,
                head_only=head_only,
                extra=extra,
            )
        )
        self._end_exchange(err.status, err.code)

    def _end_exchange(self, status: int, error: str) -> None:
        self._finish_stats(status, error)
        self._active = None
        self._requests_served += 1
        if self._closed:
            return
        if not self._keep_alive:
            # This response said (or will say, by closing) that nothing follows it: not
            # even the answer to a broken request behind it (httptools rejects bytes after
            # "Connection: close", h11 does not; either way the client sees the close).
            self._close()
            return
        err = self._error_after_active
        if err is not None and not self._pending:
            # (whole pipelined requests that arrived before the broken one went first)
            self._error_after_active = None
            self._respond_error_and_close(err)
            return
        if self._pending:
            nxt = self._pending.popleft()
            if not self._pending:
                self._resume(_PAUSE_PIPELINE)
            self._activate(nxt)
            return
        if self._parsing is not None:
            # The next request's head is still arriving.
            self._set_deadline(_T_HEADER, self._ctx.request_header_timeout)
        else:
            self._set_deadline(_T_IDLE, self._ctx.idle_timeout)
            if self._parser.upgraded_tail is not None:
                # The upgrade was refused (by the backend or by Guard): the connection
                # stays HTTP, and what the client sent after it is parsed as such.
                self._resume(_PAUSE_STOPPED)
                tail = self._parser.resume()
                if tail:
                    self.data_received(tail)

    def _finish_stats(self, status: int, error: str) -> None:
        if self._hold is not None:
            self._cancel_hold()  # an exchange that ends while held leaves the queue
        pool = self._pool
        svc = self._svc
        if svc is not None:
            self._svc = None
            self._connected()
            svc.active -= 1
            if self._attempts:
                svc.retrying -= 1
                self._attempts = 0
            if pool is not None and svc.outlier is not None:
                failed = status >= 500 or error.startswith("upstream")
                svc.report(pool.backend, not failed)
        if pool is not None:
            pool.backend.in_flight -= 1
            self._pool = None
            container = self._container
            if container is not None:
                container.done()
        self._container = None
        req = self._active
        if req is None:
            return
        now = _clock()
        duration = now - self._t_start
        upstream = now - self._t_upstream if self._t_upstream else 0.0
        stats = self._stats
        if stats is None:
            stats = self._stats = self._ctx.route_stats("")  # matched no route
        stats.bytes_in += self.bytes_in
        stats.bytes_out += self.bytes_out
        stats.observe(status or self._status, req.head.method, error, duration, upstream)
        log = self._ctx.access_log
        if log is not None:
            log.write(
                {
                    "ts": time.time(),
                    **self._log_fields(req, pool),
                    "status": status or None,
                    "error": error or None,
                    "bytes_in": self.bytes_in,
                    "bytes_out": self.bytes_out,
                    "duration": round(duration, 6),
                    "upstream_duration": round(upstream, 6) if self._t_upstream else None,
                }
            )

    def _log_fields(self, req: _Request, pool: UpstreamPool | None) -> dict[str, object]:
        """What an access-log line says of the request (a WebSocket's line adds the rest
        when it ends)."""
        head = req.head
        return {
            "listener": self._ctx.name,
            "client": self._client_ip,
            "method": head.method.decode("latin-1"),
            "host": head.host.decode("latin-1"),
            "path": head.path.decode("latin-1"),
            "route": self._route_name or None,
            "service": self._service_name or None,
            "backend": pool.backend.name if pool is not None else None,
        }

    def _abort_upstream(self) -> None:
        upstream = self._upstream
        self._upstream = None
        if upstream is not None:
            upstream.close()

    def _respond_error_and_close(self, err: GuardError) -> None:
        self._keep_alive = False
        self._write(error_response_bytes(err.status, err.code, err.message, keep_alive=False))
        self._close()

    def _write(self, data: bytes) -> None:
        if not self._closed:
            self._out(data)
