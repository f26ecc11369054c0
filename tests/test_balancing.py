from __future__ import annotations

import random
from collections import Counter

import pytest

from guard.balancing import (
    Backend,
    ConsistentHash,
    HashRing,
    LeastRequest,
    PowerOfTwoChoices,
    RoundRobin,
    hash64,
    make_balancer,
)
from guard.balancing.balancers import cookie_value

NO_HEADERS: list[tuple[bytes, bytes]] = []


def make(n: int) -> list[Backend]:
    return [Backend(f"10.0.0.{i}", 8080) for i in range(1, n + 1)]


def names(picks: list[Backend | None]) -> Counter[str]:
    return Counter(b.name if b else "None" for b in picks)


# ----------------------------------------------------------------------------- Backend


def test_backend_defaults_and_repr() -> None:
    b = Backend("10.0.0.1", 80)
    assert (b.name, b.in_flight, b.available) == ("10.0.0.1:80", 0, True)
    assert Backend("::1", 80).name == "[::1]:80"
    assert "10.0.0.1:80" in repr(b)
    with pytest.raises(AttributeError):
        b.other = 1  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------- round robin


def test_round_robin_exactly_even() -> None:
    backends = make(3)
    rr = RoundRobin(backends)
    picks = [rr.pick(NO_HEADERS, "1.2.3.4", b"/") for _ in range(300)]
    assert names(picks) == {b.name: 100 for b in backends}
    assert picks[:6] == backends + backends  # strict rotation


def test_round_robin_skips_unavailable_and_none_when_all_down() -> None:
    backends = make(3)
    rr = RoundRobin(backends)
    backends[1].available = False
    picks = [rr.pick(NO_HEADERS, "", b"/") for _ in range(100)]
    assert backends[1] not in picks
    assert set(picks) == {backends[0], backends[2]}
    for b in backends:
        b.available = False
    assert rr.pick(NO_HEADERS, "", b"/") is None
    assert RoundRobin([]).pick(NO_HEADERS, "", b"/") is None


def test_round_robin_set_backends() -> None:
    rr = RoundRobin(make(2))
    new = make(4)
    rr.set_backends(new)
    assert rr.backends == tuple(new)
    assert set(rr.pick(NO_HEADERS, "", b"/") for _ in range(4)) == set(new)


# ------------------------------------------------------------------------- least request


def test_least_request_prefers_idle() -> None:
    backends = make(3)
    backends[0].in_flight = 5
    backends[1].in_flight = 0
    backends[2].in_flight = 3
    lr = LeastRequest(backends)
    assert all(lr.pick(NO_HEADERS, "", b"/") is backends[1] for _ in range(20))


def test_least_request_spreads_equal_load() -> None:
    backends = make(3)
    lr = LeastRequest(backends)
    picks = [lr.pick(NO_HEADERS, "", b"/") for _ in range(300)]
    assert names(picks) == {b.name: 100 for b in backends}
    for b in backends:
        b.in_flight = 7
    picks = [lr.pick(NO_HEADERS, "", b"/") for _ in range(300)]
    assert names(picks) == {b.name: 100 for b in backends}


def test_least_request_ties_spread_among_least_loaded_only() -> None:
    backends = make(3)
    backends[2].in_flight = 5
    lr = LeastRequest(backends)
    picks = [lr.pick(NO_HEADERS, "", b"/") for _ in range(100)]
    assert names(picks) == {backends[0].name: 50, backends[1].name: 50}


def test_least_request_tracks_in_flight_as_proxy_would() -> None:
    backends = make(3)
    lr = LeastRequest(backends)
    for _ in range(30):
        b = lr.pick(NO_HEADERS, "", b"/")
        assert b is not None
        b.in_flight += 1  # requests that never finish
    assert [b.in_flight for b in backends] == [10, 10, 10]


def test_least_request_skips_unavailable() -> None:
    backends = make(3)
    backends[0].available = False
    backends[1].in_flight = 4
    backends[2].in_flight = 9
    lr = LeastRequest(backends)
    assert lr.pick(NO_HEADERS, "", b"/") is backends[1]
    for b in backends:
        b.available = False
    assert lr.pick(NO_HEADERS, "", b"/") is None


# ---------------------------------------------------------------------------------- p2c


def test_p2c_never_picks_most_loaded_when_others_idle() -> None:
    backends = make(3)
    backends[2].in_flight = 10
    p2c = PowerOfTwoChoices(backends, random.Random(1))
    picks = [p2c.pick(NO_HEADERS, "", b"/") for _ in range(1000)]
    assert backends[2] not in picks
    counts = names(picks)
    assert counts[backends[0].name] > 300 and counts[backends[1].name] > 300


