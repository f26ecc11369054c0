"""The config loader against the contract: the shared examples load, every mistake is named."""

from __future__ import annotations

import os
import shutil
import textwrap
from pathlib import Path

import pytest

from guard.config import (
    ListenerConfig,
    ReadyProbe,
    ScaleConfig,
    load_config,
    load_routes,
)
from guard.errors import ConfigErrors

EXAMPLES = Path("/work/shared/examples")

GUARD = """\
workers: 2
routes: routes
listeners:
  web:  {protocol: http, address: "127.0.0.1:8080"}
  webs: {protocol: https, address: "127.0.0.1:8443",
         tls: {certificates: [{cert: certs/a.pem, key: certs/a.key}]}}
  pg:   {protocol: tcp, address: "127.0.0.1:15432", idle: 1h,
         proxy_protocol: {accept: true, trusted: [127.0.0.1/32]}}
  dns:  {protocol: udp, address: "127.0.0.1:15353", udp_idle: 30s, max_sessions: 1000}
drivers:
  process: {}
  docker: {socket: unix:///var/run/docker.sock, network: host}
"""

ROUTES_OK = """\
routes:
  - name: app
    listener: web
    match: {host: App.Localhost, path_prefix: /, methods: [get, POST], headers: {X-Canary: 1}}
    service: app
services:
  app:
    servers: ["127.0.0.1:9001"]
"""


def write(tmp_path: Path, guard: str = GUARD, **routes: str) -> Path:
    """guard.yaml plus route files named by keyword (``a_yaml="..."`` -> routes/a.yaml)."""
    (tmp_path / "guard.yaml").write_text(textwrap.dedent(guard))
    folder = tmp_path / "routes"
    folder.mkdir(exist_ok=True)
    for name, text in routes.items():
        stem, _, ext = name.rpartition("_")
        (folder / f"{stem}.{ext}").write_text(textwrap.dedent(text))
    return tmp_path / "guard.yaml"


def errors_of(path: Path) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        load_config(path)
    return [str(e) for e in info.value.errors]


def assert_error(lines: list[str], file: str, key: str, fragment: str = "") -> None:
    wanted = f"{file}: {key}: " if key else f"{file}: "
    hits = [line for line in lines if wanted in line and fragment in line]
    assert hits, f"no error with {wanted!r} and {fragment!r} in:\n" + "\n".join(lines)


# ------------------------------------------------------------------------ good configs


def test_shared_examples_load() -> None:
    cfg = load_config(EXAMPLES / "guard.yaml")
    assert cfg.workers == 1
    assert cfg.path == EXAMPLES / "guard.yaml"
    assert cfg.routes_path == EXAMPLES / "routes"
    assert {n: lst.port for n, lst in cfg.listeners.items()} == {
        "web": 18080,
        "echo-tcp": 18081,
        "echo-udp": 18053,
    }
    assert cfg.listeners["echo-udp"].protocol == "udp"
    assert (cfg.admin.host, cfg.admin.port) == ("127.0.0.1", 19901)  # type: ignore[union-attr]
    assert cfg.drivers.process is not None and cfg.drivers.docker is None
    assert cfg.usage is not None and cfg.usage.ledger == EXAMPLES / "data" / "usage.sqlite"

    routes = {r.name: r for r in cfg.routes.routes}
    assert list(routes) == ["hello", "api-v1", "sandbox", "echo-tcp", "echo-udp"]
    assert routes["api-v1"].match.path_prefix == "/api/v1" and routes["api-v1"].strip_prefix
    assert routes["sandbox"].match.host == "{key}.sandbox.localhost"
    assert routes["hello"].source == EXAMPLES / "routes" / "demo.yaml"

    services = cfg.routes.services
    hello = services["hello"]
    assert hello.container is not None
    assert hello.container.command == ("python3", "-m", "guard.demo", "http")
    assert hello.container.ready == ReadyProbe(http="/healthz")
    assert hello.scale == ScaleConfig(
        min=0, max=4, target_concurrency=20, sleep_after=30.0, wake_timeout=10.0
    )
    assert services["sandbox"].per_key is True
    assert services["sandbox"].scale is not None and services["sandbox"].scale.sleep_after == 20.0
    assert services["echo-tcp"].container.ready.tcp is True  # type: ignore[union-attr]
    assert services["echo-udp"].container.ready.udp == b"ping"  # type: ignore[union-attr]
    assert services["echo-udp"].scale == ScaleConfig(min=1, max=1)


