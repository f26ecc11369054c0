"""Readiness probes (``guard.control.probe``) against real listeners on 127.0.0.1."""

from __future__ import annotations

import asyncio
import functools
import socket
from collections.abc import Awaitable, Callable

import pytest

from guard.config.model import ReadyProbe
from guard.control.probe import InstanceExited, NotReadyInTime, wait_ready
from guard.drivers.base import InstanceHandle
from tests.helpers import free_port


async def _listen(port: int = 0) -> asyncio.Server:
    return await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", port)


def _port(server: asyncio.Server) -> int:
    return server.sockets[0].getsockname()[1]


def _handle(port: int, **ports: int) -> InstanceHandle:
    return InstanceHandle("i", "process", "127.0.0.1", port, ports=tuple(ports.items()))


def run(test: Callable[[], Awaitable[None]]) -> Callable[[], None]:
    """A plain test that runs the coroutine ``test`` on a fresh loop."""

    @functools.wraps(test)
    def plain() -> None:
        asyncio.run(test())

    return plain


def _never() -> asyncio.Future[str]:
    return asyncio.get_running_loop().create_future()


@run
async def test_every_named_port_must_accept_before_ready() -> None:
    main = await _listen()
    db_port = free_port()
    handle = _handle(_port(main), db=db_port, admin=free_port())
    probe = ReadyProbe(tcp=True, ports=("db",))  # admin (say udp) is not probed
    waiting = asyncio.create_task(wait_ready(handle, probe, timeout=10, exited=_never()))
    await asyncio.sleep(0.3)
    assert not waiting.done(), "ready while the db port refused connections"
    db = await _listen(db_port)
    await asyncio.wait_for(waiting, 2)
    main.close()
    db.close()


@run
async def test_the_main_port_is_probed_first_then_the_others() -> None:
    main_port = free_port()
    db = await _listen()
    handle = _handle(main_port, db=_port(db))
    probe = ReadyProbe(http=None, tcp=True, ports=("db",))
    waiting = asyncio.create_task(wait_ready(handle, probe, timeout=10, exited=_never()))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    main = await _listen(main_port)
    await asyncio.wait_for(waiting, 2)
    main.close()
    db.close()


@run
async def test_a_probe_with_nothing_set_is_a_tcp_connect() -> None:
    with pytest.raises(NotReadyInTime):
        await wait_ready(_handle(free_port()), ReadyProbe(), timeout=0.2, exited=_never())


@run
async def test_delay_alone_then_the_named_ports() -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    await wait_ready(_handle(free_port()), ReadyProbe(delay=0.2), timeout=5, exited=_never())
    assert loop.time() - start >= 0.2
    with pytest.raises(NotReadyInTime):
        # A udp main port (delay) with a tcp port that never listens.
        await wait_ready(
            _handle(free_port(), db=free_port()),
            ReadyProbe(delay=0.05, ports=("db",)),
            timeout=0.3,
            exited=_never(),
        )


@run
async def test_an_exit_while_waiting_for_a_named_port_fails_at_once() -> None:
    main = await _listen()
    exited = _never()
    handle = _handle(_port(main), db=free_port())
    waiting = asyncio.create_task(
        wait_ready(handle, ReadyProbe(tcp=True, ports=("db",)), timeout=30, exited=exited)
    )
    await asyncio.sleep(0.1)
    exited.set_result("exited with status 3")
    with pytest.raises(InstanceExited, match="status 3"):
        await asyncio.wait_for(waiting, 2)
    main.close()


def test_free_port_is_not_listening() -> None:
    # The tests above rely on a fresh free_port() refusing connections.
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", free_port()), 0.5):
        pass
