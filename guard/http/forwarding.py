"""Header rewriting between client and backend, as pure functions over header lists.

Order matters (Traefik CVE-2021-32813 / CVE-2024-45410): hop-by-hop headers and every
header the client named in ``Connection`` are removed *before* Guard adds its
``X-Forwarded-*`` headers, so a client can neither delete nor forge them.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence

from guard.http.codec import Headers, RequestHead, ResponseHead

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Set by Guard itself; from an untrusted peer they are dropped, never believed.
_FORWARDING = frozenset(
    {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded"}
)
_REQUEST_DROP = HOP_BY_HOP | _FORWARDING
# Never removed because Connection names them: dropping Content-Length while forwarding
# the body desynchronises the next hop (request smuggling), dropping Host misroutes.
_PROTECTED = frozenset({b"content-length", b"host"})

_REASONS = {
    100: b"Continue",
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    408: b"Request Timeout",
    413: b"Content Too Large",
    417: b"Expectation Failed",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}


class TrustedProxies:
    """Which peers' forwarding headers are believed (``http.trusted_proxies``)."""

    __slots__ = ("_networks",)

    def __init__(self, cidrs: Sequence[str]) -> None:
        self._networks = tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)

    def __contains__(self, ip: str) -> bool:
        if not self._networks or not ip:
            return False
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if addr.version == 6 and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped  # a dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d
        return any(addr in net for net in self._networks)


def forwarded_for_value(client_ip: str) -> bytes:
    """The ``for=`` value of RFC 7239: IPv6 addresses quoted in brackets."""
    if ":" in client_ip:
        return f'for="[{client_ip}]"'.encode()
    return f"for={client_ip}".encode()


def request_head_bytes(
    head: RequestHead,
    target: bytes,
    *,
    client_ip: bytes,
    forwarded_for: bytes,
    proto: bytes,
    trusted: bool,
    via: bytes | None,
) -> bytes:
    """Serialize the request head Guard sends upstream (always HTTP/1.1, keep-alive)."""
    tokens = head.connection_tokens
    drop = _REQUEST_DROP | (frozenset(tokens) - _PROTECTED) if tokens else _REQUEST_DROP
    out = [head.method, b" ", target, b" HTTP/1.1\r\n"]
    append = out.append
    for name, value in head.headers:
        if name in drop:
            continue
        append(name)
        append(b": ")
        append(value)
        append(b"\r\n")
    prior_for: list[bytes] = []
    prior_forwarded: list[bytes] = []
    prior_proto = prior_host = None
    if trusted:
        # A trusted proxy's forwarding headers are kept and extended, unless they were
        # named in Connection (then they were meant for us alone).
        for name, value in head.headers:
            if name not in _FORWARDING or name in tokens:
                continue
            if name == b"x-forwarded-for":
                prior_for.append(value)
            elif name == b"forwarded":
                prior_forwarded.append(value)
            elif name == b"x-forwarded-proto":
                prior_proto = value
            else:
                prior_host = value
    prior_for.append(client_ip)
    append(b"x-forwarded-for: ")
    append(b", ".join(prior_for))
    append(b"\r\nx-forwarded-proto: ")
    append(prior_proto or proto)
    if head.host or prior_host:
        append(b"\r\nx-forwarded-host: ")
        append(prior_host or head.host)
    append(b"\r\nforwarded: ")
    if prior_forwarded:
        append(b", ".join(prior_forwarded))
        append(b", ")
    append(forwarded_for)
    append(b";proto=")
    append(proto)
    if head.host and _is_token(head.host):
        append(b";host=")
        append(head.host)
    elif head.host:
        append(b';host="')
        append(head.host.replace(b"\\", b"\\\\").replace(b'"', b'\\"'))
        append(b'"')
    if via is not None:
        append(b"\r\nvia: ")
        append(head.version)
        append(b" ")
        append(via)
    if head.chunked:
        append(b"\r\ntransfer-encoding: chunked")
    append(b"\r\n\r\n")
    return b"".join(out)


def _is_token(value: bytes) -> bool:
    # RFC 7230 tchar subset; ":" is not one, so "host:port" must be quoted (RFC 7239 4).
    return value.replace(b".", b"").replace(b"-", b"").isalnum()


def response_head_bytes(
    head: ResponseHead,
    *,
    chunked: bool,
    keep_alive: bool,
    client_version: bytes,
    via: bytes | None,
) -> bytes:
    """Serialize the response head Guard sends to the client."""
    drop = HOP_BY_HOP
    if head.connection_tokens:
        drop = drop | (frozenset(head.connection_tokens) - _PROTECTED)
    out = [b"HTTP/1.1 ", str(head.status).encode(), b" ", head.reason, b"\r\n"]
    append = out.append
    for name, value in head.headers:
        if name in drop:
            continue
        append(name)
        append(b": ")
        append(value)
        append(b"\r\n")
    if via is not None:
        append(b"via: ")
        append(head.version)
        append(b" ")
        append(via)
        append(b"\r\n")
    if chunked:
        append(b"transfer-encoding: chunked\r\n")
    if not keep_alive:
        append(b"connection: close\r\n")
    elif client_version == b"1.0":
        append(b"connection: keep-alive\r\n")
    append(b"\r\n")
    return b"".join(out)


def informational_bytes(head: ResponseHead) -> bytes:
    out = [b"HTTP/1.1 ", str(head.status).encode(), b" ", head.reason, b"\r\n"]
    for name, value in head.headers:
        if name not in HOP_BY_HOP:
            out += (name, b": ", value, b"\r\n")
    out.append(b"\r\n")
    return b"".join(out)


def error_response_bytes(
    status: int, code: str, message: str, *, keep_alive: bool, head_only: bool = False
) -> bytes:
    """A response made by Guard: ``x-guard-error`` plus ``{"error": CODE, "message": ...}``."""
    body = json.dumps({"error": code, "message": message}).encode()
    reason = _REASONS.get(status, b"Error")
    head = (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\nx-guard-error: %s\r\n"
        b"content-length: %d\r\n%s\r\n"
        % (
            status,
            reason,
            code.encode(),
            len(body),
            b"" if keep_alive else b"connection: close\r\n",
        )
    )
    return head if head_only else head + body


def headers_get(headers: Headers, name: bytes) -> bytes | None:
    for n, v in headers:
        if n == name:
            return v
    return None
