"""PROXY protocol v1 (text) and v2 (binary) headers: a pure core, no IO.

Spec: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt. ``encode_v1`` /
``encode_v2`` build the header Guard prepends on backend connections of a service with
``proxy_protocol: {send: ...}``; ``decode`` reads one at the start of a client stream on
a listener with ``proxy_protocol: {accept: true}``. Decoding is incremental in the only
way that matters: it returns None while the header is incomplete, so the caller can keep
buffering reads; anything that cannot become a valid header raises ProxyProtocolError at
the first byte that proves it.
"""

from __future__ import annotations

import ipaddress
import struct

__all__ = [
    "V1_MAX",
    "V1_PREFIX",
    "V2_MAX",
    "V2_SIGNATURE",
    "ProxyHeader",
    "ProxyProtocolError",
    "decode",
    "encode",
    "encode_v1",
    "encode_v2",
]

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
V1_MAX = 107  # the spec's worst case, CRLF included
# A v2 header carries a 16-bit length; TLVs beyond the addresses are allowed and skipped.
V2_MAX = 16 + 0xFFFF

_V2_PROXY = 0x21  # version 2, command PROXY
_V2_LOCAL = 0x20  # version 2, command LOCAL (health checks from the proxy itself)
_FAMILIES = {0x11: "TCP4", 0x12: "UDP4", 0x21: "TCP6", 0x22: "UDP6", 0x31: "UNIX", 0x32: "UNIX"}
_ADDR_LEN = {"TCP4": 12, "UDP4": 12, "TCP6": 36, "UDP6": 36, "UNIX": 216}


class ProxyProtocolError(ValueError):
    """A malformed PROXY header: the connection must be closed."""


class ProxyHeader:
    """One decoded header. ``family`` is TCP4 | TCP6 | UDP4 | UDP6 | UNIX | UNKNOWN;
    addresses are None unless the family is an inet one and the command is PROXY."""

    __slots__ = (
        "dst_addr",
        "dst_port",
        "family",
        "length",
        "local",
        "src_addr",
        "src_port",
        "version",
    )

    def __init__(
        self,
        version: int,
        family: str,
        src_addr: str | None = None,
        src_port: int | None = None,
        dst_addr: str | None = None,
        dst_port: int | None = None,
        *,
        local: bool = False,
        length: int = 0,
    ) -> None:
        self.version = version
        self.family = family
        self.src_addr = src_addr
        self.src_port = src_port
        self.dst_addr = dst_addr
        self.dst_port = dst_port
        self.local = local  # v2 LOCAL: the sender speaks for itself; keep the real peer
        self.length = length  # bytes the header took on the wire

    def __repr__(self) -> str:
        kind = "LOCAL" if self.local else "PROXY"
        return (
            f"<ProxyHeader v{self.version} {kind} {self.family} "
            f"{self.src_addr}:{self.src_port} -> {self.dst_addr}:{self.dst_port}>"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ProxyHeader):
            return NotImplemented
        return all(getattr(self, k) == getattr(other, k) for k in self.__slots__)

    __hash__ = None  # type: ignore[assignment]


# ------------------------------------------------------------------------------ encode


