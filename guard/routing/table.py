"""HTTP route tables: compiled once per config load, matched on every request.

Per-request cost must not grow with the number of routes (field notes: reload and match
cost must stay gentle at tens of thousands of routes), so everything is turned into dict
lookups at build time:

* host: one dict for exact hosts, one dict keyed by the parent domain for ``{key}.parent``
  captures, one dict keyed by the suffix for ``*.suffix`` wildcards (probed by walking the
  host's label boundaries, at most one lookup per label), and the any-host bucket. The
  ordered list of candidate buckets for a raw Host header is cached per distinct raw value.
* path: per host bucket, a dict of exact paths and a dict of prefixes. A prefix can only
  match where it ends on a "/" boundary of the request path, so we probe, longest first,
  either the bucket's few distinct prefix lengths or (when a bucket has many) the path's
  own "/" boundaries; never a scan over routes.

Pure code: no IO, no asyncio.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Generic, Protocol, TypeVar

from guard.config.gcpause import gc_paused
from guard.config.model import RouteConfig

__all__ = [
    "CompiledRoute",
    "HttpRouteTable",
    "RouteMatchResult",
    "RouteTable",
    "build_http_tables",
    "normalize_host",
]

T = TypeVar("T")

# Distinct raw Host values seen per table. Clients send few distinct values in practice;
# the bound only stops a client spraying random Host headers from growing memory.
_HOST_CACHE_MAX = 4096


class CompiledRoute(Generic[T]):
    """A route as the table holds it: its config, its target (a service), and what
    strip_prefix strips. (A plain class with slots rather than a slotted dataclass: mypyc
    cannot compile the latter, and nothing compares or copies routes.)"""

    __slots__ = ("config", "listener", "name", "strip_prefix", "target")

    def __init__(
        self, name: str, listener: str, config: RouteConfig, target: T, strip_prefix: bytes | None
    ) -> None:
        self.name = name
        self.listener = listener
        self.config = config
        self.target = target
        # The route's path prefix (or exact path) to strip, when strip_prefix is on. None
        # when stripping is off or would be a no-op (prefix "/").
        self.strip_prefix = strip_prefix

    def __repr__(self) -> str:
        return f"CompiledRoute(name={self.name!r}, listener={self.listener!r})"

    def rewrite_target(self, target: bytes) -> bytes:
        """Strip ``strip_prefix`` from a request target, keeping the query string.

        The result always starts with "/". A target that does not start with the prefix on a
        segment boundary (cannot happen for a target this route matched, but the caller may
        pass an already rewritten or differently encoded one) is returned unchanged.
        """
        prefix = self.strip_prefix
        if prefix is None or not target.startswith(prefix):
            return target
        rest = target[len(prefix) :]
        if not rest:
            return b"/"
        first = rest[:1]
        if first == b"/":
            return rest
        if first == b"?" or prefix[-1:] == b"/":
            return b"/" + rest
        return target  # "/apix" with prefix "/api": not a segment boundary


class RouteMatchResult(Generic[T]):
    """What ``HttpRouteTable.match`` returns.

    Results without a captured key are built once per route and shared between requests:
    treat them as read-only.
    """

    __slots__ = ("key", "route")

    def __init__(self, route: CompiledRoute[T], key: str | None) -> None:
        self.route = route
        self.key = key  # the "{key}" label captured from the host, lowercase

    def __repr__(self) -> str:
        return f"RouteMatchResult(route={self.route.name!r}, key={self.key!r})"


class RouteTable(Protocol):
    """What an http listener matches requests against: an HttpRouteTable, or a
    ContainerAwareTable (guard.routing.containers) in front of one."""

    @property
    def reads_headers(self) -> bool:
        """Whether match() looks at the headers (else it may be given an empty list)."""
        ...

    def match(
        self, host: bytes, path: bytes, method: bytes, headers: list[tuple[bytes, bytes]]
    ) -> RouteMatchResult[Any] | None: ...


# One candidate route inside a path slot: (prebuilt result, methods or None = any,
# headers or None = no header condition). Plain tuples: unpacking is the cheapest access.
_Entry = tuple[RouteMatchResult, frozenset[bytes] | None, tuple[tuple[bytes, bytes], ...] | None]
# A slot (all routes with one exact path or one prefix) is either the result itself, when
# its best route has no conditions and so always wins, or the sorted entries to test.
_Slot = RouteMatchResult | list[_Entry]

# Above this many distinct prefix lengths in one host bucket, probe the request path's "/"
# boundaries instead of the bucket's prefix lengths (see _Bucket.find).
_MAX_LENGTH_PROBES = 16


def _pick(
    entries: list[_Entry], method: bytes, headers: list[tuple[bytes, bytes]]
) -> RouteMatchResult | None:
    # entries are pre-sorted by (more conditions, higher priority, definition order).
    for result, methods, required in entries:
        if methods is not None and method not in methods:
            continue
        if required is not None:
            for pair in required:
                # tuple equality in C; repeated header names match if any value is equal
                if pair not in headers:
                    break
            else:
                return result
            continue
        return result
    return None


class _Bucket:
    """The routes of one host pattern, indexed by path."""

    __slots__ = ("exact", "lengths", "max_prefix", "prefixes")

    def __init__(self) -> None:
        self.exact: dict[bytes, _Slot] = {}
        self.prefixes: dict[bytes, _Slot] = {}
        # distinct prefix lengths, longest first; None = walk the path's "/" boundaries
        self.lengths: tuple[int, ...] | None = ()
        self.max_prefix = 0

    def freeze(self, keys: dict[int, tuple[int, int, int]]) -> None:
        for table in (self.exact, self.prefixes):
            for path, slot in table.items():
                assert isinstance(slot, list)
                if len(slot) > 1:
                    slot.sort(key=lambda e: keys[id(e[0])])
                best = slot[0]
                table[path] = best[0] if best[1] is None and best[2] is None else slot
        lengths = sorted({len(p) for p in self.prefixes}, reverse=True)
        self.lengths = tuple(lengths) if len(lengths) <= _MAX_LENGTH_PROBES else None
        self.max_prefix = lengths[0] if lengths else 0

    def find(
        self, path: bytes, method: bytes, headers: list[tuple[bytes, bytes]]
    ) -> RouteMatchResult | None:
        if self.exact:
            slot = self.exact.get(path)
            if slot is not None:
                if slot.__class__ is RouteMatchResult:
                    return slot  # type: ignore[return-value]
                found = _pick(slot, method, headers)  # type: ignore[arg-type]
                if found is not None:
                    return found
        lengths = self.lengths
        if lengths is None:
            return self._walk(path, method, headers)
        # A prefix of length L can only match if it ends on a segment boundary: L is the
        # whole path, path[L] is "/" (segment-aware prefix), or path[L - 1] is "/" (a prefix
        # ending in "/"). The dict lookup checks the bytes themselves. Lengths are few per
        # host in practice, so this is a handful of index checks and one or two lookups.
        prefixes = self.prefixes
        n = len(path)
        for size in lengths:
            if size < n:
                if path[size] != 47 and path[size - 1] != 47:  # 47 == ord("/")
                    continue
            elif size > n:
                continue
            slot = prefixes.get(path[:size])
            if slot is not None:
                if slot.__class__ is RouteMatchResult:
                    return slot  # type: ignore[return-value]
                found = _pick(slot, method, headers)  # type: ignore[arg-type]
                if found is not None:
                    return found
        return None

    def _walk(
        self, path: bytes, method: bytes, headers: list[tuple[bytes, bytes]]
    ) -> RouteMatchResult | None:
        # For buckets with many distinct prefix lengths: every prefix that can match ends at
        # a "/" boundary of the path (path[:i + 1] for a "/" at i if it ends in "/",
        # path[:i] otherwise, or the whole path), so probe those from longest to shortest,
        # one dict lookup each, never longer than max_prefix.
        prefixes = self.prefixes
        n = len(path)
        limit = self.max_prefix
        probes: list[bytes] = []
        if n <= limit:
            probes.append(path)
        i = path.rfind(b"/", 0, limit + 1 if limit < n else n)
        while i >= 0:
            j = i + 1
            if j < n and j <= limit:
                probes.append(path[:j])
            if i == 0:
                break
            probes.append(path[:i])
            i = path.rfind(b"/", 0, i)
        for probe in probes:
            slot = prefixes.get(probe)
            if slot is not None:
                if slot.__class__ is RouteMatchResult:
                    return slot  # type: ignore[return-value]
                found = _pick(slot, method, headers)  # type: ignore[arg-type]
                if found is not None:
                    return found
        return None


# (bucket, captured key) in precedence order, for one raw Host value.
_Candidates = tuple[tuple[_Bucket, str | None], ...]


def normalize_host(raw: bytes) -> bytes:
    """Lowercase a Host value and drop its port, brackets and trailing dot.

    b"App.Localhost:8080" -> b"app.localhost"; b"[::1]:8080" -> b"::1".
    """
    host = raw.strip().lower()
    if host[:1] == b"[":
        end = host.find(b"]")
        return host[1:end] if end > 0 else host
    if host.count(b":") == 1:
        host = host[: host.index(b":")]
    if host[-1:] == b".":
        host = host[:-1]
    return host


class HttpRouteTable(Generic[T]):
    """The HTTP routes of one listener."""

    __slots__ = (
        "_any",
        "_cache",
        "_capture",
        "_exact",
        "_wildcard",
        "listener",
        "reads_headers",
        "routes",
    )

    def __init__(self, listener: str, routes: Sequence[CompiledRoute[T]]) -> None:
        self.listener = listener
        self.routes: tuple[CompiledRoute[T], ...] = tuple(routes)
        self._exact: dict[bytes, _Bucket] = {}
        self._capture: dict[bytes, _Bucket] = {}
        self._wildcard: dict[bytes, _Bucket] = {}
        self._any: _Bucket | None = None
        self._cache: dict[bytes, _Candidates] = {}
        # Whether match() looks at the headers (a route matches on some): when not, the
        # proxy passes none and a plain request's header list is never built.
        self.reads_headers = False
        self._compile()

    # ------------------------------------------------------------------ build

    def _compile(self) -> None:
        # Runs on every reload over every route (10,000 in < 200 ms with parsing, issue 7):
        # the loop avoids per-route work that depends only on the host pattern or is empty.
        keys: dict[int, tuple[int, int, int]] = {}
        buckets_by_pattern: dict[str | None, _Bucket] = {}
        for index, route in enumerate(self.routes):
            m = route.config.match
            path, prefix = m.path, m.path_prefix
            if path is not None and prefix is not None:
                raise ValueError(f"route {route.name!r}: both path and path_prefix set")
            bucket = buckets_by_pattern.get(m.host)
            if bucket is None:
                bucket = buckets_by_pattern[m.host] = self._bucket_for(route.name, m.host)
            if path is not None:
                key = _path_bytes(route.name, path)
                table = bucket.exact
            else:
                key = _path_bytes(route.name, prefix or "/")
                table = bucket.prefixes
            methods = frozenset(x.upper().encode("ascii") for x in m.methods) if m.methods else None
            required = (
                tuple(
                    (name.lower().encode("latin-1"), value.encode("latin-1"))
                    for name, value in m.headers
                )
                if m.headers
                else None
            )
            if required:
                self.reads_headers = True
            result = RouteMatchResult(route, None)
            entries = table.get(key)
            if entries is None:
                table[key] = [(result, methods, required)]
            else:
                assert isinstance(entries, list)  # slots stay lists until freeze()
                entries.append((result, methods, required))
            conditions = (len(required) if required else 0) + (1 if methods else 0)
            keys[id(result)] = (-conditions, -route.config.priority, index)
        # Within one path slot: more conditions first, then higher priority, then
        # definition order.
        buckets = [*self._exact.values(), *self._capture.values(), *self._wildcard.values()]
        if self._any is not None:
            buckets.append(self._any)
        for bucket in buckets:
            bucket.freeze(keys)

    def _bucket_for(self, name: str, pattern: str | None) -> _Bucket:
        if pattern is None or pattern in ("", "*"):
            if self._any is None:
                self._any = _Bucket()
            return self._any
        host = pattern.strip().lower()
        if host.startswith("*."):
            suffix = normalize_host(_host_bytes(host[2:]))
            if not suffix or "*" in host[2:] or "{" in host:
                raise ValueError(f"route {name!r}: bad wildcard host {pattern!r}")
            return self._wildcard.setdefault(suffix, _Bucket())
        if host.startswith("{"):
            label, dot, parent = host.partition(".")
            if (
                not dot
                or not parent
                or not label.endswith("}")
                or len(label) < 3
                or "{" in parent
                or "*" in parent
            ):
                raise ValueError(f"route {name!r}: bad capture host {pattern!r}")
            return self._capture.setdefault(normalize_host(_host_bytes(parent)), _Bucket())
        if "*" in host or "{" in host:
            raise ValueError(f"route {name!r}: bad host {pattern!r}")
        return self._exact.setdefault(normalize_host(_host_bytes(host)), _Bucket())

    # ------------------------------------------------------------------ match

    def match(
        self, host: bytes, path: bytes, method: bytes, headers: list[tuple[bytes, bytes]]
    ) -> RouteMatchResult[T] | None:
        """The best route for a request, or None.

        host is the raw Host header value (b"" if missing), path the raw path without the
        query string, headers the request headers with lowercase names.
        """
        candidates = self._cache.get(host)
        if candidates is None:
            candidates = self._candidates(host)
        if not path:
            path = b"/"
        for bucket, key in candidates:
            found = bucket.find(path, method, headers)
            if found is not None:
                return found if key is None else RouteMatchResult(found.route, key)
        return None

    def _candidates(self, raw: bytes) -> _Candidates:
        host = normalize_host(raw)
        found: list[tuple[_Bucket, str | None]] = []
        if host:
            bucket = self._exact.get(host)
            if bucket is not None:
                found.append((bucket, None))
            # IP literals have no labels to capture or wildcard over.
            if b":" not in host and (self._capture or self._wildcard):
                dot = host.find(b".")
                if dot > 0:
                    bucket = self._capture.get(host[dot + 1 :])
                    if bucket is not None:
                        found.append((bucket, host[:dot].decode("latin-1")))
                if self._wildcard:
                    # Longest suffix first; dot > 0 keeps at least one non-empty label.
                    while dot > 0:
                        bucket = self._wildcard.get(host[dot + 1 :])
                        if bucket is not None:
                            found.append((bucket, None))
                        dot = host.find(b".", dot + 1)
        if self._any is not None:
            found.append((self._any, None))
        result = tuple(found)
        cache = self._cache
        if len(cache) >= _HOST_CACHE_MAX:
            cache.clear()  # crude but O(1) amortized; a sprayer only costs us re-resolution
        cache[raw] = result
        return result


def _host_bytes(host: str) -> bytes:
    try:
        return host.encode("ascii")
    except UnicodeEncodeError:
        pass
    try:
        return host.encode("idna")  # Host headers carry the punycode form
    except UnicodeError as exc:
        raise ValueError(f"bad host {host!r}: {exc}") from None


def _path_bytes(name: str, path: str) -> bytes:
    if not path.startswith("/"):
        raise ValueError(f"route {name!r}: path {path!r} must start with '/'")
    return path.encode("utf-8")


def build_http_tables(
    routes: Sequence[RouteConfig], targets: Mapping[str, T]
) -> dict[str, HttpRouteTable[T]]:
    """One route table per listener; each route's target is ``targets[route.service]``.

    The caller passes only routes of http/https listeners. ``match.sni`` is a TCP-only
    condition and is not considered here.
    """
    with gc_paused():  # see guard.config.gcpause: many objects, no cycles
        return _build_http_tables(routes, targets)


def _build_http_tables(
    routes: Sequence[RouteConfig], targets: Mapping[str, T]
) -> dict[str, HttpRouteTable[T]]:
    per_listener: dict[str, list[CompiledRoute[T]]] = {}
    for config in routes:
        try:
            target = targets[config.service]
        except KeyError:
            raise ValueError(f"route {config.name!r}: unknown service {config.service!r}") from None
        m = config.match
        strip: bytes | None = None
        if config.strip_prefix:
            prefix = m.path if m.path is not None else m.path_prefix
            if prefix and prefix != "/":
                strip = prefix.encode("utf-8")
        per_listener.setdefault(config.listener, []).append(
            CompiledRoute(config.name, config.listener, config, target, strip)
        )
    return {name: HttpRouteTable(name, compiled) for name, compiled in per_listener.items()}