def test_p2c_favours_less_loaded() -> None:
    rng = random.Random(42)
    backends = make(5)
    p2c = PowerOfTwoChoices(backends, random.Random(7))
    by_rank: Counter[int] = Counter()
    for _ in range(5000):
        loads = rng.sample(range(100), 5)  # distinct random loads
        for b, load in zip(backends, loads, strict=True):
            b.in_flight = load
        pick = p2c.pick(NO_HEADERS, "", b"/")
        assert pick is not None
        by_rank[sorted(loads).index(pick.in_flight)] += 1
    # With two distinct choices out of 5 the least loaded wins 2/5 of the time and the
    # most loaded never: strictly decreasing with load rank.
    assert by_rank[4] == 0
    assert by_rank[0] > by_rank[1] > by_rank[2] > by_rank[3]
    assert by_rank[0] / 5000 == pytest.approx(0.4, abs=0.03)


def test_p2c_distinct_choices_and_unavailable() -> None:
    backends = make(2)
    backends[0].in_flight = 3
    p2c = PowerOfTwoChoices(backends, random.Random(0))
    # Two distinct choices out of two: the less loaded always wins.
    assert all(p2c.pick(NO_HEADERS, "", b"/") is backends[1] for _ in range(50))
    backends[1].available = False
    assert all(p2c.pick(NO_HEADERS, "", b"/") is backends[0] for _ in range(50))
    backends[0].available = False
    assert p2c.pick(NO_HEADERS, "", b"/") is None


def test_p2c_finds_the_only_survivor() -> None:
    backends = make(10)
    for b in backends[:-1]:
        b.available = False
    p2c = PowerOfTwoChoices(backends, random.Random(3))
    assert all(p2c.pick(NO_HEADERS, "", b"/") is backends[-1] for _ in range(100))
    one = make(1)
    assert PowerOfTwoChoices(one).pick(NO_HEADERS, "", b"/") is one[0]
    assert PowerOfTwoChoices([]).pick(NO_HEADERS, "", b"/") is None


# --------------------------------------------------------------------------------- hash


def test_hash64_is_stable() -> None:
    # Fixed value: the ring must be identical in every process and across restarts.
    assert hash64(b"abc") == hash64(b"abc")
    assert hash64(b"abc") != hash64(b"abd")
    assert hash64(b"10.0.0.1:8080#0") == int.from_bytes(
        __import__("hashlib").blake2b(b"10.0.0.1:8080#0", digest_size=8).digest(), "big"
    )


def test_hash_header_same_key_same_backend() -> None:
    ch = ConsistentHash("header:X-User", make(5))
    chosen = {}
    for user in range(200):
        headers = [(b"host", b"a"), (b"x-user", str(user).encode())]
        first = ch.pick(headers, "1.1.1.1", b"/")
        assert all(ch.pick(headers, "2.2.2.2", b"/other") is first for _ in range(5))
        chosen[user] = first
    assert len(set(chosen.values())) == 5  # keys spread over every backend


def test_hash_cookie_parsing() -> None:
    ch = ConsistentHash("cookie:sid", make(5))
    expected = ch.pick_key(b"xyz")
    assert ch.pick([(b"cookie", b"a=1; sid=xyz")], "", b"/") is expected
    assert ch.pick([(b"cookie", b"sid=xyz")], "", b"/") is expected
    assert ch.pick([(b"cookie", b"a=1"), (b"cookie", b"sid=xyz; b=2")], "", b"/") is expected
    assert ch.pick([(b"cookie", b'sid="xyz"')], "", b"/") is expected
    assert cookie_value(b"a=1; sid=xyz", b"sid=") == b"xyz"
    assert cookie_value(b"xsid=nope; sid=yes;c=3", b"sid=") == b"yes"
    assert cookie_value(b"xsid=nope", b"sid=") is None
    assert cookie_value(b"a=1;sid=;b=2", b"sid=") == b""


def test_hash_client_ip_and_path() -> None:
    by_ip = ConsistentHash("client_ip", make(5))
    assert by_ip.pick(NO_HEADERS, "203.0.113.9", b"/a") is by_ip.pick_key(b"203.0.113.9")
    assert by_ip.pick(NO_HEADERS, "203.0.113.9", b"/b") is by_ip.pick_key(b"203.0.113.9")
    by_path = ConsistentHash("path", make(5))
    assert by_path.pick(NO_HEADERS, "1.1.1.1", b"/img.png") is by_path.pick_key(b"/img.png")
    # Query string ignored: the same object hits the same cache backend.
    assert by_path.pick(NO_HEADERS, "2.2.2.2", b"/img.png?v=2") is by_path.pick_key(b"/img.png")


