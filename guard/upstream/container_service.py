"""A container service as the data plane sees it: ready instances, and work held for a wake.

The control plane decides which instances exist; this object only learns, through
``apply_endpoints``, which of them take new work, and routes to those with the service's
balancer (or, for a per-key service, to the one instance of the request's key). When none
can take the work, the caller *holds* it here: the request (or tcp connection, or udp
session) waits in a bounded FIFO while one wake message goes to the control plane, and is
handed a pool the moment an instance is published. Holding costs no task and no timer: the
waiter's own deadline slot in the sweeper enforces ``wake_timeout``.

Per instance it counts in-flight work (``Backend.in_flight``, kept by the proxies) and work
started since the last report; ``report()`` sends both, with the number held, to the control
plane, which sizes the pool and never stops an instance something still uses.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import deque
from typing import Protocol

from guard.balancing import Backend, make_balancer
from guard.config.model import ScaleConfig, ServiceConfig
from guard.control.messages import ControlLink, LoadReport, ServiceEndpoints, WakeFailure
from guard.errors import WAKE_ERRORS, GuardError, InstanceStartFailed, InvalidKey, QueueFull
from guard.proxy.deadlines import DeadlineSweeper
from guard.upstream.pool import UpstreamPool, UpstreamSettings
from guard.upstream.resolver import Resolver

log = logging.getLogger(__name__)

Headers = list[tuple[bytes, bytes]]

# A key names an instance, a directory and a host label: a DNS label's charset and length.
KEY_PATTERN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?")


class Waiter(Protocol):
    """Held work: told once, either where to go or why it cannot."""

    def on_woken(self, pool: UpstreamPool, waited: float) -> None: ...

    def on_wake_failed(self, error: GuardError) -> None: ...


class WakeableService(Protocol):
    """What the proxies use of a service whose instances are woken on demand: a
    ContainerService, or an API container's extra port (api_containers.PortService).
    A route's target says which it is by ``wakeable``."""

    @property
    def name(self) -> str: ...

    @property
    def wake_timeout(self) -> float: ...

    @property
    def config(self) -> ServiceConfig: ...

    def key_of(self, captured: str | None, headers: Headers) -> str | None: ...

    def hold(
        self, waiter: Waiter, key: str | None, headers: Headers, client_ip: str, path: bytes
    ) -> Hold: ...

    def cancel(self, hold: Hold) -> None: ...

    def done(self) -> None: ...


class Hold:
    """One held piece of work; ``cancel()`` it when the client goes away first."""

    __slots__ = ("cancelled", "client_ip", "headers", "key", "path", "port", "since", "waiter")

    def __init__(
        self,
        waiter: Waiter,
        key: str | None,
        headers: Headers,
        client_ip: str,
        path: bytes,
        port: str | None = None,
    ) -> None:
        self.waiter = waiter
        self.key = key
        self.port = port  # an API container's extra port: the pool it gets
        self.headers = headers
        self.client_ip = client_ip
        self.path = path
        self.since = 0.0
        self.cancelled = False


class _Instance:
    __slots__ = ("key", "pool", "ports", "served")

    def __init__(self, pool: UpstreamPool, key: str | None) -> None:
        self.pool = pool
        self.key = key
        self.served = 0  # work started since the last report
        self.ports: dict[str, UpstreamPool] = {}  # an API container's extra ports

    def in_flight(self) -> int:
        n = self.pool.backend.in_flight
        for pool in self.ports.values():
            n += pool.backend.in_flight
        return n

    def close_idle(self) -> None:
        self.pool.close_idle()
        for pool in self.ports.values():
            pool.close_idle()


