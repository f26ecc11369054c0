from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Coroutine
from types import SimpleNamespace
from typing import Any

import aiodns
import pytest

from guard.errors import UpstreamConnectFailed
from guard.upstream.resolver import ResolveError, Resolver

LOCALHOST = {"127.0.0.1", "::1"}


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 10))


class FakeTimer:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def dns_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Count real aiodns lookups by wrapping DNSResolver.getaddrinfo."""
    calls: list[str] = []
    original = aiodns.DNSResolver.getaddrinfo

    def counting(self: aiodns.DNSResolver, host: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(host)
        return original(self, host, *args, **kwargs)

    monkeypatch.setattr(aiodns.DNSResolver, "getaddrinfo", counting)
    return calls


def make_resolver(**kwargs: Any) -> Resolver:
    return Resolver(timeout=1.0, tries=1, **kwargs)


def test_ip_literals_pass_through_without_lookup(dns_calls: list[str]) -> None:
    r = make_resolver()
    # cached() works without a loop: literals never need one.
    assert r.cached("10.1.2.3") == ["10.1.2.3"]
    assert r.cached("2001:db8::1") == ["2001:db8::1"]
    assert r.cached("[2001:db8::1]") == ["2001:db8::1"]
    assert r.cached("example.test") is None

    async def main() -> None:
        assert await r.resolve("10.1.2.3") == ["10.1.2.3"]
        assert await r.resolve("::1") == ["::1"]
        await r.close()

    run(main())
    assert dns_calls == []
    assert r.lookups == 0


def test_localhost_via_hosts_file_is_cached(dns_calls: list[str]) -> None:
    r = make_resolver()

    async def main() -> None:
        first = await r.resolve("localhost")
        assert first and set(first) <= LOCALHOST
        if "127.0.0.1" in first:
            assert first[0] == "127.0.0.1"  # IPv4 preferred
        assert len(set(first)) == len(first)  # no duplicates
        assert r.cached("localhost") == first
        assert await r.resolve("localhost") == first
        await r.close()

    run(main())
    assert dns_calls == ["localhost"]


def test_ttl_expiry_resolves_again(dns_calls: list[str]) -> None:
    timer = FakeTimer()
    r = make_resolver(timer=timer, default_ttl=30.0)

    async def main() -> None:
        await r.resolve("localhost")
        # Hosts-file answers carry no TTL (pycares reports 0): the default applies.
        timer.now += 29.0
        assert r.cached("localhost") is not None
        await r.resolve("localhost")
        assert len(dns_calls) == 1
        timer.now += 2.0
        assert r.cached("localhost") is None
        await r.resolve("localhost")
        assert len(dns_calls) == 2
        await r.close()

    run(main())


def test_ttl_is_clamped(dns_calls: list[str]) -> None:
    timer = FakeTimer()
    r = make_resolver(timer=timer, default_ttl=0.1, min_ttl=1.0)

    async def main() -> None:
        await r.resolve("localhost")
        timer.now += 0.5  # under the 1 s floor: still cached
        assert r.cached("localhost") is not None
        timer.now += 0.6
        assert r.cached("localhost") is None
        await r.close()

    run(main())


def test_parse_orders_v4_first_and_uses_smallest_ttl() -> None:
    r = make_resolver(max_ttl=300.0)

    def node(family: int, addr: bytes, ttl: int) -> SimpleNamespace:
        return SimpleNamespace(family=family, addr=(addr, 0), ttl=ttl)

    nodes = [
        node(socket.AF_INET6, b"2001:db8::1", 60),
        node(socket.AF_INET, b"192.0.2.1", 120),
        node(socket.AF_INET, b"192.0.2.2", 45),
        node(socket.AF_INET, b"192.0.2.1", 120),
    ]
    assert r._parse(nodes) == (["192.0.2.1", "192.0.2.2", "2001:db8::1"], 45.0)
    assert r._parse([node(socket.AF_INET, b"192.0.2.1", 86400)])[1] == 300.0  # cap
    assert r._parse([node(socket.AF_INET, b"192.0.2.1", 0)])[1] == 30.0  # no TTL: default


def test_single_flight(dns_calls: list[str]) -> None:
    r = make_resolver()

    async def main() -> None:
        results = await asyncio.gather(*(r.resolve("localhost") for _ in range(10)))
        assert all(res == results[0] for res in results)
        await r.close()

    run(main())
    assert dns_calls == ["localhost"]


def test_cancelled_waiter_does_not_cancel_shared_lookup(dns_calls: list[str]) -> None:
    r = make_resolver()

    async def main() -> None:
        impatient = asyncio.ensure_future(r.resolve("localhost"))
        patient = asyncio.ensure_future(r.resolve("localhost"))
        await asyncio.sleep(0)
        impatient.cancel()
        assert set(await patient) <= LOCALHOST
        with pytest.raises(asyncio.CancelledError):
            await impatient
        await r.close()

    run(main())
    assert dns_calls == ["localhost"]


def test_unresolvable_name_raises_promptly(dns_calls: list[str]) -> None:
    r = make_resolver()

    async def main() -> None:
        started = time.monotonic()
        with pytest.raises(ResolveError) as info:
            await r.resolve("nonexistent.invalid")
        assert time.monotonic() - started < 5.0
        err = info.value
        assert err.host == "nonexistent.invalid" and err.reason
        assert isinstance(err, UpstreamConnectFailed)  # a 502 if nobody handles it
        assert "nonexistent.invalid" in str(err)
        # Failures are not cached and do not leave a stuck in-flight entry.
        assert r.cached("nonexistent.invalid") is None
        with pytest.raises(ResolveError):
            await r.resolve("nonexistent.invalid")
        await r.close()

    run(main())
    assert dns_calls == ["nonexistent.invalid", "nonexistent.invalid"]


def test_single_flight_failure_reaches_every_waiter(dns_calls: list[str]) -> None:
    r = make_resolver()

    async def main() -> None:
        results = await asyncio.gather(
            *(r.resolve("nonexistent.invalid") for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(e, ResolveError) for e in results)
        await r.close()

    run(main())
    assert len(dns_calls) == 1


def test_resolver_usable_from_a_new_loop(dns_calls: list[str]) -> None:
    timer = FakeTimer()
    r = make_resolver(timer=timer)
    run(r.resolve("localhost"))
    timer.now += 1000
    assert set(run(r.resolve("localhost"))) <= LOCALHOST  # rebinds to the new loop
    assert len(dns_calls) == 2


def test_pick_address_rotates() -> None:
    r = make_resolver()
    a = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    b = ["10.0.1.1", "10.0.1.2"]
    picks_a: list[str] = []
    picks_b: list[str] = []
    pick: Callable[[list[str]], str] = r.pick_address
    for _ in range(6):
        picks_a.append(pick(a))
        picks_b.append(pick(b))  # interleaved hosts keep independent rotation
    assert picks_a == a + a
    assert picks_b == b + b + b
    assert pick(["10.9.9.9"]) == "10.9.9.9"
    with pytest.raises(ValueError):
        pick([])


def test_resolve_error_pickles() -> None:
    import pickle

    err = pickle.loads(pickle.dumps(ResolveError("h.example", "timeout")))
    assert (err.host, err.reason) == ("h.example", "timeout")
