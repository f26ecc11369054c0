"""TLS termination for https listeners: certificates chosen by SNI, reloaded from disk.

Every configured certificate gets its own server ``ssl.SSLContext`` (TLS 1.2 and up, AEAD
ciphers, ALPN ``http/1.1``). A handshake starts on the default certificate's context (the
first listed); the SNI callback then swaps in the context of the certificate for the name
the client asked for: exact names first, then the longest wildcard, else the default.

``CertificateStore.refresh`` stats the files at most every ``CHECK_INTERVAL`` seconds, on
accept, and rebuilds the contexts of the certificates that changed. A connection keeps the
context its handshake used, so a reload never touches a running connection; a new file
that does not load is logged once and the certificate loaded before keeps serving.

``TlsTermination`` runs each accepted connection's handshake itself (``loop.start_tls``,
``http.timeouts.tls_handshake``) rather than passing ``ssl=`` to ``create_server``: that
way a failed or timed-out handshake is seen, and counted, instead of vanishing inside the
event loop. The HTTP protocol gets ``connection_made`` once the handshake is done, as with
``ssl=``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from guard.config.model import CertificateConfig
from guard.routing.sni import SniTable

__all__ = [
    "ALPN",
    "CHECK_INTERVAL",
    "HANDSHAKE_ERROR_REASONS",
    "TLS12_CIPHERS",
    "CertificateStore",
    "TlsSetupError",
    "TlsTermination",
    "certificate_names",
    "server_context",
]

log = logging.getLogger("guard.tls")

ALPN = ("http/1.1",)
# Mozilla's "intermediate" TLS 1.2 suites: forward secret (ECDHE) and AEAD only. No DHE:
# the ssl module loads no DH parameters, so those suites could never be chosen anyway.
# TLS 1.3 suites are not set by this string; OpenSSL's defaults there are all AEAD.
TLS12_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    )
)
# Seconds between two looks at the certificate files: a stat of each, so cheap, but not
# worth doing on every accept of a busy listener.
CHECK_INTERVAL = 2.0
HANDSHAKE_ERROR_REASONS = ("timeout", "error", "closed")


class TlsSetupError(OSError):
    """A certificate or key that does not load at start. An OSError so that ``guard run``
    reports it like any other reason it cannot listen, and exits."""


def server_context(cert: os.PathLike[str] | str, key: os.PathLike[str] | str) -> ssl.SSLContext:
    """A server context for one certificate chain (leaf first) and its key."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.set_alpn_protocols(list(ALPN))
    # Compression is off by default in OpenSSL 3 (CRIME); say so anyway. Client-initiated
    # renegotiation is a CPU-exhaustion vector and HTTP/1.1 here never needs it.
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.load_cert_chain(cert, key)
    return ctx


def certificate_names(cert: os.PathLike[str] | str) -> tuple[str, ...]:
    """The DNS names of the leaf certificate in the PEM file ``cert``: its subjectAltName
    DNS entries, or its subject CN when it has none (older certificates)."""
    # The ssl module decodes only peer certificates publicly; this helper runs the same
    # decoder on a PEM file (CPython's own tests use it) and spares a runtime dependency.
    info = ssl._ssl._test_decode_cert(os.fspath(cert))  # type: ignore[attr-defined]
    names = [value for kind, value in info.get("subjectAltName", ()) if kind == "DNS"]
    if not names:
        names = [v for rdn in info.get("subject", ()) for k, v in rdn if k == "commonName"]
    return tuple(n.lower().rstrip(".") for n in names)


Signature = tuple[int, ...]


def _signature(cfg: CertificateConfig) -> Signature:
    """What tells a changed file: inode (an atomic rename), size and mtime, of both files."""
    c, k = os.stat(cfg.cert), os.stat(cfg.key)
    return (c.st_ino, c.st_size, c.st_mtime_ns, k.st_ino, k.st_size, k.st_mtime_ns)


def _reason(e: BaseException) -> str:
    return str(e.strerror or e) if isinstance(e, OSError) else str(e)


@dataclass(slots=True)
class _Certificate:
    config: CertificateConfig
    context: ssl.SSLContext
    names: tuple[str, ...]
    signature: Signature  # of the files the context was built from
    rejected: Signature | None = None  # a change that did not load: not retried until next