def test_spec_keys_load_with_units(tmp_path: Path) -> None:
    guard = (
        GUARD
        + """\
http:
  parser: h11
  trusted_proxies: [10.0.0.0/8, "::1"]
  via: true
  access_log: logs/access.log
  limits: {max_header_bytes: 16KiB, max_headers: 100, max_body: 100MiB,
           max_requests_per_connection: 1000, max_connections: 10000, max_connections_per_ip: 256}
  timeouts: {connect: 5s, request_header: 10s, response_header: 60s, idle: 60s,
             websocket_idle: 0s, tls_handshake: 10s, body_read: 30s, drain: 1m}
containers: {domain: containers.localhost, listener: web, tcp_ports: 20000-20999}
admin:
  address: ":9901"
  tokens:
    - {token_env: GUARD_ADMIN_TOKEN, tenant: "*"}
    - {token_file: secrets/a.token, tenant: a}
usage: {ledger: ../data/usage.sqlite, flush: 250ms}
tenants:
  a: {max_containers: 20, max_cpu: 8, max_memory: 16GiB}
"""
    )
    routes = """\
    routes:
      - name: chat
        listener: webs
        match: {host: "*.chat.localhost", path: /ws}
        service: chat
        priority: 5
        websocket: {max_message: 16MiB}
        rate_limit: {average: 100, burst: 50, by: header:X-User}
      - name: pg
        listener: pg
        match: {sni: DB.localhost}
        service: pg
      - name: dns
        listener: dns
        service: dns
    services:
      chat:
        servers: ["127.0.0.1:9003", "[::1]:9004"]
        balance: hash
        hash_on: header:X-User-Id
        health: {http: /healthz, interval: 2s, timeout: 1s, unhealthy_after: 3, healthy_after: 2}
        retries: {attempts: 2, on: [connect_error, "503", 502, timeout], budget: 20%}
        limits: {max_connections: 1024, max_pending: 1024, max_in_flight: 1024}
        outlier: {consecutive_errors: 5, base_ejection: 30s}
      pg:
        servers: ["db:5432"]
        proxy_protocol: {send: v2}
      dns:
        container:
          driver: docker
          image: dns:latest
          command: ["/dns"]
          env: {MODE: demo, N: 3, ON: true, F: 1.5}
          port: 5353
          resources: {cpu: 500m, memory: 256MiB}
          ready: {delay: 200ms}
          stop_timeout: 10s
        scale: {min: 0, max: 10, target_concurrency: 10, target_cpu: 70%, max_concurrency: 0,
                sleep_after: 5m, wake_timeout: 30s, queue: 1000, stable_window: 60s,
                panic_window: 6s, scale_down_delay: 30s}
        per_key: true
        key: header:X-Tenant
    """
    cfg = load_config(write(tmp_path, guard, r_yaml=routes))
    base = Path(os.path.abspath(tmp_path))

    webs = cfg.listeners["webs"]
    assert webs.tls is not None and webs.tls.certificates[0].cert == base / "certs" / "a.pem"
    pg = cfg.listeners["pg"]
    assert pg.idle == 3600.0 and pg.proxy_protocol is not None
    assert pg.proxy_protocol.trusted == ("127.0.0.1/32",)
    assert cfg.listeners["dns"] == ListenerConfig(
        "dns", "udp", "127.0.0.1", 15353, udp_idle=30.0, max_sessions=1000
    )
    assert cfg.workers == 2
    assert cfg.http.parser == "h11" and cfg.http.via is True
    assert cfg.http.trusted_proxies == ("10.0.0.0/8", "::1/128")
    assert cfg.http.access_log == str(base / "logs" / "access.log")
    assert cfg.http.limits.max_body == 100 * 1024**2
    assert cfg.http.timeouts.drain == 60.0 and cfg.http.timeouts.websocket_idle == 0.0
    assert cfg.containers.tcp_ports == (20000, 20999)
    assert cfg.admin is not None and cfg.admin.host == "0.0.0.0"
    assert cfg.admin.tokens[1].token_file == base / "secrets" / "a.token"
    assert cfg.usage is not None and cfg.usage.ledger == base.parent / "data" / "usage.sqlite"
    assert cfg.usage.flush == 0.25
    assert cfg.tenants["a"].max_memory == 16 * 1024**3 and cfg.tenants["a"].max_cpu == 8.0

    chat = cfg.routes.routes[0]
    assert chat.match.path == "/ws" and chat.priority == 5
    assert chat.websocket is not None and chat.websocket.max_message == 16 * 1024**2
    assert chat.rate_limit is not None and chat.rate_limit.by == "header:x-user"
    assert cfg.routes.routes[1].match.sni == "db.localhost"

    chat_svc = cfg.routes.services["chat"]
    assert [str(s) for s in chat_svc.servers] == ["127.0.0.1:9003", "[::1]:9004"]
    assert chat_svc.hash_on == "header:x-user-id"
    assert chat_svc.retries is not None
    assert chat_svc.retries.on == ("connect_error", "503", "502", "timeout")
    assert chat_svc.retries.budget == pytest.approx(0.2)
    assert chat_svc.outlier is not None and chat_svc.outlier.base_ejection == 30.0
    assert cfg.routes.services["pg"].proxy_protocol is not None

    dns = cfg.routes.services["dns"]
    assert dns.container is not None
    assert dict(dns.container.env) == {"MODE": "demo", "N": "3", "ON": "true", "F": "1.5"}
    assert dns.container.resources.cpu == 0.5
    assert dns.container.resources.memory == 256 * 1024**2
    assert dns.container.ready == ReadyProbe(delay=0.2)
    assert dns.scale is not None and dns.scale.target_cpu == pytest.approx(0.7)
    assert dns.scale.sleep_after == 300.0 and dns.key == "header:x-tenant"