def _family(
    src: str, dst: str
) -> (
    tuple[
        int,
        ipaddress.IPv4Address | ipaddress.IPv6Address,
        ipaddress.IPv4Address | ipaddress.IPv6Address,
    ]
    | None
):
    """4 or 6 when both addresses are of that family (v4-mapped v6 counts as v4)."""
    try:
        a = ipaddress.ip_address(src.split("%", 1)[0])
        b = ipaddress.ip_address(dst.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
        a = a.ipv4_mapped
    if isinstance(b, ipaddress.IPv6Address) and b.ipv4_mapped is not None:
        b = b.ipv4_mapped
    if a.version != b.version:
        return None  # PROXY headers cannot mix families: sent as UNKNOWN / UNSPEC
    return a.version, a, b


def encode_v1(src: tuple[str, int] | None, dst: tuple[str, int] | None) -> bytes:
    """``PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\\r\\n``; UNKNOWN when an end is not inet."""
    fam = _family(src[0], dst[0]) if src and dst else None
    if fam is None or src is None or dst is None:
        return b"PROXY UNKNOWN\r\n"
    version, a, b = fam
    return b"PROXY TCP%d %s %s %d %d\r\n" % (
        version,
        str(a).encode(),
        str(b).encode(),
        src[1],
        dst[1],
    )


def encode_v2(
    src: tuple[str, int] | None, dst: tuple[str, int] | None, *, local: bool = False
) -> bytes:
    """Binary header: PROXY over TCP4/TCP6, or UNSPEC (LOCAL when ``local``)."""
    fam = None if local or not src or not dst else _family(src[0], dst[0])
    if fam is None or src is None or dst is None:
        cmd = _V2_LOCAL if local else _V2_PROXY
        return V2_SIGNATURE + bytes((cmd, 0x00)) + b"\x00\x00"
    version, a, b = fam
    body = a.packed + b.packed + struct.pack("!HH", src[1], dst[1])
    return (
        V2_SIGNATURE
        + bytes((_V2_PROXY, 0x11 if version == 4 else 0x21))
        + struct.pack("!H", len(body))
        + body
    )


def encode(version: str, src: tuple[str, int] | None, dst: tuple[str, int] | None) -> bytes:
    """``version`` is the service's ``proxy_protocol.send``: "v1" or "v2"."""
    if version == "v1":
        return encode_v1(src, dst)
    if version == "v2":
        return encode_v2(src, dst)
    raise ValueError(f"unknown PROXY protocol version {version!r}")


# ------------------------------------------------------------------------------ decode


def decode(data: bytes | bytearray) -> ProxyHeader | None:
    """The header at the start of ``data`` (``.length`` bytes of it), or None when more
    bytes are needed. Raises ProxyProtocolError when ``data`` cannot start with one."""
    n = len(data)
    if n == 0:
        return None
    if data[0] == 0x0D:
        if n < 16:
            if bytes(data[:12]) != V2_SIGNATURE[: min(n, 12)]:
                raise ProxyProtocolError("bad v2 signature")
            return None
        return _decode_v2(data)
    if data[0] == 0x50:  # "P"
        if n < 6:
            if bytes(data) != V1_PREFIX[:n]:
                raise ProxyProtocolError("not a PROXY header")
            return None
        return _decode_v1(data)
    raise ProxyProtocolError("not a PROXY header")


def _decode_v2(data: bytes | bytearray) -> ProxyHeader | None:
    if bytes(data[:12]) != V2_SIGNATURE:
        raise ProxyProtocolError("bad v2 signature")
    ver_cmd, fam_byte, length = data[12], data[13], (data[14] << 8) | data[15]
    if ver_cmd >> 4 != 2:
        raise ProxyProtocolError("bad v2 version")
    cmd = ver_cmd & 0x0F
    if cmd not in (0, 1):
        raise ProxyProtocolError("bad v2 command")
    total = 16 + length
    if len(data) < total:
        return None
    local = cmd == 0
    family = _FAMILIES.get(fam_byte)
    if family is None:
        if fam_byte != 0x00:
            raise ProxyProtocolError("bad v2 address family")
        return ProxyHeader(2, "UNKNOWN", local=local, length=total)
    need = _ADDR_LEN[family]
    if length < need:
        raise ProxyProtocolError("v2 address block too short")
    if local or family == "UNIX":
        # LOCAL: addresses (if any) are to be ignored; UNIX: no inet addresses to use.
        return ProxyHeader(2, "UNKNOWN" if local else family, local=local, length=total)
    body = bytes(data[16 : 16 + need])
    if need == 12:
        src = str(ipaddress.IPv4Address(body[0:4]))
        dst = str(ipaddress.IPv4Address(body[4:8]))
        sport, dport = struct.unpack("!HH", body[8:12])
    else:
        src = str(ipaddress.IPv6Address(body[0:16]))
        dst = str(ipaddress.IPv6Address(body[16:32]))
        sport, dport = struct.unpack("!HH", body[32:36])
    return ProxyHeader(2, family, src, sport, dst, dport, length=total)


def _decode_v1(data: bytes | bytearray) -> ProxyHeader | None:
    if bytes(data[:6]) != V1_PREFIX:
        raise ProxyProtocolError("not a PROXY header")
    end = bytes(data[:V1_MAX]).find(b"\r\n")
    if end < 0:
        if len(data) >= V1_MAX:
            raise ProxyProtocolError("v1 header longer than 107 bytes")
        if b"\n" in data[:V1_MAX] or b"\x00" in data[:V1_MAX]:
            raise ProxyProtocolError("v1 header without CRLF")
        return None
    line = bytes(data[6:end])
    parts = line.split(b" ")
    if parts == [b"UNKNOWN"] or (parts and parts[0] == b"UNKNOWN"):
        # UNKNOWN may carry addresses; the receiver must ignore them.
        return ProxyHeader(1, "UNKNOWN", length=end + 2)
    if len(parts) != 5 or parts[0] not in (b"TCP4", b"TCP6"):
        raise ProxyProtocolError("malformed v1 header")
    family = parts[0].decode()
    want: type[ipaddress.IPv4Address] | type[ipaddress.IPv6Address] = (
        ipaddress.IPv4Address if family == "TCP4" else ipaddress.IPv6Address
    )
    try:
        src = want(parts[1].decode("ascii"))
        dst = want(parts[2].decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise ProxyProtocolError("bad v1 address") from None
    sport = _port(parts[3])
    dport = _port(parts[4])
    return ProxyHeader(1, family, str(src), sport, str(dst), dport, length=end + 2)


def _port(raw: bytes) -> int:
    # The spec forbids leading zeros and signs; int() would accept "+1" or " 1".
    if not raw or not raw.isdigit() or len(raw) > 5 or (len(raw) > 1 and raw[:1] == b"0"):
        raise ProxyProtocolError("bad v1 port")
    port = int(raw)
    if port > 65535:
        raise ProxyProtocolError("bad v1 port")
    return port
