"""Load guard.yaml and the route files into the frozen model, checking the whole contract.

Validation is table-driven: each section is a mapping of allowed keys to parsers, walked by
``_fields``, which reports unknown keys and missing required ones. Every parser receives the
file context and the key path, so one pass collects every problem as
``file: key.path: what is wrong`` and the user can fix them all at once.

Parsers return ``INVALID`` after reporting a problem; callers leave such values out and keep
going, so one mistake does not hide the next.
"""

from __future__ import annotations

import difflib
import ipaddress
import marshal
import math
import os
import re
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final

import yaml

from guard.config import units, yaml_fast
from guard.config.gcpause import gc_paused
from guard.config.model import (
    AdminConfig,
    AdminToken,
    CertificateConfig,
    ContainersConfig,
    ContainerSpec,
    DockerDriverConfig,
    DriversConfig,
    GuardConfig,
    HealthConfig,
    HttpConfig,
    HttpLimits,
    HttpTimeouts,
    ListenerConfig,
    OutlierConfig,
    ProcessDriverConfig,
    ProxyProtocolAccept,
    RateLimitConfig,
    ReadyProbe,
    Resources,
    RetriesConfig,
    RouteConfig,
    RouteMatch,
    RoutesConfig,
    ScaleConfig,
    ServerAddress,
    ServiceConfig,
    ServiceLimits,
    ServiceProxyProtocol,
    TenantQuota,
    TlsConfig,
    UsageConfig,
    WebSocketRouteConfig,
)
from guard.errors import ConfigError, ConfigErrors

__all__ = ["load_config", "load_routes"]


class _Invalid:
    """Marks a value that failed to parse; its error is already recorded."""

    def __repr__(self) -> str:
        return "INVALID"


INVALID: Final = _Invalid()

HTTP_PROTOCOLS: Final = ("http", "https")
PROTOCOLS: Final = ("http", "https", "tcp", "udp")
DRIVERS: Final = ("docker", "process")


# --------------------------------------------------------------------------------- YAML


