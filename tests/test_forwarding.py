"""Header rewriting between client and backend (guard.http.forwarding)."""

from __future__ import annotations

import json

import pytest

from guard.http.codec import (
    RequestHead,
    ResponseHead,
    apply_request_framing,
    apply_response_framing,
)
from guard.http.forwarding import (
    TrustedProxies,
    error_response_bytes,
    forwarded_for_value,
    headers_get,
    informational_bytes,
    request_head_bytes,
    response_head_bytes,
)


def request(headers, *, method=b"GET", target=b"/", version=b"1.1") -> RequestHead:
    head = RequestHead(method, target, version, [(n.lower(), v) for n, v in headers])
    apply_request_framing(head)
    return head


def response(headers, *, status=200, version=b"1.1", method=b"GET") -> ResponseHead:
    head = ResponseHead(status, b"OK", version, [(n.lower(), v) for n, v in headers])
    apply_response_framing(head, method)
    return head


def parse(data: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    assert data.endswith(b"\r\n\r\n")
    first, *lines = data[:-4].split(b"\r\n")
    headers = []
    for line in lines:
        name, _, value = line.partition(b": ")
        headers.append((name, value))
    return first, headers


def forward(head: RequestHead, **kw) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    args = {
        "client_ip": b"203.0.113.7",
        "forwarded_for": b"for=203.0.113.7",
        "proto": b"https",
        "trusted": False,
        "via": None,
    }
    args.update(kw)
    return parse(request_head_bytes(head, head.target, **args))


def names(headers) -> list[bytes]:
    return [n for n, _ in headers]


def test_hop_by_hop_and_connection_named_headers_removed() -> None:
    head = request(
        [
            (b"host", b"a.example"),
            (b"connection", b"keep-alive, X-Secret, x-forwarded-for"),
            (b"keep-alive", b"timeout=5"),
            (b"proxy-connection", b"keep-alive"),
            (b"te", b"trailers"),
            (b"trailer", b"x-t"),
            (b"upgrade", b"h2c"),
            (b"x-secret", b"1"),
            (b"accept", b"*/*"),
        ]
    )
    first, headers = forward(head)
    assert first == b"GET / HTTP/1.1"
    got = names(headers)
    for gone in (b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer"):
        assert gone not in got
    assert b"upgrade" not in got and b"x-secret" not in got
    assert got[:2] == [b"host", b"accept"]
    # Connection named x-forwarded-for: still added by Guard afterwards (CVE-2024-45410)
    assert headers_get(headers, b"x-forwarded-for") == b"203.0.113.7"
    assert headers_get(headers, b"x-forwarded-proto") == b"https"
    assert headers_get(headers, b"x-forwarded-host") == b"a.example"


def test_connection_cannot_remove_content_length_or_host() -> None:
    head = request(
        [(b"host", b"a"), (b"connection", b"content-length, host"), (b"content-length", b"3")],
        method=b"POST",
    )
    _, headers = forward(head)
    assert headers_get(headers, b"content-length") == b"3"
    assert headers_get(headers, b"host") == b"a"


def test_untrusted_peer_forwarding_headers_overwritten() -> None:
    head = request(
        [
            (b"host", b"a.example"),
            (b"x-forwarded-for", b"1.2.3.4"),
            (b"x-forwarded-proto", b"http"),
            (b"x-forwarded-host", b"evil"),
            (b"forwarded", b"for=1.2.3.4;host=evil"),
        ]
    )
    _, headers = forward(head)
    assert names(headers).count(b"x-forwarded-for") == 1
    assert headers_get(headers, b"x-forwarded-for") == b"203.0.113.7"
    assert headers_get(headers, b"x-forwarded-proto") == b"https"
    assert headers_get(headers, b"x-forwarded-host") == b"a.example"
    assert headers_get(headers, b"forwarded") == b"for=203.0.113.7;proto=https;host=a.example"
    assert b"1.2.3.4" not in b"".join(v for _, v in headers)


def test_trusted_peer_forwarding_headers_appended() -> None:
    head = request(
        [
            (b"host", b"a.example"),
            (b"x-forwarded-for", b"198.51.100.1"),
            (b"x-forwarded-for", b"10.0.0.1"),
            (b"x-forwarded-proto", b"http"),
            (b"x-forwarded-host", b"public.example"),
            (b"forwarded", b"for=198.51.100.1"),
        ]
    )
    _, headers = forward(head, trusted=True, client_ip=b"10.0.0.2", forwarded_for=b"for=10.0.0.2")
    assert headers_get(headers, b"x-forwarded-for") == b"198.51.100.1, 10.0.0.1, 10.0.0.2"
    assert headers_get(headers, b"x-forwarded-proto") == b"http"
    assert headers_get(headers, b"x-forwarded-host") == b"public.example"
    assert headers_get(headers, b"forwarded") == (
        b"for=198.51.100.1, for=10.0.0.2;proto=https;host=a.example"
    )
    assert names(headers).count(b"x-forwarded-for") == 1


def test_trusted_peer_headers_named_in_connection_not_believed() -> None:
    head = request(
        [(b"host", b"a"), (b"connection", b"x-forwarded-for"), (b"x-forwarded-for", b"6.6.6.6")]
    )
    _, headers = forward(head, trusted=True)
    assert headers_get(headers, b"x-forwarded-for") == b"203.0.113.7"


def test_forwarded_for_value_quotes_ipv6() -> None:
    assert forwarded_for_value("192.0.2.1") == b"for=192.0.2.1"
    assert forwarded_for_value("2001:db8::1") == b'for="[2001:db8::1]"'
    head = request([(b"host", b"a")])
    _, headers = forward(
        head, client_ip=b"2001:db8::1", forwarded_for=forwarded_for_value("2001:db8::1")
    )
    assert headers_get(headers, b"forwarded") == b'for="[2001:db8::1]";proto=https;host=a'
    assert headers_get(headers, b"x-forwarded-for") == b"2001:db8::1"


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        (b"a.example", b"host=a.example"),
        (b"a.example:8443", b'host="a.example:8443"'),
        (b"[::1]:80", b'host="[::1]:80"'),
    ],
)
def test_forwarded_host_quoted_when_not_a_token(host: bytes, expected: bytes) -> None:
    _, headers = forward(request([(b"host", host)]))
    assert headers_get(headers, b"forwarded").endswith(b";" + expected)