def test_match_is_normalised(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, a_yaml=ROUTES_OK))
    match = cfg.routes.routes[0].match
    assert match.host == "app.localhost"
    assert match.methods == ("GET", "POST")
    assert match.headers == (("x-canary", "1"),)


def test_container_defaults(tmp_path: Path) -> None:
    routes = """\
    services:
      s: {container: {driver: process, command: [app]}}
    """
    cfg = load_config(write(tmp_path, a_yaml=routes))
    service = cfg.routes.services["s"]
    assert service.container is not None and service.container.ready == ReadyProbe(tcp=True)
    assert service.scale == ScaleConfig()


def test_workers_auto_and_yml_files_sorted(tmp_path: Path) -> None:
    one = "routes: [{name: one, listener: web, service: app}]\n"
    two = ROUTES_OK.replace("name: app", "name: two")
    cfg = load_config(
        write(tmp_path, GUARD.replace("workers: 2", "workers: auto"), b_yml=one, a_yaml=two)
    )
    assert cfg.workers == (os.cpu_count() or 1)
    assert [r.name for r in cfg.routes.routes] == ["two", "one"]


def test_routes_key_may_name_one_file(tmp_path: Path) -> None:
    path = write(
        tmp_path, GUARD.replace("routes: routes", "routes: routes/a.yaml"), a_yaml=ROUTES_OK
    )
    assert [r.name for r in load_config(path).routes.routes] == ["app"]


