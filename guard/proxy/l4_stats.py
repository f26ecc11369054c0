"""Counters of one tcp or udp listener, kept as plain ints for the metrics exporter.

One object per listener (not per connection): the relay adds to it from its callbacks,
which is one attribute increment on the hot path and no allocation.
"""

from __future__ import annotations


class L4Stats:
    __slots__ = (
        "bytes_in",
        "bytes_out",
        "connect_failed",
        "connections",
        "datagrams_dropped",
        "datagrams_rate_limited",
        "idle_timeouts",
        "no_backend",
        "no_route",
        "not_tls",
        "packets_in",
        "packets_out",
        "proxy_rejected",
        "rate_limited",
        "sessions",
        "sessions_evicted",
        "sessions_expired",
        "unknown_sni",
        "wake_failed",
    )

    def __init__(self) -> None:
        self.connections = 0  # tcp connections accepted / udp sessions opened
        self.bytes_in = 0  # client -> backend
        self.bytes_out = 0  # backend -> client
        self.packets_in = 0  # udp datagrams client -> backend
        self.packets_out = 0  # udp datagrams backend -> client
        self.idle_timeouts = 0
        self.connect_failed = 0
        self.no_backend = 0  # the service had no available backend
        self.no_route = 0  # no route on the listener (e.g. emptied by a reload)
        self.not_tls = 0  # SNI port: not TLS, no SNI, or a hello too large / too slow
        self.unknown_sni = 0  # SNI port: a name no route asks for
        self.proxy_rejected = 0  # PROXY header malformed or from an untrusted peer
        self.sessions = 0  # udp sessions open now
        self.sessions_expired = 0
        self.sessions_evicted = 0  # dropped as the oldest when the table was full
        self.datagrams_dropped = 0  # queue full while connecting, oversize, or no backend
        # the route's rate_limit refused a tcp connection / a udp session's first datagram
        self.rate_limited = 0
        self.datagrams_rate_limited = 0  # udp: dropped on an open session by rate_limit
        # held for a container service's wake, then refused: start failed, wake_timeout,
        # queue full, instance limit
        self.wake_failed = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}