def test_chunked_adds_transfer_encoding_and_target_replaced() -> None:
    head = request(
        [(b"host", b"a"), (b"transfer-encoding", b"chunked")], method=b"POST", target=b"/old?q"
    )
    data = request_head_bytes(
        head,
        b"/new/path?q",
        client_ip=b"1.1.1.1",
        forwarded_for=b"for=1.1.1.1",
        proto=b"http",
        trusted=False,
        via=None,
    )
    first, headers = parse(data)
    assert first == b"POST /new/path?q HTTP/1.1"
    assert names(headers).count(b"transfer-encoding") == 1
    assert headers[-1] == (b"transfer-encoding", b"chunked")


def test_via_when_enabled() -> None:
    head = request([(b"host", b"a")], version=b"1.0")
    _, headers = forward(head, via=b"guard")
    assert headers_get(headers, b"via") == b"1.0 guard"
    _, headers = forward(request([(b"host", b"a")]))
    assert headers_get(headers, b"via") is None


def test_http10_request_forwarded_as_http11() -> None:
    first, headers = forward(request([], version=b"1.0"))
    assert first == b"GET / HTTP/1.1"
    assert headers_get(headers, b"x-forwarded-host") is None
    assert headers_get(headers, b"forwarded") == b"for=203.0.113.7;proto=https"


# ------------------------------------------------------------------ responses


def test_response_hop_by_hop_stripped() -> None:
    head = response(
        [
            (b"content-type", b"text/plain"),
            (b"connection", b"keep-alive, x-internal, content-length"),
            (b"keep-alive", b"timeout=5"),
            (b"x-internal", b"1"),
            (b"transfer-encoding", b"chunked"),
            (b"upgrade", b"h2"),
            (b"set-cookie", b"a=1"),
        ]
    )
    first, headers = parse(
        response_head_bytes(head, chunked=True, keep_alive=True, client_version=b"1.1", via=None)
    )
    assert first == b"HTTP/1.1 200 OK"
    assert headers == [
        (b"content-type", b"text/plain"),
        (b"set-cookie", b"a=1"),
        (b"transfer-encoding", b"chunked"),
    ]


