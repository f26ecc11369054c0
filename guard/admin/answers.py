"""What the admin server answers with: a status, a body, and Guard's JSON error shape."""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    content_type: str = "application/json"
    extra: tuple[tuple[str, str], ...] = ()


REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def json_answer(status: int, doc: dict[str, str], *extra: tuple[str, str]) -> Answer:
    return Answer(status, json.dumps(doc).encode(), extra=extra)


def error_answer(status: int, code: str, message: str, *extra: tuple[str, str]) -> Answer:
    return json_answer(status, {"error": code, "message": message}, ("x-guard-error", code), *extra)
