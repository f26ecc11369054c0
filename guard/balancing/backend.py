"""Runtime state of one upstream server, shared by the proxy, health checks and balancers."""

from __future__ import annotations


class Backend:
    """One upstream server.

    Balancers only read ``in_flight`` and ``available``; the proxy owns ``in_flight``
    (increment before forwarding, decrement when the exchange ends) and health checking /
    outlier ejection own ``available``. Identity (not value) equality is deliberate: two
    entries for the same address are still two slots in a balancer.
    """

    __slots__ = ("available", "host", "in_flight", "name", "port")

    def __init__(
        self,
        host: str,
        port: int,
        name: str | None = None,
        *,
        in_flight: int = 0,
        available: bool = True,
    ) -> None:
        self.host = host
        self.port = port
        # Same spelling as ServerAddress.__str__ so logs, metrics and config agree; the
        # consistent-hash ring is keyed on it, so it must stay stable across reloads.
        if name is None:
            name = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.name = name
        self.in_flight = in_flight
        self.available = available

    def __repr__(self) -> str:
        state = "" if self.available else " unavailable"
        return f"<Backend {self.name} in_flight={self.in_flight}{state}>"