def test_response_content_length_survives_connection_naming_it() -> None:
    head = response([(b"connection", b"content-length"), (b"content-length", b"2")])
    _, headers = parse(
        response_head_bytes(head, chunked=False, keep_alive=True, client_version=b"1.1", via=None)
    )
    assert headers_get(headers, b"content-length") == b"2"


@pytest.mark.parametrize(
    ("client_version", "chunked", "keep_alive", "expected"),
    [
        (b"1.1", False, True, []),
        (b"1.1", True, True, [(b"transfer-encoding", b"chunked")]),
        (b"1.1", False, False, [(b"connection", b"close")]),
        (b"1.1", True, False, [(b"transfer-encoding", b"chunked"), (b"connection", b"close")]),
        (b"1.0", False, True, [(b"connection", b"keep-alive")]),
        (b"1.0", False, False, [(b"connection", b"close")]),
    ],
)
def test_response_framing_headers(client_version, chunked, keep_alive, expected) -> None:
    head = response([(b"content-length", b"0")] if not chunked else [])
    _, headers = parse(
        response_head_bytes(
            head, chunked=chunked, keep_alive=keep_alive, client_version=client_version, via=None
        )
    )
    assert [h for h in headers if h[0] != b"content-length"] == expected


def test_response_via() -> None:
    head = response([(b"content-length", b"0")], version=b"1.0")
    _, headers = parse(
        response_head_bytes(head, chunked=False, keep_alive=True, client_version=b"1.1", via=b"g")
    )
    assert headers_get(headers, b"via") == b"1.0 g"


def test_informational_bytes() -> None:
    head = response([(b"link", b"</a.css>"), (b"connection", b"keep-alive")], status=103)
    head.reason = b"Early Hints"
    assert informational_bytes(head) == b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n"


# ------------------------------------------------------------------ Guard's own answers


@pytest.mark.parametrize("keep_alive", [True, False])
def test_error_response_bytes(keep_alive: bool) -> None:
    data = error_response_bytes(502, "upstream_timeout", 'said "no"', keep_alive=keep_alive)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 502 Bad Gateway"
    headers = dict(line.split(b": ", 1) for line in lines[1:])
    assert headers[b"x-guard-error"] == b"upstream_timeout"
    assert headers[b"content-type"] == b"application/json"
    assert int(headers[b"content-length"]) == len(body)
    assert json.loads(body) == {"error": "upstream_timeout", "message": 'said "no"'}
    assert (headers.get(b"connection") == b"close") is (not keep_alive)


def test_error_response_head_only_and_unknown_status() -> None:
    full = error_response_bytes(431, "header_too_large", "big", keep_alive=True)
    head_only = error_response_bytes(
        431, "header_too_large", "big", keep_alive=True, head_only=True
    )
    assert full.startswith(head_only) and head_only.endswith(b"\r\n\r\n")
    assert head_only.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert b"content-length: %d\r\n" % (len(full) - len(head_only)) in head_only
    assert error_response_bytes(599, "x", "y", keep_alive=True).startswith(b"HTTP/1.1 599 Error")


# ------------------------------------------------------------------ trusted proxies


def test_trusted_proxies_v4_v6() -> None:
    trusted = TrustedProxies(["10.0.0.0/8", "192.168.1.1", "2001:db8::/32", "172.16.0.1/12"])
    assert "10.1.2.3" in trusted
    assert "192.168.1.1" in trusted
    assert "192.168.1.2" not in trusted
    assert "172.20.0.1" in trusted  # non-strict network
    assert "2001:db8:1::5" in trusted
    assert "2001:db9::1" not in trusted
    assert "::ffff:10.0.0.1" in trusted  # IPv4-mapped, as dual-stack sockets report it
    assert "11.0.0.1" not in trusted


@pytest.mark.parametrize("ip", ["", "garbage", "10.0.0.300", "10.0.0.1/8", "::g", " 10.0.0.1"])
def test_trusted_proxies_garbage_input(ip: str) -> None:
    assert ip not in TrustedProxies(["0.0.0.0/0", "::/0"])


def test_no_trusted_proxies() -> None:
    assert "10.0.0.1" not in TrustedProxies([])


def test_trusted_proxies_bad_cidr_raises() -> None:
    with pytest.raises(ValueError):
        TrustedProxies(["not-a-network"])
