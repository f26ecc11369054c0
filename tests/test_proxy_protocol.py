"""PROXY protocol v1/v2 encode and decode (pure, no IO)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guard.proxy.proxy_protocol import (
    V2_SIGNATURE,
    ProxyHeader,
    ProxyProtocolError,
    decode,
    encode,
    encode_v1,
    encode_v2,
)

V4 = (("192.168.0.1", 56324), ("192.168.0.11", 443))
V6 = (("2001:db8::1", 1234), ("::1", 5432))


def test_v1_spec_example() -> None:
    raw = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
    assert encode_v1(*V4) == raw
    header = decode(raw + b"GET / HTTP/1.1\r\n")
    assert header == ProxyHeader(
        1, "TCP4", "192.168.0.1", 56324, "192.168.0.11", 443, length=len(raw)
    )


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("ends", [V4, V6], ids=["tcp4", "tcp6"])
def test_round_trip(version: str, ends: tuple[tuple[str, int], tuple[str, int]]) -> None:
    raw = encode(version, *ends)
    header = decode(raw + b"payload")
    assert header is not None
    assert header.version == int(version[1])
    assert header.family == ("TCP4" if ends is V4 else "TCP6")
    assert (header.src_addr, header.src_port) == ends[0]
    assert (header.dst_addr, header.dst_port) == ends[1]
    assert header.length == len(raw)
    assert not header.local


def test_v4_mapped_v6_is_sent_as_v4() -> None:
    raw = encode_v1(("::ffff:10.0.0.1", 1), ("10.0.0.2", 2))
    assert raw == b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\n"


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_mixed_families_or_unknown_ends(version: str) -> None:
    for src, dst in [(("10.0.0.1", 1), ("::1", 2)), (None, ("::1", 2)), (("", 0), ("", 0))]:
        header = decode(encode(version, src, dst))
        assert header is not None and header.family == "UNKNOWN" and header.src_addr is None


def test_v2_local() -> None:
    raw = encode_v2(*V4, local=True)
    assert raw == V2_SIGNATURE + b"\x20\x00\x00\x00"
    header = decode(raw)
    assert header is not None and header.local and header.length == 16


def test_v2_local_with_addresses_ignores_them() -> None:
    body = bytes(12)
    header = decode(V2_SIGNATURE + b"\x20\x11\x00\x0c" + body)
    assert header is not None and header.local and header.src_addr is None


def test_v2_tlvs_are_skipped() -> None:
    raw = encode_v2(*V4)
    tlv = b"\x04\x00\x03abc"  # PP2_TYPE_NOOP
    length = struct.unpack("!H", raw[14:16])[0] + len(tlv)
    with_tlv = raw[:14] + struct.pack("!H", length) + raw[16:] + tlv
    header = decode(with_tlv + b"data")
    assert header is not None and header.length == len(with_tlv)
    assert header.src_addr == "192.168.0.1"


def test_v2_udp_and_unix_families() -> None:
    body = bytes([10, 0, 0, 1, 10, 0, 0, 2]) + struct.pack("!HH", 5, 6)
    header = decode(V2_SIGNATURE + b"\x21\x12\x00\x0c" + body)
    assert header is not None and header.family == "UDP4" and header.src_port == 5
    header = decode(V2_SIGNATURE + b"\x21\x31\x00\xd8" + bytes(216))
    assert header is not None and header.family == "UNIX" and header.src_addr is None


def test_v1_unknown_with_addresses() -> None:
    header = decode(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n")
    assert header is not None and header.family == "UNKNOWN" and header.src_addr is None


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_every_prefix_is_incomplete(version: str) -> None:
    raw = encode(version, *V6)
    for n in range(len(raw)):
        assert decode(raw[:n]) is None, n


@pytest.mark.parametrize(
    "raw",
    [
        b"GET / HTTP/1.1\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",  # LF without CR...
        b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",  # leading zero
        b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 70000 2\r\n",
        b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",  # v6 address on TCP4
        b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
        b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",  # double space
        b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY " + b"A" * 120,  # no CRLF within 107 bytes
        b"PRXY",
        b"\r\n\r\n\x00\r\nQUIX\n\x21\x11\x00\x0c" + bytes(12),  # bad signature
        V2_SIGNATURE + b"\x11\x11\x00\x0c" + bytes(12),  # version 1 in a v2 header
        V2_SIGNATURE + b"\x22\x11\x00\x0c" + bytes(12),  # command 2
        V2_SIGNATURE + b"\x21\x41\x00\x0c" + bytes(12),  # family 4
        V2_SIGNATURE + b"\x21\x11\x00\x04" + bytes(4),  # address block too short for TCP4
        V2_SIGNATURE + b"\x21\x21\x00\x0c" + bytes(12),  # too short for TCP6
    ],
)
def test_malformed(raw: bytes) -> None:
    with pytest.raises(ProxyProtocolError):
        decode(raw)


def test_unknown_version() -> None:
    with pytest.raises(ValueError):
        encode("v3", *V4)


@given(st.binary(max_size=300))
@settings(max_examples=500, deadline=None)
def test_decode_never_crashes(data: bytes) -> None:
    for candidate in (data, b"PROXY " + data, V2_SIGNATURE + data):
        try:
            header = decode(candidate)
        except ProxyProtocolError:
            continue
        assert header is None or 0 < header.length <= len(candidate)


@given(
    st.ip_addresses(v=4),
    st.ip_addresses(v=4),
    st.integers(0, 65535),
    st.integers(0, 65535),
    st.sampled_from(["v1", "v2"]),
)
def test_round_trip_any_v4(a: object, b: object, p: int, q: int, version: str) -> None:
    header = decode(encode(version, (str(a), p), (str(b), q)))
    assert header is not None
    assert (header.src_addr, header.src_port, header.dst_addr, header.dst_port) == (
        str(a),
        p,
        str(b),
        q,
    )


# v4-mapped v6 addresses are sent as TCP4 (tested above), so they are left out here.
_V6 = st.ip_addresses(v=6).filter(lambda a: a.ipv4_mapped is None)


@given(_V6, _V6, st.integers(0, 65535), st.integers(0, 65535))
def test_round_trip_any_v6_v2(a: object, b: object, p: int, q: int) -> None:
    header = decode(encode_v2((str(a), p), (str(b), q)))
    assert header is not None and header.src_port == p and header.dst_port == q