def _read_yaml(path: Path, shown: str, errors: list[ConfigError]) -> Any:
    """The parsed document (None for an empty file), or INVALID with the error recorded."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        errors.append(ConfigError(shown, "", "is not UTF-8 text"))
        return INVALID
    except OSError as e:
        errors.append(ConfigError(shown, "", f"cannot read: {e.strerror or e}"))
        return INVALID
    try:
        return yaml_fast.load(text)  # StrictLoader's result, faster for the usual files
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = e.problem or e.context or "invalid YAML"
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        errors.append(ConfigError(shown, "", f"{where}{problem}"))
    except yaml.YAMLError as e:
        errors.append(ConfigError(shown, "", f"invalid YAML: {e}"))
    return INVALID


# ------------------------------------------------------------------------ schema walking


@dataclass
class _Ctx:
    """One file being validated: where errors go and what relative paths start from."""

    shown: str  # the file as messages name it
    base: Path  # absolute folder that relative paths in this file resolve against
    errors: list[ConfigError]

    def error(self, key: str, message: str) -> None:
        self.errors.append(ConfigError(self.shown, key, message))

    def mark(self) -> int:
        return len(self.errors)

    def clean_since(self, mark: int) -> bool:
        return len(self.errors) == mark


# A parser turns a raw YAML value at a key path into a model value, or reports and
# returns INVALID. Some take extra keyword context (a name, the enabled drivers).
Parser = Callable[..., Any]


# ------------------------------------------------------------------------- fast path
#
# A reload validates every route (10,000 in < 200 ms with parsing, issue 7), and nearly all
# of them are valid. So sections first try a fast path derived from the same schema: the
# same value functions and checks, without key paths or error bookkeeping, raising _Slow
# at the first problem. Then the normal walk runs from the start and reports every problem
# with its key path, so messages never come from the fast path. A fast path exists only
# when every parser below it has one; the two build the same value when there is no error.


class _Slow(Exception):
    """The fast path met something to report: take the normal walk."""


class _StrictCtx:
    """Stands in for _Ctx when checks run on the fast path: any error means _Slow."""

    def error(self, key: str, message: str) -> None:
        raise _Slow


_STRICT: Any = _StrictCtx()
_FAST_PATHS = True  # tests turn it off to compare against the normal walk

# parser -> ``raw -> value`` that raises _Slow or ValueError instead of reporting
_FAST: dict[Parser, Callable[..., Any]] = {}


def _fast_fields(
    schema: Mapping[str, Callable[[Any], Any]], node: Any, required: frozenset[str]
) -> dict[str, Any]:
    """_fields for the fast path: ``schema`` holds the fast functions."""
    if node is None:
        node = {}
    elif node.__class__ is not dict:
        raise _Slow
    values: dict[str, Any] = {}
    for key, raw in node.items():
        parse = schema.get(key)  # YAML keys are hashable; no other type equals a str
        if parse is None:
            raise _Slow
        values[key] = parse(raw)
    if required and not node.keys() >= required:
        raise _Slow
    return values


def _fast_schema(schema: Mapping[str, Parser]) -> dict[str, Callable[..., Any]] | None:
    fast: dict[str, Callable[..., Any]] = {}
    for key, parser in schema.items():
        found = _FAST.get(parser)
        if found is None:
            return None
        fast[key] = found
    return fast


def _key(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _one_of(options: Collection[str]) -> str:
    return ", ".join(options)


def _unknown(key: Any, allowed: Collection[str]) -> str:
    message = f"unknown key {key!r}"
    if isinstance(key, str) and (close := difflib.get_close_matches(key, allowed, n=1)):
        message += f" (did you mean {close[0]!r}?)"
    return message


def _fields(
    ctx: _Ctx,
    node: Any,
    path: str,
    schema: Mapping[str, Parser],
    required: Collection[str] = (),
) -> dict[str, Any] | None:
    """Parse a mapping key by key. A missing section (null) reads as an empty mapping."""
    if node is None:
        node = {}
    if not isinstance(node, dict):
        ctx.error(path, "must be a mapping")
        return None
    values: dict[str, Any] = {}
    for key, raw in node.items():
        parser = schema.get(key) if isinstance(key, str) else None
        if parser is None:
            ctx.error(path, _unknown(key, schema))
            continue
        value = parser(ctx, raw, f"{path}.{key}" if path else key)
        if value is not INVALID:
            values[key] = value
    for key in required:
        if key not in node:
            ctx.error(path, f"missing required key '{key}'")
    return values


def _unit(fn: Callable[[Any], Any]) -> Parser:
    """Lift a plain ``value -> result`` function that raises ValueError into a parser."""

    def parse(ctx: _Ctx, raw: Any, path: str) -> Any:
        try:
            return fn(raw)
        except ValueError as e:
            ctx.error(path, str(e))
            return INVALID

    _FAST[parse] = fn
    return parse


Check = Callable[[_Ctx, dict[str, Any], dict[str, Any], str], None]


def _section(
    build: Callable[..., Any],
    schema: Mapping[str, Parser],
    required: Collection[str] = (),
    check: Check | None = None,
) -> Parser:
    """A mapping parsed by ``schema``, checked as a whole, then passed to ``build``.

    ``check(ctx, values, raw, path)`` holds the cross-key rules and may adjust values. It
    runs even when some keys failed (so their rules are reported too): it must use
    ``values.get`` and skip a rule whose inputs are missing (see ``_valid``).
    Keyword context given to the parser (e.g. ``name=``) goes to ``build`` too.
    """

    def parse(ctx: _Ctx, raw: Any, path: str, **extra: Any) -> Any:
        if fast_schema is not None and _FAST_PATHS:
            try:
                return fast(raw, **extra)
            except (_Slow, ValueError):
                pass
        mark = len(ctx.errors)
        values = _fields(ctx, raw, path, schema, required)
        if values is None:
            return INVALID
        if check is not None:
            check(ctx, values, raw or {}, path)
        return build(**values, **extra) if len(ctx.errors) == mark else INVALID

    def fast(raw: Any, **extra: Any) -> Any:
        values = _fast_fields(fast_schema, raw, required_set)  # type: ignore[arg-type]
        if check is not None:
            check(_STRICT, values, raw or {}, "")
        return build(**values, **extra)

    fast_schema = _fast_schema(schema)
    required_set = frozenset(required)
    if fast_schema is not None:
        _FAST[parse] = fast
    return parse


def _list_of(item: Parser, *, nonempty: bool = False) -> Parser:
    def parse(ctx: _Ctx, raw: Any, path: str) -> Any:
        if not isinstance(raw, list):
            ctx.error(path, "must be a list")
            return INVALID
        if nonempty and not raw:
            ctx.error(path, "must not be empty")
            return INVALID
        parsed = [item(ctx, v, f"{path}[{i}]") for i, v in enumerate(raw)]
        return tuple(v for v in parsed if v is not INVALID)

    fast_item = _FAST.get(item)
    if fast_item is not None:
        each: Callable[..., Any] = fast_item

        def fast(raw: Any) -> Any:
            if not isinstance(raw, list) or (nonempty and not raw):
                raise _Slow
            return tuple([each(v) for v in raw])

        _FAST[parse] = fast
    return parse


def _named(item: Parser) -> Parser:
    """A mapping of name -> settings; each item parser receives ``name=``."""

    def parse(ctx: _Ctx, raw: Any, path: str) -> Any:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            ctx.error(path, "must be a mapping of name to settings")
            return INVALID
        out: dict[str, Any] = {}
        for name, node in raw.items():
            if not isinstance(name, str) or not name:
                ctx.error(path, f"name {name!r} must be a non-empty string")
                continue
            value = item(ctx, node, _key(path, name), name=name)
            if value is not INVALID:
                out[name] = value
        return out

    return parse


def _valid(values: Mapping[str, Any], raw: Mapping[str, Any], *keys: str) -> bool:
    """True when each key either parsed or was left out (so its default stands)."""
    return all(k in values or k not in raw for k in keys)


def _exactly_one(ctx: _Ctx, raw: Mapping[str, Any], path: str, keys: Collection[str]) -> None:
    present = [k for k in keys if k in raw]
    if len(present) != 1:
        found = f" (found {_one_of(present)})" if present else ""
        ctx.error(path, f"needs exactly one of {_one_of(keys)}{found}")


# ----------------------------------------------------------------------- value parsers

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HOST_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?")
_CAPTURE = "{key}"


def _string(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError("must be a string")
    if not v.strip():
        raise ValueError("must not be empty")
    return v


_GUARD_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


def _guard_id(v: Any) -> str:
    if not isinstance(v, str) or not _GUARD_ID.fullmatch(v):
        raise ValueError("must be 1-63 letters, digits, '.', '_' or '-'")
    return v


def _boolean(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError("must be true or false")
    return v


def _integer(low: int | None = None, high: int | None = None) -> Callable[[Any], int]:
    def parse(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError("must be a whole number")
        if low is not None and v < low:
            raise ValueError(f"must be at least {low}")
        if high is not None and v > high:
            raise ValueError(f"must be at most {high}")
        return v

    return parse


def _positive_number(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError("must be a number")
    if v <= 0:
        raise ValueError("must be greater than 0")
    return float(v)


def _choice(*options: str) -> Callable[[Any], str]:
    def parse(v: Any) -> str:
        if v not in options:
            raise ValueError(f"must be one of {_one_of(options)}")
        return str(v)

    return parse


def _duration(positive: bool = False) -> Callable[[Any], float]:
    def parse(v: Any) -> float:
        seconds = units.parse_duration(v)
        if positive and seconds <= 0:
            raise ValueError("must be longer than 0s")
        return seconds

    return parse


def _scalar_text(v: Any) -> str:
    """Env and header values: YAML scalars become the text a shell or client would see."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str | int | float):
        return str(v)
    raise ValueError("must be a string, number or boolean")


