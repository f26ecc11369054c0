"""Which valid config keys this build cannot serve yet.

``guard check`` accepts the whole contract; ``guard run`` refuses to start on a key whose
feature has not landed, naming file and key, so nothing is ever silently skipped.
"""

from __future__ import annotations

from pathlib import Path

from guard.config.model import GuardConfig
from guard.errors import NotSupportedYet

SERVED_LISTENER_PROTOCOLS = frozenset({"http", "https", "tcp", "udp"})
# Listener protocols whose relay reads PROXY headers (the http proxy does not, yet).
PROXY_ACCEPT_PROTOCOLS = frozenset({"tcp"})


def _name(path: Path | None, fallback: Path) -> str:
    return str(path or fallback)


def unsupported(config: GuardConfig) -> list[NotSupportedYet]:
    main = str(config.path)
    found: list[NotSupportedYet] = []
    for name, listener in config.listeners.items():
        if listener.protocol not in SERVED_LISTENER_PROTOCOLS:
            found.append(NotSupportedYet(main, f"listeners.{name}.protocol: {listener.protocol}"))
        elif (
            listener.proxy_protocol is not None
            and listener.proxy_protocol.accept
            and listener.protocol not in PROXY_ACCEPT_PROTOCOLS
        ):
            found.append(NotSupportedYet(main, f"listeners.{name}.proxy_protocol"))
    # admin.tokens and tenants are served by guard.admin. Tenant quotas are enforced on
    # POST /v1/containers (count, cpu, memory: 429 quota_exceeded); container services a
    # tenant PUTs through /v1/services are not counted against them yet.
    # Every route's rate_limit is served (http, tcp, udp; by client_ip, header, tenant).
    # Services reached through http listeners: their keep-alive pools send no PROXY header.
    http_services = {
        r.service
        for r in config.routes.routes
        if (lc := config.listeners.get(r.listener)) is not None and lc.protocol not in ("tcp",)
    }
    l4_services = {
        r.service
        for r in config.routes.routes
        if (lc := config.listeners.get(r.listener)) is not None and lc.protocol in ("tcp", "udp")
    }
    for svc in config.routes.services.values():
        file = _name(svc.source, config.routes_path)
        http_only = svc.name not in l4_services
        if svc.health is not None and svc.container is not None:
            # Instances have their ready probe; health checks of running instances
            # (replace on failure) are not built yet.
            found.append(NotSupportedYet(file, f"services.{svc.name}.health"))
        for key in ("retries", "limits", "outlier"):
            # Built for static servers (the http proxy); not for container instances.
            if getattr(svc, key) is not None and (svc.container is not None or not http_only):
                found.append(NotSupportedYet(file, f"services.{svc.name}.{key}"))
        if svc.proxy_protocol is not None and svc.name in http_services:
            # tcp listeners send it; http/https/udp ones would silently not.
            found.append(NotSupportedYet(file, f"services.{svc.name}.proxy_protocol"))
    return found
