"""Who owns a route or a service: the route file it came from.

The admin API writes what a ``*`` token (or an open, token-less API) creates to
``<routes dir>/_admin.yaml`` and what a tenant's token creates to
``<routes dir>/_admin-<tenant>.yaml``. Ownership is read back from ``source`` (the file
each object was loaded from), so it survives restarts with no extra state, and an
operator can see and edit who owns what with ``ls routes/``. Objects in any other route
file are the operator's: visible to ``*`` only, and not changed through the API.
"""

from __future__ import annotations

from pathlib import Path

from guard.admin.auth import ALL, Caller

ADMIN_PREFIX = "_admin"
SUFFIX = ".yaml"


def admin_file(tenant: str) -> str:
    """The route file name a caller of ``tenant`` writes to."""
    return f"{ADMIN_PREFIX}{SUFFIX}" if tenant == ALL else f"{ADMIN_PREFIX}-{tenant}{SUFFIX}"


def owner_of_name(name: str) -> str | None:
    """``*`` for _admin.yaml, the tenant for _admin-<tenant>.yaml, None for other files."""
    if not name.endswith(SUFFIX) or not name.startswith(ADMIN_PREFIX):
        return None
    middle = name[len(ADMIN_PREFIX) : -len(SUFFIX)]
    if middle == "":
        return ALL
    if middle.startswith("-") and len(middle) > 1:
        return middle[1:]
    return None


def owner_of(source: Path | None) -> str | None:
    return owner_of_name(source.name) if source is not None else None


def visible(caller: Caller, source: Path | None) -> bool:
    """Whether ``caller`` may see (and, for admin files, change) an object from ``source``."""
    return caller.all or owner_of(source) == caller.tenant