def test_no_routes_key_means_no_routes(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GUARD.replace("routes: routes\n", ""), a_yaml=ROUTES_OK))
    assert cfg.routes.routes == () and cfg.routes.services == {}


def test_load_routes_alone_for_reload(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, a_yaml=ROUTES_OK))
    routes = load_routes(tmp_path / "routes", cfg.listeners, cfg.drivers)
    assert routes == cfg.routes


def test_examples_copied_elsewhere_still_load(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLES, tmp_path / "ex")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        cfg = load_config("ex/guard.yaml")
    finally:
        os.chdir(cwd)
    assert cfg.usage is not None and cfg.usage.ledger.is_absolute()
    assert len(cfg.routes.routes) == 5


# ----------------------------------------------------------------------- error classes

ROUTE_ERRORS = [
    # (routes/a.yaml content, key path, fragment of the message)
    (
        "routes: [{name: r, listener: web, service: app, match: {host: 5}}]",
        "routes[0].match.host",
        "must be a string",
    ),
    (
        "routes: [{name: r, listener: web, service: app, match: {pathprefix: /}}]",
        "routes[0].match",
        "unknown key 'pathprefix'",
    ),
    (
        "routes: [{name: r, listener: nope, service: app}]",
        "routes[0].listener",
        "no listener 'nope'",
    ),
    ("routes: [{name: r, listener: web, service: nope}]", "routes[0].service", "no service"),
    ("routes: [{listener: web, service: app}]", "routes[0]", "missing required key 'name'"),
    (
        "routes: [{name: r, listener: web, service: app, match: {path: /a, path_prefix: /}}]",
        "routes[0].match",
        "not both",
    ),
    (
        "routes: [{name: r, listener: web, service: app, match: {path: a}}]",
        "routes[0].match.path",
        "starting with /",
    ),
    (
        "routes: [{name: r, listener: web, service: app, match: {sni: a.b}}]",
        "routes[0].match.sni",
        "only for tcp",
    ),
    (
        "routes: [{name: r, listener: pg, service: app, match: {host: a.b}}]",
        "routes[0].match.host",
        "only for http, https",
    ),
    (
        "routes: [{name: r, listener: pg, service: app, match: {path_prefix: /}}]",
        "routes[0].match.path_prefix",
        "only for http",
    ),
    (
        "routes: [{name: r, listener: dns, service: app, match: {host: a.b}}]",
        "routes[0].match",
        "udp routes take no match",
    ),
    (
        "routes: [{name: r, listener: web, service: app, match: {host: 'a.*.b'}}]",
        "routes[0].match.host",
        "first label",
    ),
    (
        "routes: [{name: r, listener: web, service: app, match: {host: '{key}.{key}.b'}}]",
        "routes[0].match.host",
        "at most one",
    ),
    (
        "routes: [{name: r, listener: web, service: app, match: {host: 'x{key}.b'}}]",
        "routes[0].match.host",
        "whole label",
    ),
    (
        "routes: [{name: r, listener: web, service: app, match: {host: 'a.b:80'}}]",
        "routes[0].match.host",
        "no port",
    ),
    (
        "routes: [{name: r, listener: web, service: app, match: {methods: ['GE T']}}]",
        "routes[0].match.methods[0]",
        "HTTP method",
    ),
    (
        "routes: [{name: r, listener: web, service: app, strip_prefix: true}]",
        "routes[0].strip_prefix",
        "path_prefix",
    ),
    (
        "routes: [{name: r, listener: pg, service: app, websocket: {max_message: 1MiB}}]",
        "routes[0].websocket",
        "only for http",
    ),
    (
        "routes: [{name: r, listener: web, service: app, rate_limit: {average: 0}}]",
        "routes[0].rate_limit.average",
        "greater than 0",
    ),
    (
        "routes: [{name: r, listener: web, service: app, rate_limit: {average: 5, burst: 0}}]",
        "routes[0].rate_limit.burst",
        "at least 1",
    ),
    (
        "routes: [{name: r, listener: web, service: app, rate_limit: {average: 5, by: ip}}]",
        "routes[0].rate_limit.by",
        "client_ip, tenant, header:NAME",
    ),
    (
        "routes: [{name: r, listener: web, service: app, websocket: {max_message: -1}}]",
        "routes[0].websocket.max_message",
        "negative",
    ),
    (
        "routes: [{name: r, listener: web, service: app}, {name: r, listener: web, service: app}]",
        "routes[1].name",
        "duplicate route 'r'",
    ),
    ("services: {s: {}}", "services.s", "exactly one of servers, container"),
    (
        "services: {s: {servers: ['a:1'], container: {driver: process, command: [x]}}}",
        "services.s",
        "exactly one of servers, container",
    ),
    ("services: {s: {servers: []}}", "services.s.servers", "must not be empty"),
    ("services: {s: {servers: ['a']}}", "services.s.servers[0]", "needs a port"),
    ("services: {s: {servers: [':80']}}", "services.s.servers[0]", "needs a host"),
    ("services: {s: {servers: ['a:0']}}", "services.s.servers[0]", "out of range"),
    ("services: {s: {servers: ['a:1'], balance: random}}", "services.s.balance", "one of"),
    ("services: {s: {servers: ['a:1'], balance: hash}}", "services.s", "needs hash_on"),
    ("services: {s: {servers: ['a:1'], hash_on: path}}", "services.s.hash_on", "balance: hash"),
    (
        "services: {s: {servers: ['a:1'], balance: hash, hash_on: query:x}}",
        "services.s.hash_on",
        "header:NAME, cookie:NAME",
    ),
    (
        "services: {s: {servers: ['a:1'], scale: {max: 1}}}",
        "services.s.scale",
        "only for container",
    ),
    (
        "services: {s: {container: {driver: docker}}}",
        "services.s.container",
        "needs image",
    ),
    (
        "services: {s: {container: {driver: process}}}",
        "services.s.container",
        "needs command",
    ),
    (
        "services: {s: {container: {driver: process, command: []}}}",
        "services.s.container.command",
        "must not be empty",
    ),
    (
        "services: {s: {container: {driver: process, command: [a, 1]}}}",
        "services.s.container.command[1]",
        "must be a string",
    ),
    (
        "services: {s: {container: {driver: vm, command: [a]}}}",
        "services.s.container.driver",
        "one of docker, process",
    ),
    (
        "services: {s: {container: {driver: process, command: [a]}, scale: {min: 3, max: 2}}}",
        "services.s.scale.min",
        "must not exceed max",
    ),
    (
        "services: {s: {container: {driver: process, command: [a]}, scale: {max: 0}}}",
        "services.s.scale.max",
        "at least 1",
    ),
    (
        "services: {s: {container: {driver: process, command: [a]},"
        " scale: {target_concurrency: 0}}}",
        "services.s.scale.target_concurrency",
        "at least 1",
    ),
    (
        "services: {s: {container: {driver: process, command: [a]}, scale: {queue: -1}}}",
        "services.s.scale.queue",
        "at least 0",
    ),
    (
        "services: {s: {container: {driver: process, command: [a]}, scale: {sleep_after: 300}}}",
        "services.s.scale.sleep_after",
        "needs a unit",
    ),
    (
        "services: {s: {container: {driver: process, command: [a]}, scale: {target_cpu: 170%}}}",
        "services.s.scale.target_cpu",
        "at most 100%",
    ),
    (
        "services: {s: {container: {driver: process, command: [a], ready: {}}}}",
        "services.s.container.ready",
        "exactly one of http, tcp, udp, delay",
    ),
    (
        "services: {s: {container: {driver: process, command: [a], ready: {http: /h, tcp: true}}}}",
        "services.s.container.ready",
        "exactly one of",
    ),
    (
        "services: {s: {container: {driver: process, command: [a], ready: {http: h}}}}",
        "services.s.container.ready.http",
        "starting with /",
    ),
    (
        "services: {s: {container: {driver: process, command: [a], ready: {tcp: false}}}}",
        "services.s.container.ready.tcp",
        "must be true",
    ),
    (
        "services: {s: {container: {driver: process, command: [a], env: {A: [1]}}}}",
        "services.s.container.env",
        "string, number or boolean",
    ),
    (
        "services: {s: {container: {driver: process, command: [a], resources: {cpu: 0}}}}",
        "services.s.container.resources.cpu",
        "greater than 0",
    ),
    (
        "services: {s: {servers: ['a:1'], retries: {on: [connect_error, 5030, bogus]}}}",
        "services.s.retries.on[1]",
        "status like 503",
    ),
    (
        "services: {s: {servers: ['a:1'], retries: {budget: 0.2}}}",
        "services.s.retries.budget",
        "percentage",
    ),
    (
        "services: {s: {servers: ['a:1'], proxy_protocol: {send: v3}}}",
        "services.s.proxy_protocol.send",
        "one of v1, v2",
    ),
    (
        "services: {s: {servers: ['a:1'], health: {interval: 2s}}}",
        "services.s.health",
        "exactly one of http, tcp",
    ),
    (
        "services: {s: {servers: ['a:1'], outlier: {base_ejection: 0s}}}",
        "services.s.outlier.base_ejection",
        "longer than 0s",
    ),
    (
        "services: {s: {servers: ['a:1'], limits: {max_pending: 0}}}",
        "services.s.limits.max_pending",
        "at least 1",
    ),
    (
        "services: {s: {container: {driver: process, command: [a]}, key: header:x}}",
        "services.s.key",
        "needs per_key",
    ),
    (
        "routes: [{name: r, listener: web, service: s, match: {host: a.b}}]\n"
        "services: {s: {container: {driver: process, command: [a]}, per_key: true}}",
        "routes[0].service",
        "{key} capture",
    ),
    ("services: {s: {servers: ['a:1'], tiemout: 1s}}", "services.s", "unknown key 'tiemout'"),
    ("nope: 1", "", "unknown key 'nope'"),
    ("routes: {a: 1}", "routes", "must be a list"),
]


