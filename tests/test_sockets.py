"""guard.runtime.sockets: binding, handing on and matching listening sockets (in-process,
with duplicated descriptors standing in for the ones a child inherits)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import stat
from pathlib import Path

import pytest
from l4_procs import free_port

from guard.config import load_config
from guard.runtime.sockets import ENV, Endpoint, Inherited, ListenSockets, open_sockets, read_env


def config(tmp_path: Path, listeners: dict[str, tuple[str, int]], admin: int | None = None):  # type: ignore[no-untyped-def]
    doc: dict[str, object] = {
        "listeners": {
            name: {"protocol": proto, "address": f"127.0.0.1:{port}"}
            for name, (proto, port) in listeners.items()
        }
    }
    if admin is not None:
        doc["admin"] = {"address": f"127.0.0.1:{admin}"}
    (tmp_path / "guard.yaml").write_text(json.dumps(doc))
    return load_config(tmp_path / "guard.yaml")


def handed_on(sockets: ListenSockets) -> list[Inherited]:
    """What a child would read from GUARD_LISTEN_FDS, on descriptors of its own."""
    described, _ = sockets.describe()
    return [dataclasses.replace(e, fd=os.dup(e.fd)) for e in read_env({ENV: described})]


def test_inherited_socket_keeps_its_queued_connections(tmp_path: Path) -> None:
    web, dns, gone = free_port(), free_port(socket.SOCK_DGRAM), free_port()
    old_cfg = config(tmp_path, {"web": ("http", web), "dns": ("udp", dns), "old": ("tcp", gone)})
    old, account = open_sockets(old_cfg, slots=1, reuse_port=False, inherited=[])
    assert account.bound and not account.inherited
    # A client connects while the old process still owns the socket, nobody accepts yet.
    client = socket.create_connection(("127.0.0.1", web), timeout=2)
    new_port = free_port()
    new_cfg = config(
        tmp_path, {"renamed": ("http", web), "dns": ("udp", dns), "fresh": ("tcp", new_port)}
    )
    new, account = open_sockets(new_cfg, slots=1, reuse_port=False, inherited=handed_on(old))
    old.close()  # the old process goes away
    try:
        assert [s.split(" (")[0] for s in account.inherited] == [
            f"renamed stream 127.0.0.1:{web}",
            f"dns dgram 127.0.0.1:{dns}",
        ]
        assert account.bound == [f"fresh stream 127.0.0.1:{new_port}"]
        assert account.closed == [f"old stream 127.0.0.1:{gone}"]
        # The connection made before the handover is accepted by the new owner.
        (sock,) = new.of("renamed")
        sock.setblocking(True)
        sock.settimeout(2)
        conn, _ = sock.accept()
        conn.close()
        # The listener that disappeared is closed: its port refuses.
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", gone), timeout=2)
    finally:
        client.close()
        new.close()


def test_a_descriptor_that_is_not_the_described_socket_is_not_used(tmp_path: Path) -> None:
    port = free_port()
    cfg = config(tmp_path, {"web": ("http", port)})
    r, w = os.pipe()
    os.close(w)
    lying = [Inherited("web", Endpoint("stream", "127.0.0.1", port), 0, r)]
    sockets, account = open_sockets(cfg, slots=1, reuse_port=False, inherited=lying)
    try:
        assert account.bound == [f"web stream 127.0.0.1:{port}"] and not account.inherited
        # Closed (the number may be reused by the socket bound instead).
        with contextlib.suppress(OSError):
            assert not stat.S_ISFIFO(os.fstat(r).st_mode)
    finally:
        sockets.close()


def test_worker_slots(tmp_path: Path) -> None:
    cfg = config(tmp_path, {"web": ("http", free_port())}, admin=free_port())
    sockets, _ = open_sockets(cfg, slots=3, reuse_port=True, inherited=[])
    try:
        assert len(sockets.of("web")) == 3 and len(sockets.of("admin")) == 1

        def slots(worker: int, workers: int) -> list[int]:
            return [b.slot for b in sockets.for_worker(worker, workers).bound]

        assert [slots(i, 3) for i in range(3)] == [[0], [1], [2]]
        # Fewer workers than sockets: none is left without an acceptor.
        assert [slots(i, 2) for i in range(2)] == [[0, 2], [1]]
        # More workers than sockets: they share.
        assert [slots(i, 4) for i in range(4)] == [[0], [1], [2], [0]]
    finally:
        sockets.close()


def test_a_bad_env_value_is_ignored() -> None:
    assert read_env({ENV: "[{]"}) == []
    assert read_env({ENV: json.dumps([{"fd": 3}])}) == []
    assert read_env({}) == []
