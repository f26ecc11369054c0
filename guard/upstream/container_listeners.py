"""The tcp/udp listener of one API container's tcp or udp port, in one worker.

The control plane gives the port (from ``containers.tcp_ports``); every worker binds it on
the containers listener's host (SO_REUSEPORT when there are several workers) and relays
what arrives with the ordinary tcp/udp proxies to the container's service, whose one key
is the container's id (``ContainerService.fixed_key``): a connection or datagram session
to a sleeping container is held while it wakes, as on any container service.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from guard.config.model import RouteConfig
from guard.proxy.tcp_proxy import TcpClientProtocol, TcpListenerContext, TcpRoute, TcpRouting
from guard.proxy.udp_proxy import UdpListenerContext, UdpListenerProtocol, udp_socket
from guard.routing.containers import ROUTE_NAME

if TYPE_CHECKING:
    from guard.runtime.worker import Worker
    from guard.upstream.api_containers import PortService
    from guard.upstream.container_service import ContainerService

log = logging.getLogger("guard.worker")

UDP_IDLE = 30.0
UDP_MAX_SESSIONS = 10_000


class ContainerListener:
    """One bound port; ``stop()`` refuses new work, ``close()`` also ends open work."""

    def __init__(
        self,
        worker: Worker,
        host: str,
        protocol: str,
        port: int,
        svc: ContainerService | PortService,
    ) -> None:
        self.worker = worker
        self.host = host
        self.protocol = protocol
        self.port = port
        self.svc = svc
        self.server: asyncio.Server | None = None
        self.tcp: TcpListenerContext | None = None
        self.udp: UdpListenerContext | None = None
        self.stopped = False
        self._task = worker.loop.create_task(self._open())

    async def _open(self) -> None:
        w = self.worker
        services = {self.svc.name: self.svc}
        name = f"{ROUTE_NAME}:{self.port}"
        try:
            if self.protocol == "tcp":
                self.tcp = TcpListenerContext(
                    name,
                    TcpRouting(TcpRoute(ROUTE_NAME, self.svc.name), None),
                    services,  # type: ignore[arg-type]
                    loop=w.loop,
                    sweeper=w.sweeper,
                    resolver=w.resolver,
                    connect_timeout=w.config.http.timeouts.connect,
                    idle=None,
                )
                tctx = self.tcp
                self.server = await w.loop.create_server(
                    lambda: TcpClientProtocol(tctx),
                    self.host,
                    self.port,
                    reuse_address=True,
                    # every worker binds the port, and so does the Guard that replaces
                    # this one on a binary restart, while this one still holds it
                    reuse_port=True,
                )
            else:
                route = RouteConfig(name=ROUTE_NAME, listener=name, service=self.svc.name)
                self.udp = UdpListenerContext(
                    name,
                    route,
                    services,  # type: ignore[arg-type]
                    loop=w.loop,
                    sweeper=w.sweeper,
                    resolver=w.resolver,
                    idle=UDP_IDLE,
                    max_sessions=UDP_MAX_SESSIONS,
                )
                uctx = self.udp
                sock = udp_socket(self.host, self.port, reuse_port=True)  # (as above)
                await w.loop.create_datagram_endpoint(lambda: UdpListenerProtocol(uctx), sock=sock)
        except OSError as e:
            log.error(
                "container %s: cannot listen on %s %s:%d: %s",
                self.svc.name,
                self.protocol,
                self.host,
                self.port,
                e,
            )
            return
        if self.stopped:
            self.stop()

    def stop(self) -> None:
        """No new connections or sessions; open ones go on (a delete drains them)."""
        self.stopped = True
        if self.server is not None:
            self.server.close()

    def close(self) -> None:
        self.stop()
        self._task.cancel()
        if self.tcp is not None:
            for conn in list(self.tcp.connections):
                conn.abort()
        if self.udp is not None:
            self.udp.close()