@pytest.mark.parametrize(("text", "key", "fragment"), ROUTE_ERRORS)
def test_route_file_errors(tmp_path: Path, text: str, key: str, fragment: str) -> None:
    # The file under test refers to service `app`, which z.yaml (a good file) defines.
    lines = errors_of(
        write(tmp_path, a_yaml=text + "\n", z_yaml=ROUTES_OK.replace("name: app", "name: ok"))
    )
    assert_error(lines, "routes/a.yaml", key, fragment)


GUARD_ERRORS = [
    # (replacement guard.yaml, key path, fragment)
    (
        "listeners: {web: {protocol: htp, address: ':80'}}",
        "listeners.web.protocol",
        "must be one of http, https, tcp, udp",
    ),
    ("listeners: {web: {protocol: http}}", "listeners.web", "missing required key 'address'"),
    (
        "listeners: {web: {protocol: http, address: '1.2.3.4:70000'}}",
        "listeners.web.address",
        "out of range",
    ),
    ("listeners: {s: {protocol: https, address: ':443'}}", "listeners.s", "tls.certificates"),
    (
        "listeners: {s: {protocol: https, address: ':443', tls: {certificates: [{cert: a}]}}}",
        "listeners.s.tls.certificates[0]",
        "missing required key 'key'",
    ),
    (
        "listeners: {s: {protocol: http, address: ':80', tls: {certificates: []}}}",
        "listeners.s.tls",
        "only for https",
    ),
    (
        "listeners: {u: {protocol: udp, address: ':53', proxy_protocol: {accept: true}}}",
        "listeners.u.proxy_protocol",
        "only for http, https, tcp",
    ),
    (
        "listeners: {t: {protocol: tcp, address: ':5', proxy_protocol: {trusted: [x]}}}",
        "listeners.t.proxy_protocol.trusted[0]",
        "invalid CIDR",
    ),
    (
        "listeners: {a: {protocol: http, address: ':80'}, b: {protocol: tcp,"
        " address: '127.0.0.1:80'}}",
        "listeners.b.address",
        "already used",
    ),
    ("workers: 0", "workers", '"auto"'),
    ("workers: many", "workers", '"auto"'),
    ("http: {parser: fast}", "http.parser", "one of httptools, h11"),
    ("http: {trusted_proxies: [10.0.0.0/33]}", "http.trusted_proxies[0]", "invalid CIDR"),
    ("http: {timeouts: {connect: 5}}", "http.timeouts.connect", "needs a unit"),
    ("http: {limits: {max_body: lots}}", "http.limits.max_body", "invalid size"),
    ("http: {via: yes}", "http.via", "true or false"),
    ("containers: {tcp_ports: 2000}", "containers.tcp_ports", "port range"),
    ("containers: {listener: nope}", "containers.listener", "no listener"),
    (
        "listeners: {t: {protocol: tcp, address: ':5'}}\ncontainers: {listener: t}",
        "containers.listener",
        "http",
    ),
    ("admin: {tokens: []}", "admin", "missing required key 'address'"),
    (
        "admin: {address: ':1', tokens: [{tenant: a}]}",
        "admin.tokens[0]",
        "exactly one of token_env, token_file",
    ),
    (
        "admin: {address: ':1', tokens: [{token_env: X, token_file: f, tenant: a}]}",
        "admin.tokens[0]",
        "exactly one of",
    ),
    ("admin: {address: ':1', tokens: [{token_env: X}]}", "admin.tokens[0]", "'tenant'"),
    ("drivers: {docker: {sockett: x}}", "drivers.docker", "unknown key 'sockett'"),
    ("drivers: {podman: {}}", "drivers", "unknown key 'podman'"),
    ("usage: {flush: 1s}", "usage", "missing required key 'ledger'"),
    ("usage: {ledger: u.db, flush: 1}", "usage.flush", "needs a unit"),
    ("tenants: {a: {max_memory: 1XB}}", "tenants.a.max_memory", "invalid size"),
    ("listner: {}", "", "did you mean 'listeners'"),
    ("pid_file: 5", "pid_file", "string"),
    ("pid_file: routes", "pid_file", "is a directory"),
    ("pid_file: nowhere/guard.pid", "pid_file", "no such directory"),
]


