"""What the admin server takes and answers with: a request, a status and body, and Guard's
JSON error shape."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str  # percent-decoding is left to the handler: names are decoded per segment
    query: str = ""
    headers: tuple[tuple[str, str], ...] = ()  # names lowercased
    body: bytes = b""

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    content_type: str = "application/json"
    extra: tuple[tuple[str, str], ...] = ()
    # A body of unknown length (a log follow): sent chunked after ``body``, until it ends
    # or the client goes away.
    stream: AsyncIterator[bytes] | None = None


REASONS = {
    200: "OK",
    201: "Created",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def json_answer(status: int, doc: dict[str, Any], *extra: tuple[str, str]) -> Answer:
    return Answer(status, json.dumps(doc, default=str).encode(), extra=extra)


def error_answer(
    status: int, code: str, message: str, *extra: tuple[str, str], **more: Any
) -> Answer:
    """``{"error": code, "message": ...}`` plus ``more`` (e.g. ``errors=[lines]``)."""
    doc = {"error": code, "message": message, **more}
    return json_answer(status, doc, ("x-guard-error", code), *extra)
