"""Bearer tokens of the admin API: loaded once at start, checked in constant time.

``admin.tokens`` maps each token (read from an environment variable or a file, never
written in guard.yaml) to a tenant or ``*``. A request's ``Authorization: Bearer ...`` is
compared with *every* configured token: both sides are hashed to 32 bytes first, so
``hmac.compare_digest`` sees equal lengths and neither the token's length nor which entry
matched shows in the time taken. Without tokens the API is open and ``bind_refusal``
keeps it on loopback.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

from guard.config.model import AdminConfig

ALL = "*"
MIN_TOKEN = 16  # characters: a remote admin API that runs containers needs a real secret
# Tenant names become file names (routes/_admin-<tenant>.yaml): no separators, no dot-files.
TENANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking: ``*`` sees and changes everything, a tenant only its own."""

    tenant: str

    @property
    def all(self) -> bool:
        return self.tenant == ALL


OPEN = Caller(ALL)  # no tokens configured: loopback only, and everything visible


class TokenError(Exception):
    """A token that cannot be used, named by its key in guard.yaml."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"admin.{key}: {message}")


def _digest(secret: bytes) -> bytes:
    return hashlib.sha256(secret).digest()


@dataclass(frozen=True, slots=True)
class _Entry:
    digest: bytes
    tenant: str


class TokenTable:
    """The configured tokens; ``caller()`` maps an Authorization header to a Caller."""

    def __init__(
        self,
        tokens: list[tuple[str, bytes]],
        compare: Callable[[bytes, bytes], bool] | None = None,
    ) -> None:
        self._entries = tuple(_Entry(_digest(secret), tenant) for tenant, secret in tokens)
        # hmac.compare_digest unless given (a test counts the comparisons this way).
        self._compare = compare if compare is not None else hmac.compare_digest

    @property
    def required(self) -> bool:
        return bool(self._entries)

    @property
    def tenants(self) -> frozenset[str]:
        return frozenset(e.tenant for e in self._entries if e.tenant != ALL)

    def caller(self, authorization: str | None) -> Caller | None:
        """The caller a header authenticates, or None (no header, wrong scheme or token)."""
        if not self._entries:
            return OPEN
        presented = _bearer(authorization)
        # Hash even a missing token and compare against every entry without stopping at a
        # match: the time taken is the same whatever was presented.
        digest = _digest(presented or b"")
        found: str | None = None
        for entry in self._entries:
            if self._compare(entry.digest, digest) and found is None:
                found = entry.tenant
        if presented is None or found is None:
            return None
        return Caller(found)


def _bearer(authorization: str | None) -> bytes | None:
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token.encode("latin-1", "replace")


def load_tokens(admin: AdminConfig | None, environ: dict[str, str] | None = None) -> TokenTable:
    """Read every token of ``admin.tokens``; raise TokenError naming the first unusable one."""
    env = os.environ if environ is None else environ
    loaded: list[tuple[str, bytes]] = []
    seen: dict[bytes, str] = {}
    for i, tok in enumerate(admin.tokens if admin is not None else ()):
        key = f"tokens[{i}]"
        if tok.tenant != ALL and not TENANT_NAME.fullmatch(tok.tenant):
            raise TokenError(
                f"{key}.tenant",
                f"{tok.tenant!r} must be '*' or letters, digits, '-' and '_' (it names the"
                " tenant's route file)",
            )
        if tok.token_env is not None:
            key += ".token_env"
            value = env.get(tok.token_env)
            if value is None:
                raise TokenError(key, f"environment variable {tok.token_env} is not set")
            secret = value.strip()
        else:
            assert tok.token_file is not None  # the loader wants exactly one of the two
            key += ".token_file"
            try:
                secret = tok.token_file.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as e:
                why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
                raise TokenError(key, f"cannot read {tok.token_file}: {why}") from None
        if len(secret) < MIN_TOKEN:
            raise TokenError(
                key,
                f"the token must be at least {MIN_TOKEN} characters (e.g. `openssl rand -hex 32`)",
            )
        if any(c.isspace() for c in secret) or not secret.isprintable():
            raise TokenError(key, "the token must be printable, without spaces")
        raw = secret.encode()
        if raw in seen and seen[raw] != tok.tenant:
            raise TokenError(key, "the same token is also given to another tenant")
        seen[raw] = tok.tenant
        loaded.append((tok.tenant, raw))
    return TokenTable(loaded)