def test_hash_missing_key_falls_back_to_round_robin() -> None:
    backends = make(3)
    ch = ConsistentHash("header:x-user", backends)
    picks = [ch.pick([(b"host", b"a")], "", b"/") for _ in range(300)]
    assert names(picks) == {b.name: 100 for b in backends}
    # An empty value is treated as missing rather than pinning all of them to one backend.
    picks = [ch.pick([(b"x-user", b"")], "", b"/") for _ in range(3)]
    assert set(picks) == set(backends)
    cookie = ConsistentHash("cookie:sid", backends)
    picks = [cookie.pick([(b"cookie", b"other=1")], "", b"/") for _ in range(3)]
    assert set(picks) == set(backends)


def test_hash_unavailable_backend_skipped_others_stay() -> None:
    backends = make(5)
    ch = ConsistentHash("header:k", backends)
    keys = [str(i).encode() for i in range(2000)]
    before = {k: ch.pick_key(k) for k in keys}
    down = backends[2]
    down.available = False
    after = {k: ch.pick_key(k) for k in keys}
    for k in keys:
        if before[k] is down:
            assert after[k] is not down and after[k] is not None
            # Next distinct available backend clockwise = where removal would send it.
        else:
            assert after[k] is before[k]
    removed = ConsistentHash("header:k", [b for b in backends if b is not down])
    assert all(removed.pick_key(k) is after[k] for k in keys)
    down.available = True
    assert all(ch.pick_key(k) is before[k] for k in keys)


def test_hash_all_unavailable_returns_none() -> None:
    backends = make(4)
    for b in backends:
        b.available = False
    for balance in ("round_robin", "least_request", "p2c"):
        assert make_balancer(balance, None, backends).pick(NO_HEADERS, "", b"/") is None
    ch = make_balancer("hash", "client_ip", backends)
    assert ch.pick(NO_HEADERS, "1.2.3.4", b"/") is None  # key present: ring walk
    assert ch.pick(NO_HEADERS, "", b"/") is None  # key missing: fallback
    assert ConsistentHash("path", []).pick(NO_HEADERS, "", b"/x") is None


KEYS = [f"user-{i}".encode() for i in range(10_000)]


def test_consistent_hash_add_moves_about_one_over_n_plus_one() -> None:
    n = 10
    backends = make(n + 1)
    ch = ConsistentHash("path", backends[:n])
    before = [ch.pick_key(k) for k in KEYS]
    ch.set_backends(backends)  # add one
    after = [ch.pick_key(k) for k in KEYS]
    moved = [(a, b) for a, b in zip(before, after, strict=True) if a is not b]
    # Only keys that now belong to the new server move, never between old servers.
    assert all(b is backends[n] for _, b in moved)
    fraction = len(moved) / len(KEYS)
    assert fraction == pytest.approx(1 / (n + 1), rel=0.35), fraction


def test_consistent_hash_remove_moves_only_that_servers_keys() -> None:
    n = 10
    backends = make(n)
    ch = ConsistentHash("path", backends)
    before = [ch.pick_key(k) for k in KEYS]
    gone = backends[4]
    ch.set_backends([b for b in backends if b is not gone])
    after = [ch.pick_key(k) for k in KEYS]
    moved = 0
    for a, b in zip(before, after, strict=True):
        if a is gone:
            assert b is not gone
            moved += 1
        else:
            assert b is a
    assert moved / len(KEYS) == pytest.approx(1 / n, rel=0.35)


def test_ring_balance_and_stability() -> None:
    backends = make(10)
    ring = HashRing(backends)
    assert len(ring) == 1600
    share = Counter(ring.owner(hash64(k)) for k in KEYS)
    assert all(600 < c < 1400 for c in share.values()), share
    # Rebuilt from equal names (new objects, another order): same assignment.
    clones = list(reversed(make(10)))
    ring2 = HashRing(clones)
    assert all(ring.owner(hash64(k)).name == ring2.owner(hash64(k)).name for k in KEYS[:500])


# ------------------------------------------------------------------------------ factory


def test_make_balancer() -> None:
    backends = make(3)
    assert isinstance(make_balancer("round_robin", None, backends), RoundRobin)
    assert isinstance(make_balancer("least_request", None, backends), LeastRequest)
    assert isinstance(make_balancer("p2c", None, backends, random.Random(1)), PowerOfTwoChoices)
    ch = make_balancer("hash", "cookie:sid", backends)
    assert isinstance(ch, ConsistentHash)
    assert ch.backends == tuple(backends)
    with pytest.raises(ValueError):
        make_balancer("random", None, backends)
    with pytest.raises(ValueError):
        make_balancer("hash", None, backends)
    for bad in ("header:", "cookie", "query:x", "client_ip:x", "nonsense"):
        with pytest.raises(ValueError):
            make_balancer("hash", bad, backends)
