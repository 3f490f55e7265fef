"""Who is calling: bearer tokens, their roles, and the limit on failed attempts.

A token is ``cq_`` and 43 URL-safe base64 characters (32 random bytes). Only its SHA-256
is configured (``[api] tokens = ["ROLE=sha256:HEX"]``): a token that random needs no slow
hash (as GitHub's and PyPI's API tokens), and a leaked config does not leak the tokens.
Every configured hash is compared with :func:`hmac.compare_digest` (constant time).

Roles (issue #15): ``admin`` (everything), ``tenant:<id>`` (that tenant's jobs,
notifications and webhook endpoints; no counts of other tenants), ``tenant:<id>:user:<id>``
(that user's notifications only).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass

from crmqueue.errors import ConfigError
from crmqueue.tenancy import tenant_problem, user_id_problem

TOKEN_PREFIX = "cq_"
HASH_PREFIX = "sha256:"
NO_TENANT = "-"  # the tenant the engine records for a job without one (crmqueue.engine)


@dataclass(frozen=True)
class Role:
    """A token's role: admin, or a tenant, or one user of a tenant."""

    admin: bool
    tenant: str | None = None
    user: str | None = None

    def __str__(self) -> str:
        if self.admin:
            return "admin"
        return f"tenant:{self.tenant}" + (f":user:{self.user}" if self.user else "")

    def sees_tenant(self, tenant: str) -> bool:
        """Whether this role may see jobs and endpoints of `tenant` (not a user role)."""
        return self.admin or (self.user is None and self.tenant == tenant)


def parse_role(text: str) -> Role:
    """``admin``, ``tenant:<id>`` or ``tenant:<id>:user:<id>``; ValueError saying why not."""
    if text == "admin":
        return Role(admin=True)
    kind, sep, rest = text.partition(":")
    if kind != "tenant" or not sep:
        raise ValueError(f"{text!r}: a role is admin, tenant:<id> or tenant:<id>:user:<id>")
    tenant, sep, user_part = rest.partition(":user:")
    if (problem := tenant_problem(tenant)) is not None:
        raise ValueError(f"{text!r}: tenant id {problem}")
    if tenant == NO_TENANT:
        raise ValueError(
            f"{text!r}: tenant id '-' marks the jobs without a tenant (Huey and periodic"
            " tasks); only an admin token sees those"
        )
    if not sep:
        return Role(admin=False, tenant=tenant)
    if (problem := user_id_problem(user_part)) is not None:
        raise ValueError(f"{text!r}: user id {problem}")
    return Role(admin=False, tenant=tenant, user=user_part)


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """``sha256:<hex>`` of the token's UTF-8 bytes."""
    return HASH_PREFIX + hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def config_line(role: Role, token: str) -> str:
    """The ``[api] tokens`` entry for `token` with `role`."""
    return f"{role}={token_hash(token)}"


class TokenTable:
    """The configured tokens: (hash bytes, role) pairs. ConfigError naming the entry for
    a malformed one."""

    def __init__(self, entries: list[str]) -> None:
        self._entries: list[tuple[bytes, Role]] = []
        for index, entry in enumerate(entries):
            role_text, sep, digest = entry.rpartition("=")
            hex_part = digest.removeprefix(HASH_PREFIX)
            if not sep or not digest.startswith(HASH_PREFIX) or len(hex_part) != 64:
                raise ConfigError(
                    f"api.tokens[{index}]: expected ROLE=sha256:<64 hex digits>"
                    " (as `crmqueue api token create` prints it)"
                )
            try:
                role = parse_role(role_text)
                raw = bytes.fromhex(hex_part)
            except ValueError as exc:
                raise ConfigError(f"api.tokens[{index}]: {exc}") from None
            self._entries.append((raw, role))

    def __len__(self) -> int:
        return len(self._entries)

    def role_of(self, token: str) -> Role | None:
        """The role of `token`, or None. Every entry is compared, in constant time each."""
        presented = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        found: Role | None = None
        for digest, role in self._entries:
            if hmac.compare_digest(presented, digest):
                found = role
        return found


class FailureLimiter:
    """At most `per_minute` failed token checks per client address in a sliding minute."""

    def __init__(self, per_minute: int, window: float = 60.0, max_clients: int = 10_000) -> None:
        self.per_minute = per_minute
        self.window = window
        self.max_clients = max_clients
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, client: str, now: float) -> deque[float]:
        stamps = self._failures.get(client)
        if stamps is None:
            if len(self._failures) >= self.max_clients:  # forget the quietest first
                self._failures.pop(next(iter(self._failures)))
            stamps = self._failures[client] = deque()
        while stamps and stamps[0] <= now - self.window:
            stamps.popleft()
        return stamps

    def blocked(self, client: str) -> float | None:
        """Seconds until `client` may try again, or None when it may now."""
        now = time.monotonic()
        with self._lock:
            stamps = self._recent(client, now)
            if len(stamps) < self.per_minute:
                return None
            return max(stamps[0] + self.window - now, 0.0) or 0.001

    def failed(self, client: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._recent(client, now).append(now)