def _cidr(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError("must be a CIDR like 10.0.0.0/8")
    try:
        return ipaddress.ip_network(v.strip(), strict=False).with_prefixlen
    except ValueError:
        raise ValueError(f"invalid CIDR {v!r}") from None


def _selector(prefixes: Collection[str], plain: Collection[str] = ()) -> Callable[[Any], str]:
    """``header:NAME``-style selectors (header names lowercased) or plain words."""
    options = [*plain, *(f"{p}:NAME" for p in prefixes)]

    def parse(v: Any) -> str:
        if isinstance(v, str):
            if v in plain:
                return v
            kind, sep, name = v.partition(":")
            if sep and kind in prefixes and _TOKEN.fullmatch(name):
                return f"{kind}:{name.lower()}" if kind == "header" else v
        raise ValueError(f"must be one of {_one_of(options)}")

    return parse


# Exactly the characters for which str.isspace() or ord(c) < 0x20 (re's \s is isspace).
_SPACE_OR_CONTROL = re.compile(r"[\s\x00-\x1f]")


def _url_path(v: Any) -> str:
    if not isinstance(v, str) or not v.startswith("/"):
        raise ValueError("must be a path starting with /")
    if _SPACE_OR_CONTROL.search(v):
        raise ValueError("must not contain spaces or control characters")
    return v


# Valid host patterns seen so far. A big route file repeats each host on many routes, and
# a reload sees the same hosts again. Bounded so a churn of distinct hosts cannot grow it.
_HOSTS_SEEN: dict[str, str] = {}
_HOSTS_SEEN_MAX = 65536


def _host_pattern(v: Any) -> str:
    """Exact host, ``*.domain`` wildcard, or one whole-label ``{key}`` capture; lowercased."""
    if v.__class__ is str and (seen := _HOSTS_SEEN.get(v)) is not None:
        return seen
    host = _check_host_pattern(v)
    if len(_HOSTS_SEEN) >= _HOSTS_SEEN_MAX:
        _HOSTS_SEEN.clear()
    _HOSTS_SEEN[v] = host
    return host


def _check_host_pattern(v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise ValueError("must be a string")
    host = v.strip().lower()
    if ":" in host:
        raise ValueError("a host pattern takes no port")
    labels = host.split(".")
    wildcard = labels[0] == "*"
    if wildcard:
        labels = labels[1:]
        if not labels:
            raise ValueError("a wildcard needs a domain, e.g. *.example.com")
    captures = 0
    for label in labels:
        if label == _CAPTURE:
            captures += 1
        elif "*" in label:
            raise ValueError("'*' is only allowed as the whole first label, e.g. *.example.com")
        elif "{" in label or "}" in label:
            raise ValueError("a capture must be a whole label written {key}")
        elif not _HOST_LABEL.fullmatch(label):
            raise ValueError(f"invalid host label {label!r}")
    if captures > 1:
        raise ValueError("at most one {key} capture per host")
    if captures and wildcard:
        raise ValueError("use a *. wildcard or a {key} capture, not both")
    return host


def _method(v: Any) -> str:
    if not isinstance(v, str) or not _TOKEN.fullmatch(v):
        raise ValueError("must be an HTTP method like GET")
    return v.upper()


def _headers(v: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(v, dict):
        raise ValueError("must be a mapping of header name to value")
    pairs: dict[str, str] = {}
    for name, value in v.items():
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            raise ValueError(f"invalid header name {name!r}")
        if name.lower() in pairs:
            raise ValueError(f"header {name!r} is listed twice")
        try:
            pairs[name.lower()] = _scalar_text(value)
        except ValueError as e:
            raise ValueError(f"header {name!r}: {e}") from None
    return tuple(pairs.items())


def _env(v: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(v, dict):
        raise ValueError("must be a mapping of variable name to value")
    pairs: list[tuple[str, str]] = []
    for name, value in v.items():
        if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
            raise ValueError(f"invalid variable name {name!r}")
        try:
            pairs.append((name, _scalar_text(value)))
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
    return tuple(pairs)


def _retry_on(v: Any) -> str:
    if v in ("connect_error", "timeout", "reset"):
        return str(v)
    text = str(v) if isinstance(v, int) and not isinstance(v, bool) else v
    if isinstance(text, str) and re.fullmatch(r"[1-5]\d\d", text):
        return text
    raise ValueError("must be connect_error, timeout, reset or a status like 503")


def _udp_payload(v: Any) -> bytes:
    if not isinstance(v, str):
        raise ValueError("must be a string (sent as UTF-8)")
    return v.encode("utf-8")


def _tcp_true(v: Any) -> bool:
    if v is not True:
        raise ValueError("must be true (omit it to use another probe)")
    return True


def _backend(v: Any) -> ServerAddress:
    if isinstance(v, str) and v.strip().startswith(":"):
        raise ValueError("a backend needs a host, e.g. 127.0.0.1:9001")
    return ServerAddress(*units.parse_address(v))


def _workers(v: Any) -> int:
    if v == "auto":
        return os.cpu_count() or 1
    try:
        return _integer(1)(v)
    except ValueError:
        raise ValueError('must be a whole number >= 1 or "auto"') from None


def _path(ctx: _Ctx, raw: Any, path: str) -> Any:
    """A filesystem path, relative to the folder of the file it is written in."""
    try:
        text = _string(raw)
    except ValueError as e:
        ctx.error(path, str(e))
        return INVALID
    return Path(os.path.abspath(ctx.base / os.path.expanduser(text)))


def _pid_file(ctx: _Ctx, raw: Any, path: str) -> Any:
    """Where ``guard run`` writes its pid: a file in a folder that exists."""
    value = _path(ctx, raw, path)
    if value is INVALID:
        return value
    if value.is_dir():
        ctx.error(path, f"{value} is a directory; give a file name, e.g. {value}/guard.pid")
        return INVALID
    if not value.parent.is_dir():
        ctx.error(path, f"no such directory: {value.parent}")
        return INVALID
    return value


def _access_log(ctx: _Ctx, raw: Any, path: str) -> Any:
    if raw == "-":
        return "-"  # stderr
    value = _path(ctx, raw, path)
    return value if value is INVALID else str(value)


# (id of a module-level rules table, protocol) -> the keys that protocol does not take.
_DENIED: dict[tuple[int, str], frozenset[str]] = {}


def _only_for(
    ctx: _Ctx,
    raw: Mapping[str, Any],
    path: str,
    protocol: str,
    rules: Mapping[str, Collection[str]],
) -> None:
    """Report keys that the given listener protocol does not take."""
    denied = _DENIED.get((id(rules), protocol))
    if denied is None:
        denied = frozenset(key for key, protocols in rules.items() if protocol not in protocols)
        _DENIED[id(rules), protocol] = denied
    if raw.keys().isdisjoint(denied):
        return  # the usual case, checked without a loop: it runs twice per route
    for key, protocols in rules.items():
        if key in raw and protocol not in protocols:
            ctx.error(_key(path, key), f"only for {_one_of(protocols)} listeners")


# -------------------------------------------------------------------------- guard.yaml

_TLS = _section(
    TlsConfig,
    {
        "certificates": _list_of(
            _section(CertificateConfig, {"cert": _path, "key": _path}, required=("cert", "key")),
            nonempty=True,
        )
    },
    required=("certificates",),
)

_PROXY_PROTOCOL_ACCEPT = _section(
    ProxyProtocolAccept,
    {"accept": _unit(_boolean), "trusted": _list_of(_unit(_cidr))},
)

_LISTENER_ONLY_FOR: Mapping[str, Collection[str]] = {
    "tls": ("https",),
    "proxy_protocol": ("http", "https", "tcp"),
    "idle": ("tcp",),
    "udp_idle": ("udp",),
    "max_sessions": ("udp",),
}


def _check_listener(ctx: _Ctx, v: dict[str, Any], raw: dict[str, Any], path: str) -> None:
    protocol = v.get("protocol")
    if protocol is not None:
        _only_for(ctx, raw, path, protocol, _LISTENER_ONLY_FOR)
    if protocol == "https" and "tls" not in raw:
        ctx.error(path, "https listeners need tls.certificates with cert and key")
    if "address" in v:
        v["host"], v["port"] = v.pop("address")


_LISTENER = _section(
    ListenerConfig,
    {
        "protocol": _unit(_choice(*PROTOCOLS)),
        "address": _unit(units.parse_address),
        "tls": _TLS,
        "proxy_protocol": _PROXY_PROTOCOL_ACCEPT,
        "idle": _unit(_duration(positive=True)),
        "udp_idle": _unit(_duration(positive=True)),
        "max_sessions": _unit(_integer(1)),
    },
    required=("protocol", "address"),
    check=_check_listener,
)

_SIZE_LIMITS = ("max_header_bytes", "max_body")
_HTTP_LIMITS = _section(
    HttpLimits,
    {
        f.name: _unit(units.parse_size if f.name in _SIZE_LIMITS else _integer(1))
        for f in fields(HttpLimits)
    },
)

# 0s is meaningful only where it means "none" (websocket_idle) or "do not wait" (drain).
_ZERO_OK_TIMEOUTS = ("websocket_idle", "drain")
_HTTP_TIMEOUTS = _section(
    HttpTimeouts,
    {
        f.name: _unit(_duration(positive=f.name not in _ZERO_OK_TIMEOUTS))
        for f in fields(HttpTimeouts)
    },
)

_HTTP = _section(
    HttpConfig,
    {
        "parser": _unit(_choice("httptools", "h11")),
        "trusted_proxies": _list_of(_unit(_cidr)),
        "via": _unit(_boolean),
        "access_log": _access_log,
        "limits": _HTTP_LIMITS,
        "timeouts": _HTTP_TIMEOUTS,
    },
)


def _domain(v: Any) -> str:
    host = _host_pattern(v)
    if host.startswith("*") or _CAPTURE in host:
        raise ValueError("must be a plain domain like containers.localhost")
    return host


_CONTAINERS = _section(
    ContainersConfig,
    {
        "domain": _unit(_domain),
        "listener": _unit(_string),
        "tcp_ports": _unit(units.parse_port_range),
    },
)


def _check_token(ctx: _Ctx, v: dict[str, Any], raw: dict[str, Any], path: str) -> None:
    _exactly_one(ctx, raw, path, ("token_env", "token_file"))


def _env_name(v: Any) -> str:
    if not isinstance(v, str) or not _ENV_NAME.fullmatch(v):
        raise ValueError("must be an environment variable name")
    return v


_ADMIN_TOKEN = _section(
    AdminToken,
    {"tenant": _unit(_string), "token_env": _unit(_env_name), "token_file": _path},
    required=("tenant",),
    check=_check_token,
)


def _check_admin(ctx: _Ctx, v: dict[str, Any], raw: dict[str, Any], path: str) -> None:
    if "address" in v:
        v["host"], v["port"] = v.pop("address")


_ADMIN = _section(
    AdminConfig,
    {"address": _unit(units.parse_address), "tokens": _list_of(_ADMIN_TOKEN)},
    required=("address",),
    check=_check_admin,
)

_DRIVERS = _section(
    DriversConfig,
    {
        "process": _section(ProcessDriverConfig, {}),
        "docker": _section(
            DockerDriverConfig,
            {
                "socket": _unit(_string),
                "network": _unit(_string),
                "guard_id": _unit(_guard_id),
            },
        ),
    },
)

_USAGE = _section(
    UsageConfig,
    {"ledger": _path, "flush": _unit(_duration(positive=True))},
    required=("ledger",),
)

_TENANT = _section(
    TenantQuota,
    {
        "max_containers": _unit(_integer(0)),
        "max_cpu": _unit(units.parse_cpu),
        "max_memory": _unit(units.parse_size),
    },
)

_GUARD: Mapping[str, Parser] = {
    "workers": _unit(_workers),
    "routes": _unit(_string),
    "listeners": _named(_LISTENER),
    "http": _HTTP,
    "containers": _CONTAINERS,
    "admin": _ADMIN,
    "drivers": _DRIVERS,
    "usage": _USAGE,
    "tenants": _named(_TENANT),
    "pid_file": _pid_file,
}


def _listener_protocols(raw: Any, parsed: Mapping[str, ListenerConfig]) -> dict[str, str | None]:
    """name -> protocol for every listener written, even broken ones.

    Routes are checked against this so that a listener with a bad address does not also
    produce "no listener" errors in every route file; None means the protocol is unknown.
    """
    out: dict[str, str | None] = {}
    for name, node in (raw or {}).items() if isinstance(raw, dict) else ():
        if name in parsed:
            out[name] = parsed[name].protocol
        else:
            protocol = node.get("protocol") if isinstance(node, dict) else None
            out[name] = protocol if protocol in PROTOCOLS else None
    return out


def _check_ports(ctx: _Ctx, values: Mapping[str, Any]) -> None:
    """Two sockets on one port fail at bind time; say so while the config is being read."""
    taken: dict[tuple[str, int], list[tuple[str, str, str]]] = {}
    binds: list[tuple[str, str, str, int]] = [
        (f"listeners.{name}.address", name, lst.host, lst.port)
        for name, lst in values.get("listeners", {}).items()
        if isinstance(lst, ListenerConfig)
    ]
    protocols = {name: lst.protocol for name, lst in values.get("listeners", {}).items()}
    if isinstance(admin := values.get("admin"), AdminConfig):
        binds.append(("admin.address", "admin API", admin.host, admin.port))
        protocols["admin API"] = "http"
    for key, name, host, port in binds:
        family = "udp" if protocols[name] == "udp" else "tcp"
        for other_key, other, other_host in taken.get((family, port), []):
            if host == other_host or "0.0.0.0" in (host, other_host) or "::" in (host, other_host):
                ctx.error(key, f"port {port} is already used by {other} ({other_key})")
                break
        taken.setdefault((family, port), []).append((key, name, host))


def _check_guard(ctx: _Ctx, values: dict[str, Any]) -> None:
    _check_ports(ctx, values)
    containers = values.get("containers")
    listeners = values.get("listeners", {})
    if isinstance(containers, ContainersConfig) and containers.listener is not None:
        listener = listeners.get(containers.listener)
        if listener is None:
            ctx.error("containers.listener", f"no listener named {containers.listener!r}")
        elif listener.protocol not in HTTP_PROTOCOLS:
            ctx.error("containers.listener", "must name an http or https listener")


def _enabled_drivers(values: Mapping[str, Any], raw: Any) -> set[str] | None:
    drivers = values.get("drivers")
    if isinstance(drivers, DriversConfig):
        return {name for name in DRIVERS if getattr(drivers, name) is not None}
    if isinstance(raw, dict) and "drivers" not in raw:
        return set()
    return None  # drivers section is broken: its own error says so; don't pile on


# ----------------------------------------------------------------------- routes/*.yaml


def _check_match(ctx: _Ctx, v: dict[str, Any], raw: dict[str, Any], path: str) -> None:
    if "path" in raw and "path_prefix" in raw:
        ctx.error(path, "set path or path_prefix, not both")


_MATCH = _section(
    RouteMatch,
    {
        "host": _unit(_host_pattern),
        "path_prefix": _unit(_url_path),
        "path": _unit(_url_path),
        "methods": _list_of(_unit(_method)),
        "headers": _unit(_headers),
        "sni": _unit(_host_pattern),
    },
    check=_check_match,
)


def _check_rate_limit(ctx: _Ctx, v: dict[str, Any], raw: dict[str, Any], path: str) -> None:
    # Without an explicit burst, allow one second's worth of requests at once.
    if "average" in v and "burst" not in raw:
        v["burst"] = max(1, math.ceil(v["average"]))
    v.setdefault("by", "client_ip")


_RATE_LIMIT = _section(
    RateLimitConfig,
    {
        "average": _unit(_positive_number),
        "burst": _unit(_integer(1)),
        "by": _unit(_selector(("header",), ("client_ip", "tenant"))),
    },
    required=("average",),
    check=_check_rate_limit,
)

_ROUTE: Mapping[str, Parser] = {
    "name": _unit(_string),
    "listener": _unit(_string),
    "service": _unit(_string),
    "match": _MATCH,
    "strip_prefix": _unit(_boolean),
    "priority": _unit(_integer()),
    "websocket": _section(
        WebSocketRouteConfig, {"max_message": _unit(units.parse_size)}, required=("max_message",)
    ),
    "rate_limit": _RATE_LIMIT,
}

_ROUTE_FAST: Final = _fast_schema(_ROUTE)

# Which match keys (and route keys) each listener protocol takes.
_MATCH_ONLY_FOR: Mapping[str, Collection[str]] = {
    "host": HTTP_PROTOCOLS,
    "path_prefix": HTTP_PROTOCOLS,
    "path": HTTP_PROTOCOLS,
    "methods": HTTP_PROTOCOLS,
    "headers": HTTP_PROTOCOLS,
    "sni": ("tcp",),
}
_ROUTE_ONLY_FOR: Mapping[str, Collection[str]] = {
    "strip_prefix": HTTP_PROTOCOLS,
    "websocket": HTTP_PROTOCOLS,
}


def _check_ready(ctx: _Ctx, v: dict[str, Any], raw: dict[str, Any], path: str) -> None:
    _exactly_one(ctx, raw, path, ("http", "tcp", "udp", "delay"))


_READY = _section(
    ReadyProbe,
    {
        "http": _unit(_url_path),
        "tcp": _unit(_tcp_true),
        "udp": _unit(_udp_payload),
        "delay": _unit(_duration()),
    },
    check=_check_ready,
)


def _check_container(ctx: _Ctx, v: dict[str, Any], raw: dict[str, Any], path: str) -> None:
    driver = v.get("driver")
    if driver == "docker" and "image" not in raw:
        ctx.error(path, "driver docker needs image")
    if driver == "process":
        if "command" not in raw:
            ctx.error(path, "driver process needs command: [program, args...]")
        if "image" in raw:
            ctx.error(_key(path, "image"), "only for driver docker")


_CONTAINER = _section(
    ContainerSpec,
    {
        "driver": _unit(_choice(*DRIVERS)),
        "image": _unit(_string),
        "command": _list_of(_unit(_string), nonempty=True),
        "env": _unit(_env),
        "port": _unit(units.parse_port),
        "resources": _section(
            Resources, {"cpu": _unit(units.parse_cpu), "memory": _unit(units.parse_size)}
        ),
        "ready": _READY,
        "stop_timeout": _unit(_duration()),
    },
    required=("driver",),
    check=_check_container,
)


def _check_scale(ctx: _Ctx, v: dict[str, Any], raw: dict[str, Any], path: str) -> None:
    scale = ScaleConfig(**v)
    if _valid(v, raw, "min", "max") and scale.min > scale.max:
        ctx.error(_key(path, "min"), f"must not exceed max ({scale.max})")
    if scale.target_cpu is not None and scale.target_cpu <= 0:
        ctx.error(_key(path, "target_cpu"), "must be above 0%")
    window_keys = ("panic_window", "stable_window")
    if _valid(v, raw, *window_keys) and scale.panic_window > scale.stable_window:
        ctx.error(_key(path, "panic_window"), "must not exceed stable_window")


_SCALE = _section(
    ScaleConfig,
    {
        "min": _unit(_integer(0)),
        "max": _unit(_integer(1)),
        "target_concurrency": _unit(_integer(1)),
        "target_cpu": _unit(units.parse_percent),
        "max_concurrency": _unit(_integer(0)),
        "sleep_after": _unit(_duration()),
        "wake_timeout": _unit(_duration(positive=True)),
        "queue": _unit(_integer(0)),
        "stable_window": _unit(_duration(positive=True)),
        "panic_window": _unit(_duration(positive=True)),
        "scale_down_delay": _unit(_duration()),
    },
    check=_check_scale,
)


def _check_health(ctx: _Ctx, v: dict[str, Any], raw: dict[str, Any], path: str) -> None:
    _exactly_one(ctx, raw, path, ("http", "tcp"))


_HEALTH = _section(
    HealthConfig,
    {
        "http": _unit(_url_path),
        "tcp": _unit(_tcp_true),
        "interval": _unit(_duration(positive=True)),
        "timeout": _unit(_duration(positive=True)),
        "unhealthy_after": _unit(_integer(1)),
        "healthy_after": _unit(_integer(1)),
    },
    check=_check_health,
)

_RETRIES = _section(
    RetriesConfig,
    {
        "attempts": _unit(_integer(0)),
        "on": _list_of(_unit(_retry_on)),
        "budget": _unit(units.parse_percent),
    },
)


def _check_service(ctx: _Ctx, v: dict[str, Any], raw: dict[str, Any], path: str) -> None:
    _exactly_one(ctx, raw, path, ("servers", "container"))
    if "servers" in raw:
        for key in ("scale", "per_key", "key"):
            if key in raw:
                ctx.error(_key(path, key), "only for container services")
    if "key" in raw and _valid(v, raw, "per_key") and v.get("per_key") is not True:
        ctx.error(_key(path, "key"), "needs per_key: true")
    if not _valid(v, raw, "balance"):
        return
    balance = v.get("balance", "round_robin")
    if balance == "hash" and "hash_on" not in raw:
        ctx.error(path, "balance hash needs hash_on")
    if balance != "hash" and "hash_on" in raw:
        ctx.error(_key(path, "hash_on"), "only with balance: hash")
    if "container" in raw:
        v.setdefault("scale", ScaleConfig())  # so the data plane never meets scale=None


_SERVICE = _section(
    ServiceConfig,
    {
        "servers": _list_of(_unit(_backend), nonempty=True),
        "container": _CONTAINER,
        "scale": _SCALE,
        "per_key": _unit(_boolean),
        "key": _unit(_selector(("header",))),
        "balance": _unit(_choice("round_robin", "least_request", "p2c", "hash")),
        "hash_on": _unit(_selector(("header", "cookie"), ("client_ip", "path"))),
        "health": _HEALTH,
        "retries": _RETRIES,
        "proxy_protocol": _section(
            ServiceProxyProtocol, {"send": _unit(_choice("v1", "v2"))}, required=("send",)
        ),
        "limits": _section(
            ServiceLimits, {f.name: _unit(_integer(1)) for f in fields(ServiceLimits)}
        ),
        "outlier": _section(
            OutlierConfig,
            {
                "consecutive_errors": _unit(_integer(1)),
                "base_ejection": _unit(_duration(positive=True)),
            },
        ),
    },
    check=_check_service,
)


@dataclass
class _RouteFile:
    """One route file after its top level was read: entries still raw."""

    ctx: _Ctx
    source: Path
    routes: list[Any] = field(default_factory=list)
    services: dict[str, Any] = field(default_factory=dict)
    # see _ROUTES_OF: the routes of the last load of this file, and of this one
    last_routes: dict[bytes, tuple[dict[str, Any], RouteConfig]] = field(default_factory=dict)
    routes_now: dict[bytes, tuple[dict[str, Any], RouteConfig]] = field(default_factory=dict)


@dataclass
class _RouteTable:
    """Accumulates routes and services across files, remembering where each came from."""

    protocols: Mapping[str, str | None]
    drivers: set[str] | None  # None: unknown, skip the enabled-driver check
    routes: list[RouteConfig] = field(default_factory=list)
    services: dict[str, ServiceConfig] = field(default_factory=dict)
    route_origin: dict[str, str] = field(default_factory=dict)
    service_origin: dict[str, str] = field(default_factory=dict)


def _route_files(path: Path, shown: str) -> list[tuple[Path, str]]:
    if path.is_dir():
        # Dot-files are editor swap and backup files, never route files.
        names = sorted(
            p.name
            for p in path.iterdir()
            if p.suffix in (".yaml", ".yml") and not p.name.startswith(".") and p.is_file()
        )
        return [(path / name, os.path.join(shown, name)) for name in names]
    return [(path, shown)]


# Parsed route files by absolute path: (stat key, document). A reload re-parses only the
# files that changed; deployments with many routes usually spread them over many files.
# Cached documents are shared between loads, so validation must never modify raw values.
_PARSED: dict[str, tuple[tuple[int, ...], Any]] = {}
# File timestamps are only as fine as the file system's clock tick, so a file rewritten
# twice within one tick can keep its mtime, ctime and size. As git does for "racily clean"
# entries, a file changed this recently is parsed every time and not remembered.
_RACY_NS = 2_000_000_000
_MAX_FILES = 10_000


def _read_route_yaml(file: Path, shown: str, errors: list[ConfigError]) -> Any:
    """_read_yaml through the parse cache."""
    name = str(file)
    try:
        st = os.stat(name)
    except OSError:
        _PARSED.pop(name, None)
        return _read_yaml(file, shown, errors)  # says why it cannot be read
    key = (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino, st.st_dev)
    cached = _PARSED.get(name)
    if cached is not None and cached[0] == key:
        return cached[1]
    doc = _read_yaml(file, shown, errors)
    if doc is not INVALID and time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > _RACY_NS:
        if len(_PARSED) >= _MAX_FILES:
            _PARSED.clear()  # only ever loading new paths (tests): don't grow for ever
        _PARSED[name] = (key, doc)
    else:
        _PARSED.pop(name, None)
    return doc


def _forget_missing(folder: Path, listing: list[tuple[Path, str]]) -> None:
    """Drop cache entries of files no longer in a route folder."""
    listed = {str(file) for file, _ in listing}
    prefix = os.path.join(str(folder), "")
    for cache in (_PARSED, _ROUTES_OF):
        for name in list(cache):  # a copy: another thread may be loading too
            if name.startswith(prefix) and name not in listed:
                cache.pop(name, None)


def _read_route_file(file: Path, shown: str, errors: list[ConfigError]) -> _RouteFile | None:
    ctx = _Ctx(shown, file.parent, errors)
    doc = _read_route_yaml(file, shown, errors)
    if doc is INVALID:
        return None
    top = _fields(
        ctx,
        doc,
        "",
        {"routes": lambda c, raw, p: raw, "services": lambda c, raw, p: raw},
    )
    if top is None:
        return None
    parsed = _RouteFile(ctx, file, last_routes=_ROUTES_OF.get(str(file), {}))
    routes, services = top.get("routes"), top.get("services")
    if isinstance(routes, list):
        parsed.routes = routes
    elif routes is not None:
        ctx.error("routes", "must be a list of routes")
    if isinstance(services, dict):
        parsed.services = services
    elif services is not None:
        ctx.error("services", "must be a mapping of service name to settings")
    return parsed


def _add_service(table: _RouteTable, file: _RouteFile, name: Any, raw: Any) -> None:
    ctx = file.ctx
    path = f"services.{name}"
    if not isinstance(name, str) or not name:
        ctx.error("services", f"service name {name!r} must be a non-empty string")
        return
    if name in table.service_origin:
        ctx.error(path, f"duplicate service {name!r}, also defined in {table.service_origin[name]}")
        return
    table.service_origin[name] = ctx.shown
    _check_driver_enabled(table, ctx, raw, path)
    service = _SERVICE(ctx, raw, path, name=name, source=file.source)
    if service is not INVALID:
        table.services[name] = service


def _check_driver_enabled(table: _RouteTable, ctx: _Ctx, raw: Any, path: str) -> None:
    """Checked on the raw value so it is reported even when the service has other errors."""
    container = raw.get("container") if isinstance(raw, dict) else None
    driver = container.get("driver") if isinstance(container, dict) else None
    if table.drivers is None or driver not in DRIVERS or driver in table.drivers:
        return
    ctx.error(
        f"{path}.container.driver",
        f"driver {driver!r} is not enabled: add drivers.{driver} to guard.yaml",
    )


def _check_route_refs(
    table: _RouteTable, ctx: _Ctx, raw: dict[str, Any], values: dict[str, Any], path: str
) -> None:
    """The cross-file rules: listener and service exist, match fits the listener protocol."""
    listener, service = values.get("listener"), values.get("service")
    if listener is not None and listener not in table.protocols:
        have = _one_of(table.protocols) or "none"
        ctx.error(_key(path, "listener"), f"no listener {listener!r} in guard.yaml (have: {have})")
    if service is not None and service not in table.service_origin:
        ctx.error(_key(path, "service"), f"no service {service!r} in any route file")
    protocol = table.protocols.get(listener or "")
    if protocol is None:
        return  # unknown listener or protocol: already reported
    match_raw = raw.get("match")
    if protocol == "udp" and match_raw:
        ctx.error(_key(path, "match"), "udp routes take no match: the listener owns the port")
    elif isinstance(match_raw, dict):
        _only_for(ctx, match_raw, _key(path, "match"), protocol, _MATCH_ONLY_FOR)
    _only_for(ctx, raw, path, protocol, _ROUTE_ONLY_FOR)
    rate_limit = values.get("rate_limit")
    if rate_limit and rate_limit.by.startswith("header:") and protocol not in HTTP_PROTOCOLS:
        ctx.error(_key(path, "rate_limit.by"), "header selectors need an http or https listener")


_NO_MATCH: Final = RouteMatch()


def _check_route_shape(ctx: _Ctx, values: dict[str, Any], table: _RouteTable, path: str) -> None:
    match: RouteMatch = values.get("match", _NO_MATCH)
    if values.get("strip_prefix") and match.path_prefix is None:
        ctx.error(_key(path, "strip_prefix"), "needs match.path_prefix")
    service = table.services.get(values.get("service", ""))
    if service is not None and service.per_key and service.key is None:
        pattern = match.host or match.sni or ""
        if _CAPTURE not in pattern:
            ctx.error(
                _key(path, "service"),
                f"service {service.name!r} is per_key: the route needs a {{key}} capture in "
                "match.host (or match.sni), or the service needs key: header:NAME",
            )


_ROUTE_REQUIRED: Final = ("name", "listener", "service")
_ROUTE_REQUIRED_SET: Final = frozenset(_ROUTE_REQUIRED)


# Per route file, the routes of its last load: the raw route's bytes -> (values, route).
# An edit to a big file changes a few routes; the others skip their own checks and the
# model objects (~2/3 of validating a route) and only go through the cross-file rules.
# marshal (format 2: no back-references) is an exact key: it encodes the type of every
# value (True, 1 and 1.0 differ) and the key order, and is 2x faster than repr.
_ROUTES_OF: dict[str, dict[bytes, tuple[dict[str, Any], RouteConfig]]] = {}


def _add_route_fast(table: _RouteTable, file: _RouteFile, index: int, raw: Any) -> bool:
    """_add_route for a route without problems; False (nothing recorded) otherwise."""
    assert _ROUTE_FAST is not None  # (the caller checks)
    try:
        key: bytes | None = marshal.dumps(raw, 2)
    except ValueError:
        key = None  # a type marshal does not know (a YAML timestamp): not remembered
    known = file.last_routes.get(key) if key is not None else None
    try:
        values = known[0] if known else _fast_fields(_ROUTE_FAST, raw, _ROUTE_REQUIRED_SET)
        name = values["name"]
        if name in table.route_origin:
            return False
        _check_route_refs(table, _STRICT, raw, values, "")
        _check_route_shape(_STRICT, values, table, "")
    except (_Slow, ValueError):
        return False
    table.route_origin[name] = f"{file.ctx.shown} routes[{index}]"
    if known is None:
        known = (values, RouteConfig(**values, source=file.source))
    if key is not None:
        file.routes_now[key] = known
    table.routes.append(known[1])
    return True


def _add_route(table: _RouteTable, file: _RouteFile, index: int, raw: Any) -> None:
    if _ROUTE_FAST is not None and _FAST_PATHS and _add_route_fast(table, file, index, raw):
        return
    ctx, path = file.ctx, f"routes[{index}]"
    errors = ctx.errors
    mark = len(errors)
    values = _fields(ctx, raw, path, _ROUTE, required=_ROUTE_REQUIRED)
    if values is None:
        return
    name = values.get("name")
    if name is not None:
        if name in table.route_origin:
            first = table.route_origin[name]
            ctx.error(_key(path, "name"), f"duplicate route {name!r}, also defined in {first}")
        else:
            table.route_origin[name] = f"{ctx.shown} {path}"
    _check_route_refs(table, ctx, raw, values, path)
    if len(errors) == mark:
        _check_route_shape(ctx, values, table, path)
    if len(errors) == mark:
        table.routes.append(RouteConfig(**values, source=file.source))


def _load_route_tree(
    path: Path,
    shown: str,
    protocols: Mapping[str, str | None],
    drivers: set[str] | None,
    errors: list[ConfigError],
) -> RoutesConfig:
    """Read every route file, then services (all files), then routes that refer to them."""
    first_error = len(errors)
    listing = _route_files(path, shown)
    if path.is_dir():
        _forget_missing(path, listing)
    files = [
        parsed
        for file, file_shown in listing
        if (parsed := _read_route_file(file, file_shown, errors)) is not None
    ]
    table = _RouteTable(protocols, drivers)
    for file in files:
        for name, raw in file.services.items():
            _add_service(table, file, name, raw)
    for file in files:
        for index, raw in enumerate(file.routes):
            _add_route(table, file, index, raw)
        if len(_ROUTES_OF) >= _MAX_FILES:
            _ROUTES_OF.clear()  # only ever loading new paths (tests): don't grow for ever
        _ROUTES_OF[str(file.source)] = file.routes_now
    # The passes above interleave files; report file by file, each in its own order.
    order = {file_shown: i for i, (_, file_shown) in enumerate(listing)}
    errors[first_error:] = sorted(errors[first_error:], key=lambda e: order.get(e.file, -1))
    return RoutesConfig(routes=tuple(table.routes), services=table.services)


# ------------------------------------------------------------------------------ public


def _shown_path(path: str | Path) -> str:
    return os.path.normpath(str(path))


def load_routes(
    path: str | Path,
    listeners: Mapping[str, ListenerConfig],
    drivers: DriversConfig | None = None,
) -> RoutesConfig:
    """Load one route file or a directory of them (``*.yaml``/``*.yml``, sorted by name).

    Routes are checked against ``listeners``; container services against ``drivers``
    when given (``None`` skips the enabled-driver check). Raises ConfigErrors listing
    every problem found.
    """
    shown = _shown_path(path)
    errors: list[ConfigError] = []
    absolute = Path(os.path.abspath(path))
    if not absolute.exists():
        raise ConfigErrors([ConfigError(shown, "", "no such file or directory")])
    protocols = {name: lst.protocol for name, lst in listeners.items()}
    enabled = (
        None
        if drivers is None
        else {name for name in DRIVERS if getattr(drivers, name) is not None}
    )
    with gc_paused():
        routes = _load_route_tree(absolute, shown, protocols, enabled, errors)
    if errors:
        raise ConfigErrors(errors)
    return routes


def load_config(path: str | Path) -> GuardConfig:
    """Load guard.yaml and every route file it points to; raise ConfigErrors on any problem."""
    shown = _shown_path(path)
    absolute = Path(os.path.abspath(path))
    errors: list[ConfigError] = []
    ctx = _Ctx(shown, absolute.parent, errors)
    doc = _read_yaml(absolute, shown, errors)
    if doc is INVALID:
        raise ConfigErrors(errors)
    values = _fields(ctx, doc, "", _GUARD)
    if values is None:
        raise ConfigErrors(errors)
    _check_guard(ctx, values)

    routes_value = values.get("routes")
    routes_shown = _shown_path(os.path.join(os.path.dirname(shown), routes_value or "routes"))
    routes_path = Path(os.path.abspath(absolute.parent / (routes_value or "routes")))
    routes = RoutesConfig()
    if routes_value is not None:
        if routes_path.exists():
            raw_listeners = doc.get("listeners") if isinstance(doc, dict) else None
            protocols = _listener_protocols(raw_listeners, values.get("listeners", {}))
            drivers = _enabled_drivers(values, doc)
            with gc_paused():
                routes = _load_route_tree(routes_path, routes_shown, protocols, drivers, errors)
        else:
            ctx.error("routes", f"no such file or directory: {routes_shown}")
    if errors:
        raise ConfigErrors(errors)
    return GuardConfig(
        path=absolute,
        workers=values.get("workers", 1),
        routes_path=routes_path,
        listeners=values.get("listeners", {}),
        http=values.get("http", HttpConfig()),
        containers=values.get("containers", ContainersConfig()),
        admin=values.get("admin"),
        drivers=values.get("drivers", DriversConfig()),
        usage=values.get("usage"),
        tenants=values.get("tenants", {}),
        pid_file=values.get("pid_file"),
        routes=routes,
    )