@pytest.mark.parametrize(("text", "key", "fragment"), GUARD_ERRORS)
def test_guard_file_errors(tmp_path: Path, text: str, key: str, fragment: str) -> None:
    lines = errors_of(write(tmp_path, text + "\n"))
    assert_error(lines, "guard.yaml", key, fragment)


def test_driver_must_be_enabled(tmp_path: Path) -> None:
    guard = GUARD.replace("  docker: {socket: unix:///var/run/docker.sock, network: host}\n", "")
    routes = "services: {s: {container: {driver: docker, image: x}}}\n"
    lines = errors_of(write(tmp_path, guard, a_yaml=routes))
    assert_error(lines, "routes/a.yaml", "services.s.container.driver", "drivers.docker")


def test_many_errors_reported_together(tmp_path: Path) -> None:
    guard = GUARD + "http: {parser: fast}\n"
    routes = """\
    routes:
      - {name: a, listener: nope, service: s}
      - {name: b, listener: web, service: s, match: {host: 5}}
    services:
      s: {servers: []}
    """
    lines = errors_of(write(tmp_path, guard, a_yaml=routes, b_yaml="bogus: 1\n"))
    assert len(lines) == 5
    assert_error(lines, "guard.yaml", "http.parser")
    assert_error(lines, "routes/a.yaml", "routes[0].listener")
    assert_error(lines, "routes/a.yaml", "routes[1].match.host")
    assert_error(lines, "routes/a.yaml", "services.s.servers")
    assert_error(lines, "routes/b.yaml", "", "unknown key 'bogus'")


