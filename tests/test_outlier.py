"""Passive outlier ejection, the pure rules."""

from __future__ import annotations

from guard.balancing.outlier import OutlierDetector
from guard.config.model import OutlierConfig


def detector(n: int = 4, errors: int = 3, base: float = 10.0) -> OutlierDetector:
    return OutlierDetector(
        OutlierConfig(consecutive_errors=errors, base_ejection=base), [f"s{i}" for i in range(n)]
    )


def test_consecutive_failures_eject_and_a_success_resets_the_run() -> None:
    d = detector()
    assert d.failure("s0", 0.0, 4) is None
    assert d.failure("s0", 0.0, 4) is None
    d.success("s0")
    assert d.failure("s0", 0.0, 4) is None
    assert d.failure("s0", 0.0, 4) is None
    assert d.failure("s0", 1.0, 4) == 11.0  # third in a row: out for base x 1
    assert d.ejected() == ["s0"]
    assert d.failure("s0", 2.0, 3) is None  # already out: not counted again


def test_ejection_grows_then_decays() -> None:
    d = detector()
    for _ in range(3):
        d.failure("s0", 0.0, 4)
    assert not d.restore("s0", 9.9)
    assert d.restore("s0", 10.0)
    until = None
    for _ in range(3):
        until = d.failure("s0", 20.0, 4)
    assert until == 40.0  # second ejection: 2 x base
    assert d.restore("s0", 40.0)
    d.success("s0")  # served well after coming back: the multiplier decays
    for _ in range(3):
        until = d.failure("s0", 50.0, 4)
    assert until == 70.0
    assert d.total_ejections("s0") == 3


def test_never_the_last_server_nor_more_than_half() -> None:
    d = detector(n=4)
    for name in ("s0", "s1"):
        for _ in range(3):
            d.failure(name, 0.0, 4)
    assert sorted(d.ejected()) == ["s0", "s1"]
    for _ in range(3):
        assert d.failure("s2", 0.0, 2) is None  # a third of four would pass half
    solo = detector(n=1)
    for _ in range(5):
        assert solo.failure("s0", 0.0, 1) is None