class CertificateStore:
    """The certificates of one https listener, chosen by SNI, reloaded when files change.

    ``where`` names the config key in messages (``guard.yaml: listeners.web.tls``).
    """

    def __init__(
        self,
        certificates: Sequence[CertificateConfig],
        *,
        where: str = "tls",
        check_interval: float = CHECK_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not certificates:
            raise TlsSetupError(f"{where}: no certificates")
        self.where = where
        self.reloads = 0
        self._interval = check_interval
        self._clock = clock
        self._certs: list[_Certificate] = []
        for i, cfg in enumerate(certificates):
            try:
                self._certs.append(self._load(cfg))
            except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
                raise TlsSetupError(
                    f"{where}.certificates[{i}]: {cfg.cert}, {cfg.key}: {_reason(e)}"
                ) from e
        self._table = self._index()
        self._next_check = clock() + check_interval

    def _load(self, cfg: CertificateConfig) -> _Certificate:
        # Stat first: a write landing after it shows up as a change at the next check.
        signature = _signature(cfg)
        ctx = server_context(cfg.cert, cfg.key)
        ctx.sni_callback = self._on_sni  # on every context: any of them may start a handshake
        return _Certificate(cfg, ctx, certificate_names(cfg.cert), signature)

    def _index(self) -> SniTable[ssl.SSLContext]:
        return SniTable((name, c.context) for c in self._certs for name in c.names)

    @property
    def context(self) -> ssl.SSLContext:
        """The context a handshake starts with: the default (first) certificate's."""
        return self._certs[0].context

    def choose(self, server_name: str | None) -> ssl.SSLContext:
        """The context for ``server_name`` (lowercase): exact, wildcard, else the default."""
        if server_name:
            found = self._table.lookup(server_name)
            if found is not None:
                return found
        return self._certs[0].context

    def _on_sni(self, sslobj: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        # Called by OpenSSL mid-handshake, with or without SNI. Must not raise: an exception
        # here fails the handshake with an internal-error alert. The name arrives as an
        # ASCII A-label (the ssl module decodes it so), only the case may vary.
        chosen = self.choose(server_name.lower().rstrip(".") if server_name else None)
        if sslobj.context is not chosen:
            sslobj.context = chosen

    def refresh(self) -> bool:
        """Reload the certificates whose files changed, looking at most every
        ``check_interval`` seconds. True when one was reloaded."""
        now = self._clock()
        if now < self._next_check:
            return False
        self._next_check = now + self._interval
        changed = False
        for i, cert in enumerate(self._certs):
            cfg = cert.config
            error: OSError | ValueError
            try:
                signature = _signature(cfg)
            except OSError as e:  # mid-replace, or removed: serve what is loaded
                signature, error = (), e
            else:
                if signature in (cert.signature, cert.rejected):
                    continue
                try:
                    self._certs[i] = self._load(cfg)
                except (OSError, ValueError) as e:
                    error = e
                else:
                    changed = True
                    log.info("%s: reloaded certificate %s", self.where, cfg.cert)
                    continue
            if signature != cert.rejected:
                cert.rejected = signature
                log.error(
                    "%s.certificates[%d]: %s, %s: %s; keeping the certificate loaded before",
                    self.where,
                    i,
                    cfg.cert,
                    cfg.key,
                    _reason(error),
                )
        if changed:
            self._table = self._index()
            self.reloads += 1
        return changed


class TlsTermination:
    """One https listener's TLS side: accepts, handshakes, then hands the connection to a
    protocol made by ``app_factory`` (the HTTP proxy) over the TLS transport."""

    def __init__(
        self,
        name: str,
        store: CertificateStore,
        app_factory: Callable[[], asyncio.Protocol],
        *,
        loop: asyncio.AbstractEventLoop,
        handshake_timeout: float,
    ) -> None:
        self.name = name
        self.store = store
        self.app_factory = app_factory
        self.loop = loop
        self.handshake_timeout = handshake_timeout
        self.handshake_errors = dict.fromkeys(HANDSHAKE_ERROR_REASONS, 0)

    def protocol(self) -> asyncio.Protocol:
        """The protocol factory for ``create_server``."""
        return _Accepted(self)

    def accepted(self, transport: asyncio.Transport) -> None:
        """Start the handshake now, inside ``connection_made``.

        Not in a task: uvloop starts reading right after ``connection_made`` returns, even
        when it paused reading, so a ClientHello already in the socket would be read into
        the plain protocol (and lost) before a task's first step could call start_tls.
        Started here, start_tls has swapped in its TLS protocol by then, which takes any
        early bytes into its buffer. Stepping the coroutine by hand also spares a Task
        per connection."""
        self.store.refresh()
        app = self.app_factory()
        handshake = self.loop.start_tls(
            transport,
            app,
            self.store.context,
            server_side=True,
            ssl_handshake_timeout=self.handshake_timeout,
        )
        self._step(handshake, app, transport)

    def _step(
        self,
        handshake: Coroutine[Any, Any, asyncio.Transport | None],
        app: asyncio.Protocol,
        transport: asyncio.Transport,
    ) -> None:
        """Run ``handshake`` to its next wait, as a Task would; resume when that is done."""
        try:
            waiting = handshake.send(None)
        except StopIteration as done:
            self._established(done.value, app, transport)
        except Exception as e:
            self._failed(transport, e)
        else:
            if waiting is None:  # a bare yield: run again on the next loop turn
                self.loop.call_soon(self._step, handshake, app, transport)
                return
            waiting._asyncio_future_blocking = False  # the Task protocol: "I saw it"
            waiting.add_done_callback(lambda _: self._step(handshake, app, transport))

    def _established(
        self, tls: asyncio.Transport | None, app: asyncio.Protocol, transport: asyncio.Transport
    ) -> None:
        # No TLS details means the client left mid-handshake (an EOF or reset can end the
        # wait without an error). Then the app never gets connection_lost either.
        if tls is None or tls.get_extra_info("ssl_object") is None:
            self._failed(transport, None)
            return
        app.connection_made(tls)

    def _failed(self, transport: asyncio.Transport, e: BaseException | None) -> None:
        if isinstance(e, ConnectionAbortedError):  # how both loops report the timeout
            reason = "timeout"
        elif isinstance(e, ssl.SSLError):  # version, cipher, alerts, bytes that are not TLS
            reason = "error"
        else:  # reset, EOF, or closed before a full handshake (port checks do this)
            reason = "closed"
        self.handshake_errors[reason] += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "%s: tls handshake from %s failed (%s): %r",
                self.name,
                transport.get_extra_info("peername"),
                reason,
                e,
            )
        if not transport.is_closing():
            transport.abort()


class _Accepted(asyncio.Protocol):
    """A connection just accepted on an https listener: its handshake starts at once, and
    start_tls replaces this protocol on the transport."""

    __slots__ = ("_tls",)

    def __init__(self, tls: TlsTermination) -> None:
        self._tls = tls

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._tls.accepted(transport)  # type: ignore[arg-type]
