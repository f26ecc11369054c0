"""Request routing: compiled route tables matched per request."""

from guard.routing.table import (
    CompiledRoute,
    HttpRouteTable,
    RouteMatchResult,
    build_http_tables,
    normalize_host,
)

__all__ = [
    "CompiledRoute",
    "HttpRouteTable",
    "RouteMatchResult",
    "build_http_tables",
    "normalize_host",
]
