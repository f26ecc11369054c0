"""Parsers for the units config files are written in.

Each parser takes the raw YAML value and returns a plain number (seconds, bytes, cores,
fraction) or an address tuple. Problems raise ``ValueError`` with a short message meant for
a human; the loader adds the file and key path around it.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h))+")
_DURATION_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)")
_SIZE_FACTORS = {
    "": 1,
    "b": 1,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
}

_CPU = re.compile(r"(\d+(?:\.\d+)?)(m?)")
_PERCENT = re.compile(r"(\d+(?:\.\d+)?)\s*%")
_HOSTNAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?")
_PORT_RANGE = re.compile(r"(\d+)\s*-\s*(\d+)")


def _is_number(v: Any) -> bool:
    # bool is an int subclass; `true` where a number belongs is always a mistake.
    return isinstance(v, int | float) and not isinstance(v, bool)


def parse_duration(v: Any) -> float:
    """``"250ms"``, ``"30s"``, ``"5m"``, ``"1h"``, ``"1m30s"`` -> seconds."""
    if _is_number(v):
        # The contract forbids bare numbers: "30" could mean seconds or milliseconds.
        raise ValueError(f"duration needs a unit, e.g. '{v}s' or '{v}ms'")
    if not isinstance(v, str):
        raise ValueError("must be a duration like 250ms, 30s, 5m or 1h")
    text = v.strip()
    if text.startswith("-"):
        raise ValueError("duration must not be negative")
    if not _DURATION_WHOLE.fullmatch(text):
        raise ValueError(f"invalid duration {v!r}: use a number and ms, s, m or h, e.g. 30s")
    return sum(float(n) * _DURATION_SECONDS[u] for n, u in _DURATION_PART.findall(text))


def parse_size(v: Any) -> int:
    """``512``, ``"16KiB"``, ``"8MiB"``, ``"1GiB"``, ``"10MB"`` -> bytes."""
    if _is_number(v):
        if v < 0:
            raise ValueError("size must not be negative")
        if isinstance(v, float) and not v.is_integer():
            raise ValueError("size must be a whole number of bytes")
        return int(v)
    if not isinstance(v, str):
        raise ValueError("must be a size like 512, 16KiB, 8MiB or 1GiB")
    text = v.strip()
    if text.startswith("-"):
        raise ValueError("size must not be negative")
    m = _SIZE.fullmatch(text.lower())
    if not m or m.group(2) not in _SIZE_FACTORS:
        raise ValueError(f"invalid size {v!r}: use bytes or KiB, MiB, GiB (KB, MB, GB)")
    return round(float(m.group(1)) * _SIZE_FACTORS[m.group(2)])


def parse_cpu(v: Any) -> float:
    """``0.5``, ``"0.5"``, ``"500m"`` (millicores) -> cores; must be above zero."""
    if _is_number(v):
        cores = float(v)
    elif isinstance(v, str) and (m := _CPU.fullmatch(v.strip())):
        cores = float(m.group(1)) / (1000.0 if m.group(2) else 1.0)
    else:
        raise ValueError("must be CPU cores like 0.5, or millicores like 500m")
    if cores <= 0:
        raise ValueError("CPU must be greater than 0")
    return cores


def parse_percent(v: Any) -> float:
    """``"70%"`` -> 0.7. Only 0%..100%: every percentage in the contract is a share of a whole."""
    if not isinstance(v, str):
        # A bare 0.7 or 70 is ambiguous; the contract writes percentages with a % sign.
        raise ValueError("must be a percentage like 70%")
    m = _PERCENT.fullmatch(v.strip())
    if not m:
        raise ValueError(f"invalid percentage {v!r}: use a number and %, e.g. 70%")
    value = float(m.group(1))
    if value > 100:
        raise ValueError("percentage must be at most 100%")
    return value / 100.0


def parse_port(v: Any) -> int:
    """A TCP/UDP port, 1..65535, given as an int or a string of digits."""
    if isinstance(v, str) and v.strip().isascii() and v.strip().isdigit():
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool):
        raise ValueError("port must be a number")
    if not 1 <= v <= 65535:
        raise ValueError(f"port {v} is out of range 1-65535")
    return v


def _check_host(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not _HOSTNAME.fullmatch(host):
        raise ValueError(f"invalid host {host!r}")
    return host.lower()


def parse_address(v: Any) -> tuple[str, int]:
    """``"127.0.0.1:8080"``, ``"[::1]:80"``, ``"name:9000"``, ``":8080"`` -> (host, port).

    An empty host means every IPv4 interface (``0.0.0.0``). IPv6 hosts come back without
    brackets.
    """
    if not isinstance(v, str):
        raise ValueError("must be an address like 127.0.0.1:8080")
    text = v.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"invalid address {v!r}: use [IPv6]:PORT")
        try:
            host = str(ipaddress.IPv6Address(host))
        except ValueError:
            raise ValueError(f"invalid IPv6 address {host!r}") from None
        return host, parse_port(port)
    host, sep, port = text.rpartition(":")
    if not sep:
        raise ValueError(f"invalid address {v!r}: needs a port, e.g. {text}:8080")
    if ":" in host:
        raise ValueError(f"invalid address {v!r}: write IPv6 hosts in brackets, e.g. [::1]:80")
    return (_check_host(host) if host else "0.0.0.0"), parse_port(port)


def parse_port_range(v: Any) -> tuple[int, int]:
    """``"20000-20999"`` -> (20000, 20999), inclusive, low <= high."""
    m = _PORT_RANGE.fullmatch(v.strip()) if isinstance(v, str) else None
    if not m:
        raise ValueError("must be a port range like 20000-20999")
    low, high = parse_port(int(m.group(1))), parse_port(int(m.group(2)))
    if low > high:
        raise ValueError(f"port range {v!r} starts above its end")
    return low, high
