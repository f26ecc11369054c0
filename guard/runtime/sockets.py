"""Listening sockets: bound once, then handed on rather than bound again.

A Guard's listening sockets outlive the processes that accept on them, the way nginx
(``NGINX`` fds), HAProxy (``-x``) and systemd (``LISTEN_FDS``) pass them on:

- with ``workers > 1`` the supervisor binds them, one SO_REUSEPORT socket per listener
  address and worker slot, and each worker inherits its slot's descriptors; a worker that
  dies leaves its socket, and the connections waiting in its accept queue, to the next;
- on a binary restart (SIGUSR2) the running Guard passes all of them, the admin address
  too, to the Guard it starts, which takes those whose address its config still has,
  binds the new ones and closes the rest.

Closing a listening socket resets every connection waiting in its accept queue; handing it
on never does: the socket lives while any process holds a descriptor of it.

The descriptors travel as ``pass_fds`` and are described in ``GUARD_LISTEN_FDS`` (JSON):
per socket its name (a listener, or ``admin``), kind (stream/dgram), the configured host and
port, its slot and its descriptor number. The receiver checks that each descriptor really is
such a socket on that port before using it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field

from guard.config.model import GuardConfig
from guard.proxy.udp_proxy import udp_socket

log = logging.getLogger("guard.sockets")

ENV = "GUARD_LISTEN_FDS"
ADMIN = "admin"  # the name of the admin address's sockets (listener names are their own)
BACKLOG = 4096


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a socket listens: what an inherited socket is matched by (not its name, so a
    renamed listener on the same address keeps its socket)."""

    kind: str  # "stream" (http, https, tcp, admin) | "dgram" (udp)
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.kind} {host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Inherited:
    """One entry of ``GUARD_LISTEN_FDS``: a descriptor this process was given."""

    name: str
    endpoint: Endpoint
    slot: int
    fd: int


@dataclass(slots=True)
class Bound:
    name: str  # listener name, or ADMIN
    endpoint: Endpoint
    slot: int  # which worker's share it is (0 with one worker)
    sock: socket.socket
    inherited: bool = False


@dataclass(slots=True)
class Account:
    """What opening the sockets did, for the handover log line."""

    inherited: list[str] = field(default_factory=list)
    bound: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        parts = [
            f"{what}: {', '.join(names)}"
            for what, names in (
                ("inherited", self.inherited),
                ("bound", self.bound),
                ("closed", self.closed),
            )
            if names
        ]
        return "; ".join(parts) or "no sockets"


def endpoints(config: GuardConfig) -> list[tuple[str, Endpoint]]:
    """Every address the config listens on, listeners then the admin address."""
    out = [
        (name, Endpoint("dgram" if lc.protocol == "udp" else "stream", lc.host, lc.port))
        for name, lc in config.listeners.items()
    ]
    if config.admin is not None:
        out.append((ADMIN, Endpoint("stream", config.admin.host, config.admin.port)))
    return out


class ListenSockets:
    """The listening sockets of one Guard process, by name."""

    def __init__(self, bound: list[Bound]) -> None:
        self.bound = bound

    def of(self, name: str) -> list[socket.socket]:
        return [b.sock for b in self.bound if b.name == name]

    def describe(self) -> tuple[str, list[int]]:
        """The ``GUARD_LISTEN_FDS`` value and the descriptors to pass with it."""
        live = [b for b in self.bound if b.sock.fileno() >= 0]
        doc = [
            {
                "name": b.name,
                "kind": b.endpoint.kind,
                "host": b.endpoint.host,
                "port": b.endpoint.port,
                "slot": b.slot,
                "fd": b.sock.fileno(),
            }
            for b in live
        ]
        return json.dumps(doc, separators=(",", ":")), [b.sock.fileno() for b in live]

    def for_worker(self, worker: int, workers: int) -> ListenSockets:
        """Worker ``worker``'s share: its slot of every listener (the admin address stays
        with the supervisor). Slots come from whoever bound the sockets first, so after a
        restart with another worker count a worker may get several slots, or share one."""
        mine: list[Bound] = []
        names = dict.fromkeys(b.name for b in self.bound if b.name != ADMIN)
        for name in names:
            slots = sorted({b.slot for b in self.bound if b.name == name})
            take = {s for i, s in enumerate(slots) if i % workers == worker}
            if not take:
                take = {slots[worker % len(slots)]}
            mine += [b for b in self.bound if b.name == name and b.slot in take]
        return ListenSockets(mine)

    def close(self) -> None:
        for b in self.bound:
            b.sock.close()


def read_env(environ: Mapping[str, str] = os.environ) -> list[Inherited]:
    """The descriptors ``GUARD_LISTEN_FDS`` describes (none when it is unset or garbled)."""
    text = environ.get(ENV)
    if not text:
        return []
    try:
        return [
            Inherited(
                str(e["name"]),
                Endpoint(str(e["kind"]), str(e["host"]), int(e["port"])),
                int(e["slot"]),
                int(e["fd"]),
            )
            for e in json.loads(text)
        ]
    except (ValueError, KeyError, TypeError) as e:
        log.error("ignoring %s: not a socket list (%s)", ENV, e)
        return []


def _adopt(given: Inherited) -> socket.socket | None:
    """The inherited descriptor as a socket, if it is what its entry says it is."""
    fd, ep = given.fd, given.endpoint
    try:
        sock = socket.socket(fileno=fd)
    except OSError as e:
        log.warning("inherited fd %d (%s) is not a socket: %s; closed", fd, given.name, e)
        with contextlib.suppress(OSError):
            os.close(fd)
        return None
    want = socket.SOCK_DGRAM if ep.kind == "dgram" else socket.SOCK_STREAM
    try:
        port = sock.getsockname()[1]
        listening = want == socket.SOCK_DGRAM or sock.getsockopt(
            socket.SOL_SOCKET, socket.SO_ACCEPTCONN
        )
    except (OSError, IndexError, TypeError):
        port, listening = None, False
    if sock.type != want or port != ep.port or not listening:
        log.warning("inherited fd %d is not the socket %s (%s): closed", fd, ep, given.name)
        sock.close()
        return None
    sock.setblocking(False)
    return sock


def _bind_stream(host: str, port: int, *, reuse_port: bool) -> list[socket.socket]:
    """One listening socket per address ``host`` resolves to, as asyncio's create_server."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    out: list[socket.socket] = []
    seen: set[tuple[int, object]] = set()
    try:
        for family, type_, proto, _, addr in infos:
            if (family, addr) in seen:
                continue
            seen.add((family, addr))
            sock = socket.socket(family, type_, proto)
            out.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(addr)
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except BaseException:
        for sock in out:
            sock.close()
        raise
    return out


def bind(name: str, ep: Endpoint, slot: int, *, reuse_port: bool) -> list[Bound]:
    if ep.kind == "dgram":
        socks = [udp_socket(ep.host, ep.port, reuse_port=reuse_port)]
    else:
        socks = _bind_stream(ep.host, ep.port, reuse_port=reuse_port)
    return [Bound(name, ep, slot, s) for s in socks]


def open_sockets(
    config: GuardConfig,
    *,
    slots: int,
    reuse_port: bool,
    inherited: list[Inherited],
    admin: bool = True,
) -> tuple[ListenSockets, Account]:
    """The sockets ``config`` listens on: inherited ones whose address it still has, the
    rest bound fresh (``slots`` of each, SO_REUSEPORT when several processes accept);
    inherited ones it no longer has are closed. On an error nothing stays open."""
    account = Account()
    by_endpoint: dict[Endpoint, list[Inherited]] = {}
    for given in inherited:
        by_endpoint.setdefault(given.endpoint, []).append(given)
    bound: list[Bound] = []
    try:
        for name, ep in endpoints(config):
            if name == ADMIN and not admin:
                continue
            taken = [
                Bound(name, ep, given.slot, sock, inherited=True)
                for given in by_endpoint.pop(ep, [])
                if (sock := _adopt(given)) is not None
            ]
            if taken:
                bound += taken
                fds = ",".join(str(b.sock.fileno()) for b in taken)
                account.inherited.append(f"{name} {ep} (fd {fds})")
                continue
            for slot in range(1 if name == ADMIN else slots):  # one process serves admin
                bound += bind(name, ep, slot, reuse_port=reuse_port)
            account.bound.append(f"{name} {ep}")
    except BaseException:
        for b in bound:
            b.sock.close()
        _close_unused(by_endpoint, account)
        raise
    _close_unused(by_endpoint, account)
    return ListenSockets(bound), account


def _close_unused(left: dict[Endpoint, list[Inherited]], account: Account) -> None:
    for ep, entries in left.items():
        for given in entries:
            with contextlib.suppress(OSError):
                os.close(given.fd)
        account.closed.append(f"{entries[0].name} {ep}")
    left.clear()