def test_duplicate_route_across_files_names_both(tmp_path: Path) -> None:
    other = "routes: [{name: app, listener: web, service: app}]\n"
    lines = errors_of(write(tmp_path, a_yaml=ROUTES_OK, b_yaml=other))
    assert len(lines) == 1
    assert lines[0].startswith(os.path.join(str(tmp_path), "routes", "b.yaml"))
    assert "routes[0].name: duplicate route 'app'" in lines[0]
    assert "routes/a.yaml" in lines[0]


def test_duplicate_service_across_files_names_both(tmp_path: Path) -> None:
    other = "services: {app: {servers: ['b:1']}}\n"
    lines = errors_of(write(tmp_path, a_yaml=ROUTES_OK, b_yml=other))
    assert len(lines) == 1
    assert "routes/b.yml: services.app: duplicate service 'app'" in lines[0]
    assert "routes/a.yaml" in lines[0]


def test_yaml_syntax_error_reports_file_and_line(tmp_path: Path) -> None:
    lines = errors_of(write(tmp_path, a_yaml="routes:\n  - name: [unclosed\n"))
    assert_error(lines, "routes/a.yaml", "", "line ")


def test_duplicate_yaml_key_is_an_error(tmp_path: Path) -> None:
    lines = errors_of(write(tmp_path, GUARD + "workers: 3\n"))
    assert_error(lines, "guard.yaml", "", "duplicate key 'workers'")


