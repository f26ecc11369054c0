"""The ClientHello SNI parser and the SNI route table (pure, no IO)."""

from __future__ import annotations

import pytest
from helpers import client_hello
from hypothesis import given, settings
from hypothesis import strategies as st

from guard.routing.sni import (
    MAX_CLIENT_HELLO,
    NEED_MORE,
    NO_SNI,
    NOT_TLS,
    TOO_LARGE,
    SniTable,
    parse_sni,
)


def rerecord(hello: bytes, size: int) -> bytes:
    """The same handshake message cut into TLS records of at most ``size`` bytes."""
    body = hello[5:]
    out = bytearray()
    for i in range(0, len(body), size):
        frag = body[i : i + size]
        out += bytes((0x16, 0x03, 0x01)) + len(frag).to_bytes(2, "big") + frag
    return bytes(out)


HELLO = client_hello("Api.Example.COM")


def test_real_client_hello() -> None:
    assert parse_sni(HELLO) == "api.example.com"
    assert parse_sni(client_hello("a.test")) == "a.test"


def test_no_server_name() -> None:
    assert parse_sni(client_hello(None)) == NO_SNI


def test_every_prefix_needs_more() -> None:
    for n in range(len(HELLO)):
        assert parse_sni(HELLO[:n]) == NEED_MORE, n


def test_trailing_bytes_are_ignored() -> None:
    assert parse_sni(HELLO + b"\x17\x03\x03\x00\x05hello") == "api.example.com"


@pytest.mark.parametrize("size", [1, 7, 100, 512])
def test_hello_split_over_records(size: int) -> None:
    data = rerecord(HELLO, size)
    assert parse_sni(data) == "api.example.com"
    for n in range(0, len(data), max(1, len(data) // 50)):
        assert parse_sni(data[:n]) == NEED_MORE


def test_not_tls() -> None:
    assert parse_sni(b"GET / HTTP/1.1\r\n") == NOT_TLS
    assert parse_sni(b"\x16\x02\x00\x00\x05hello") == NOT_TLS  # record version 2.x
    assert parse_sni(b"\x16\x03\x01\x00\x00") == NOT_TLS  # empty record
    # A handshake that is not a ClientHello (ServerHello = 2).
    assert parse_sni(b"\x16\x03\x03\x00\x04\x02\x00\x00\x00") == NOT_TLS
    # An alert record in the middle of the hello.
    cut = rerecord(HELLO, 100)
    assert parse_sni(cut[:105] + b"\x15\x03\x03\x00\x02\x02\x28") == NOT_TLS


def test_too_large() -> None:
    huge = 0x10000  # a handshake message of 64 KiB announced in the first record
    data = b"\x16\x03\x01\x00\x08\x01" + huge.to_bytes(3, "big") + b"\x03\x03\x00\x00"
    assert parse_sni(data) == TOO_LARGE
    # Bytes beyond the bound without a complete hello.
    body = b"\x01\x00\x3f\xf0" + b"\x00" * 100
    record = b"\x16\x03\x01" + len(body).to_bytes(2, "big") + body
    assert parse_sni(record, limit=64) == TOO_LARGE
    assert MAX_CLIENT_HELLO == 16 * 1024


def test_truncated_inside_complete_hello_is_not_tls() -> None:
    # The handshake length says 40 bytes but the extensions block claims more.
    body = b"\x03\x03" + b"\x00" * 32 + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00" + b"\x00\x50"
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    data = b"\x16\x03\x01" + len(hs).to_bytes(2, "big") + hs
    assert parse_sni(data) == NOT_TLS


@given(st.binary(max_size=600))
@settings(max_examples=400, deadline=None)
def test_never_crashes_on_random_bytes(data: bytes) -> None:
    assert isinstance(parse_sni(data), str)
    assert isinstance(parse_sni(b"\x16\x03\x01" + data), str)


@given(st.data())
@settings(max_examples=400, deadline=None)
def test_never_crashes_on_mutated_hellos(data: st.DataObject) -> None:
    hello = bytearray(HELLO)
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(hello) - 1))
        hello[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(hello)))
    result = parse_sni(bytes(hello[:cut]))
    assert isinstance(result, str)


def test_table_exact_then_longest_wildcard() -> None:
    table: SniTable[str] = SniTable(
        [
            ("*.example.com", "wild"),
            ("*.eu.example.com", "eu"),
            ("api.example.com", "api"),
            ("API.example.com", "dup"),  # first definition wins
        ]
    )
    assert table.lookup("api.example.com") == "api"
    assert table.lookup("x.example.com") == "wild"
    assert table.lookup("a.b.example.com") == "wild"
    assert table.lookup("x.eu.example.com") == "eu"
    assert table.lookup("example.com") is None
    assert table.lookup("other.org") is None
    assert len(table) == 3
