"""Unit parsers: every accepted spelling, and the mistakes they must refuse."""

from __future__ import annotations

from typing import Any

import pytest

from guard.config.units import (
    parse_address,
    parse_cpu,
    parse_duration,
    parse_percent,
    parse_port_range,
    parse_size,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        ("0s", 0.0),
        ("1m30s", 90.0),
        (" 10s ", 10.0),
    ],
)
def test_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", [30, 0, 1.5, "30", "-5s", "5 s", "5d", "s", "", True, None, [1]])
def test_duration_rejects(bad: Any) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_bare_number_duration_message_suggests_unit() -> None:
    with pytest.raises(ValueError, match="needs a unit"):
        parse_duration(30)


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (512, 512),
        ("512", 512),
        ("16KiB", 16 * 1024),
        ("8MiB", 8 * 1024**2),
        ("1GiB", 1024**3),
        ("10KB", 10_000),
        ("3MB", 3_000_000),
        ("2GB", 2_000_000_000),
        ("1.5KiB", 1536),
        ("0", 0),
        (1024.0, 1024),
    ],
)
def test_size(value: Any, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize("bad", [-1, "-5KiB", "5XB", "KiB", 1.5, True, None, "1 2"])
def test_size_rejects(bad: Any) -> None:
    with pytest.raises(ValueError):
        parse_size(bad)


@pytest.mark.parametrize(("value", "cores"), [(0.5, 0.5), (2, 2.0), ("0.5", 0.5), ("500m", 0.5)])
def test_cpu(value: Any, cores: float) -> None:
    assert parse_cpu(value) == pytest.approx(cores)


@pytest.mark.parametrize("bad", [0, "0m", -1, "half", True, "5x"])
def test_cpu_rejects(bad: Any) -> None:
    with pytest.raises(ValueError):
        parse_cpu(bad)


@pytest.mark.parametrize(
    ("text", "fraction"), [("70%", 0.7), ("20%", 0.2), ("0%", 0.0), ("100%", 1.0), ("12.5%", 0.125)]
)
def test_percent(text: str, fraction: float) -> None:
    assert parse_percent(text) == pytest.approx(fraction)


@pytest.mark.parametrize("bad", ["101%", "70", 0.7, 70, "-5%", "%"])
def test_percent_rejects(bad: Any) -> None:
    with pytest.raises(ValueError):
        parse_percent(bad)


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("[::1]:80", ("::1", 80)),
        ("name:9000", ("name", 9000)),
        ("Backend.Local:9000", ("backend.local", 9000)),
        (":8080", ("0.0.0.0", 8080)),
        ("0.0.0.0:1", ("0.0.0.0", 1)),
        ("[2001:db8::1]:65535", ("2001:db8::1", 65535)),
    ],
)
def test_address(text: str, address: tuple[str, int]) -> None:
    assert parse_address(text) == address


@pytest.mark.parametrize(
    "bad",
    [
        "127.0.0.1",
        "127.0.0.1:0",
        "127.0.0.1:65536",
        "::1:80",
        "[::1]80",
        "[zz]:80",
        "a b:80",
        "host:http",
        8080,
        None,
    ],
)
def test_address_rejects(bad: Any) -> None:
    with pytest.raises(ValueError):
        parse_address(bad)


def test_port_range() -> None:
    assert parse_port_range("20000-20999") == (20000, 20999)
    assert parse_port_range("80 - 80") == (80, 80)
    for bad in ("20999-20000", "0-10", "20000", 20000, "1-70000"):
        with pytest.raises(ValueError):
            parse_port_range(bad)