def test_yaml_11_booleans_stay_strings(tmp_path: Path) -> None:
    # `on` must stay a key (retries.on), and `yes` is not a boolean in YAML 1.2.
    routes = "services: {s: {servers: ['a:1'], retries: {on: [timeout]}, per_key: yes}}\n"
    lines = errors_of(write(tmp_path, a_yaml=routes))
    assert len(lines) == 2
    assert_error(lines, "routes/a.yaml", "services.s.per_key", "true or false")
    assert_error(lines, "routes/a.yaml", "services.s.per_key", "only for container")


def test_missing_routes_path(tmp_path: Path) -> None:
    lines = errors_of(write(tmp_path, GUARD.replace("routes: routes", "routes: elsewhere")))
    assert_error(lines, "guard.yaml", "routes", "no such file or directory")


def test_load_routes_checks_listeners_and_drivers(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, a_yaml=ROUTES_OK))
    (tmp_path / "routes" / "a.yaml").write_text(
        "routes: [{name: x, listener: gone, service: s}]\n"
        "services: {s: {container: {driver: docker, image: i}}}\n"
    )
    listeners = {"web": cfg.listeners["web"]}
    with pytest.raises(ConfigErrors) as info:
        load_routes(tmp_path / "routes", listeners, cfg.drivers)
    assert len(info.value.errors) == 1
    assert "routes[0].listener: no listener 'gone'" in str(info.value)
    without_docker = type(cfg.drivers)(process=cfg.drivers.process)
    with pytest.raises(ConfigErrors, match=r"services\.s\.container\.driver"):
        load_routes(tmp_path / "routes" / "a.yaml", cfg.listeners, without_docker)


def test_pid_file_is_relative_to_guard_yaml(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    cfg = load_config(write(tmp_path, GUARD + "pid_file: run/guard.pid\n"))
    assert cfg.pid_file == tmp_path / "run" / "guard.pid"
    assert load_config(write(tmp_path)).pid_file is None