class ContainerService:
    """The data-plane half of one ``container:`` service in one worker."""

    wakeable = True

    def __init__(
        self,
        config: ServiceConfig,
        settings: UpstreamSettings,
        *,
        loop: asyncio.AbstractEventLoop,
        resolver: Resolver,
        sweeper: DeadlineSweeper,
        link: ControlLink,
        worker_id: int = 0,
    ) -> None:
        self._settings = settings
        self._loop = loop
        self._resolver = resolver
        self._sweeper = sweeper
        self._link = link
        self._worker_id = worker_id
        self._ready: dict[str, _Instance] = {}  # instance id -> taking new work
        self._by_key: dict[str, _Instance] = {}
        self._retiring: dict[str, _Instance] = {}  # unpublished, work still in flight
        self._by_backend: dict[Backend, _Instance] = {}
        self._held: deque[Hold] = deque()
        self._held_count = 0  # _held minus cancelled entries
        self._wake_scheduled = False
        self._seq = 0
        self.rejected = 0  # queue_full answers, for metrics
        self.closed = False
        # The key of work that names none (a tcp/udp listener of one API container): its
        # service is per-key with this one key.
        self.fixed_key: str | None = None
        self.configure(config)

    def configure(self, config: ServiceConfig) -> None:
        """(Re)apply the service's config; instances and held work are kept."""
        self.name = config.name
        self.config = config
        self.scale: ScaleConfig = config.scale or ScaleConfig()
        self.per_key = config.per_key
        self.max_concurrency = self.scale.max_concurrency
        self.queue_limit = self.scale.queue
        self.wake_timeout = self.scale.wake_timeout
        self._key_header: bytes | None = None
        if config.key is not None and config.key.startswith("header:"):
            self._key_header = config.key[len("header:") :].lower().encode("latin-1")
        self.balancer = make_balancer(
            config.balance, config.hash_on, [i.pool.backend for i in self._ready.values()]
        )
        # Whether key_of/pick/hold look at the headers (see Balancer.reads_headers).
        self.reads_headers = self.balancer.reads_headers or self._key_header is not None

    # ------------------------------------------------------------------ routing
    def key_of(self, captured: str | None, headers: Headers) -> str | None:
        """The instance key of a request to a per-key service (None for others)."""
        if not self.per_key:
            return None
        if self.fixed_key is not None:
            return self.fixed_key
        key: str | None = captured
        wanted = self._key_header
        if wanted is not None:
            key = None
            for name, value in headers:
                if name == wanted:
                    key = value.decode("latin-1")
                    break
        if not key:
            raise InvalidKey(f"service {self.name} needs an instance key")
        if not KEY_PATTERN.fullmatch(key):
            raise InvalidKey("instance key must be 1-63 letters, digits, '-' or '_'")
        return key

    def pick(
        self,
        headers: Headers,
        client_ip: str,
        path: bytes,
        key: str | None = None,
        port: str | None = None,
    ) -> UpstreamPool | None:
        """A ready instance with room for one more piece of work, or None (then hold)."""
        if self._held_count and key is None:
            return None  # first come, first served: held work goes before new arrivals
        if self.per_key:
            if key is None:
                key = self.fixed_key
            inst = self._by_key.get(key) if key is not None else None
            if inst is None:
                return None
            if self.max_concurrency and inst.pool.backend.in_flight >= self.max_concurrency:
                return None
        else:
            backend = self.balancer.pick(headers, client_ip, path)
            if backend is None:
                return None
            limit = self.max_concurrency
            if limit and backend.in_flight >= limit:
                backend = min(self.balancer.backends, key=_load)
                if backend.in_flight >= limit:
                    return None
            inst = self._by_backend[backend]
        inst.served += 1
        return inst.pool if port is None else inst.ports.get(port)

    def hold(
        self,
        waiter: Waiter,
        key: str | None,
        headers: Headers,
        client_ip: str,
        path: bytes,
        port: str | None = None,
    ) -> Hold:
        """Queue work that ``pick`` could not place; raises ``QueueFull``."""
        if self._held_count >= self.queue_limit:
            self.rejected += 1
            raise QueueFull(f"service {self.name}: {self.queue_limit} requests already waiting")
        hold = Hold(waiter, key, headers, client_ip, path, port)
        hold.since = self._loop.time()
        self._held.append(hold)
        self._held_count += 1
        if not self._wake_scheduled:
            # One wake message per loop iteration, however many requests arrive in it.
            self._wake_scheduled = True
            self._loop.call_soon(self._send_wakes)
        return hold

    def cancel(self, hold: Hold) -> None:
        """The held work went away (client closed, timed out)."""
        if not hold.cancelled:
            hold.cancelled = True
            self._held_count -= 1
            if self._held and self._held[0] is hold:
                self._held.popleft()
            else:
                self._compact()

    def done(self) -> None:
        """Work on an instance ended: with a concurrency limit, held work may fit now."""
        if self._held_count and self.max_concurrency:
            self._release()

    def _send_wakes(self) -> None:
        self._wake_scheduled = False
        if not self._held_count or self.closed:
            return
        in_flight = sum(i.pool.backend.in_flight for i in self._ready.values())
        if self.per_key:
            for key in {h.key for h in self._held if not h.cancelled}:
                self._link.wake(self.name, key, 1)
        else:
            self._link.wake(self.name, None, self._held_count + in_flight)

    # ------------------------------------------------------- control-plane input
    def apply_endpoints(self, update: ServiceEndpoints) -> None:
        self._seq = update.seq
        fresh: dict[str, _Instance] = {}
        for ep in update.ready:
            inst = self._ready.get(ep.instance) or self._retiring.pop(ep.instance, None)
            if inst is None:
                backend = Backend(ep.host, ep.port, name=ep.instance)
                pool = UpstreamPool(
                    backend,
                    self._settings,
                    loop=self._loop,
                    resolver=self._resolver,
                    sweeper=self._sweeper,
                )
                inst = _Instance(pool, ep.key)
                for name, port in ep.ports:
                    inst.ports[name] = UpstreamPool(
                        Backend(ep.host, port, name=f"{ep.instance}:{name}"),
                        self._settings,
                        loop=self._loop,
                        resolver=self._resolver,
                        sweeper=self._sweeper,
                    )
                self._by_backend[backend] = inst
            fresh[ep.instance] = inst
        for instance_id, inst in self._ready.items():
            if instance_id not in fresh:
                # Draining: no new work; idle keep-alive connections go now, busy ones
                # finish their exchange (they are not returned to the pool afterwards).
                inst.close_idle()
                self._retiring[instance_id] = inst
        self._ready = fresh
        self._by_key = {i.key: i for i in fresh.values() if i.key is not None}
        self.balancer.set_backends([i.pool.backend for i in fresh.values()])
        self._forget_idle_retired()
        self._release()
        self._link.report(self.report())

    def wake_failed(self, failure: WakeFailure) -> None:
        error = WAKE_ERRORS.get(failure.code, InstanceStartFailed)(failure.message)
        if self.per_key:
            failed = [h for h in self._held if h.key == failure.key and not h.cancelled]
        elif not self._ready:
            failed = [h for h in self._held if not h.cancelled]
        else:
            return  # instances are up: held work waits for room on them
        for hold in failed:
            self.cancel(hold)
            hold.waiter.on_wake_failed(error)
        self._compact()

    def _release(self) -> None:
        """Hand held work to instances, oldest first, while they have room."""
        if not self._held_count:
            return
        now = self._loop.time()
        if self.per_key:
            for hold in list(self._held):
                if hold.cancelled:
                    continue
                pool = self.pick(hold.headers, hold.client_ip, hold.path, hold.key, hold.port)
                if pool is not None:
                    self.cancel(hold)
                    hold.waiter.on_woken(pool, now - hold.since)
            self._compact()
            return
        held = self._held
        self._held_count, count = 0, self._held_count  # let pick() place held work
        try:
            while held:
                hold = held[0]
                if hold.cancelled:
                    held.popleft()
                    continue
                pool = self.pick(hold.headers, hold.client_ip, hold.path, None, hold.port)
                if pool is None:
                    break
                held.popleft()
                hold.cancelled = True
                count -= 1
                hold.waiter.on_woken(pool, now - hold.since)
        finally:
            self._held_count += count

    def _compact(self) -> None:
        if len(self._held) > 2 * self._held_count + 16:
            self._held = deque(h for h in self._held if not h.cancelled)

    def _forget_idle_retired(self) -> None:
        for instance_id, inst in list(self._retiring.items()):
            if inst.in_flight() <= 0:
                inst.close_idle()
                del self._retiring[instance_id]
                self._by_backend.pop(inst.pool.backend, None)

    # ------------------------------------------------------------------ reporting
    def report(self) -> LoadReport:
        self._forget_idle_retired()
        in_flight: list[tuple[str, int]] = []
        served: list[tuple[str, int]] = []
        for group in (self._ready, self._retiring):
            for instance_id, inst in group.items():
                in_flight.append((instance_id, inst.in_flight()))
                if inst.served:
                    served.append((instance_id, inst.served))
                    inst.served = 0
        keys: tuple[str, ...] = ()
        if self.per_key and self._held_count:
            keys = tuple({h.key for h in self._held if not h.cancelled and h.key is not None})
        return LoadReport(
            worker=self._worker_id,
            service=self.name,
            seq=self._seq,
            in_flight=tuple(in_flight),
            served=tuple(served),
            held=self._held_count,
            held_keys=keys,
        )

    @property
    def held(self) -> int:
        return self._held_count

    @property
    def pools(self) -> list[UpstreamPool]:
        # Instance ids would be unbounded metric labels: container services report their
        # instances through the control plane's metrics instead.
        return []

    def close(self) -> None:
        self.closed = True
        for inst in (*self._ready.values(), *self._retiring.values()):
            inst.close_idle()


def _load(backend: Backend) -> int:
    return backend.in_flight
