"""Bearer tokens for the admin API: loaded once, compared in constant time, named for the audit,
each with a role.

Token sources, one `name:token[:role]` per line (or per comma in the environment variable); a
bare `token` is named `token-N`; a line without a role is `admin`. Blank lines and `#` comments
are ignored. Roles, each with the permissions of the one before:

- `viewer`: reads (state, audit, endpoints, rollouts, monitor views);
- `operator`: traffic changes within policy, pins, rollout pause / resume / abort;
- `admin`: everything, including promoting a rollout at once and forcing past the policy.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from lockgate.errors import ErrorKind, LockgateError, invalid

ANONYMOUS = "local"  # the actor recorded when no tokens are configured (loopback only)
MIN_TOKEN_LENGTH = 16
VIEWER, OPERATOR, ADMIN = "viewer", "operator", "admin"
ROLES = (VIEWER, OPERATOR, ADMIN)
# What each permission needs at least; a role has its own and every lower role's.
READ, TRAFFIC, ROLLOUT, FORCE = "read", "traffic", "rollout", "force"
PERMISSIONS = {READ: VIEWER, TRAFFIC: OPERATOR, ROLLOUT: OPERATOR, FORCE: ADMIN}


class Principal(NamedTuple):
    """Who called: a token's name and role."""

    name: str
    role: str = ADMIN

    def may(self, permission: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(PERMISSIONS[permission])

    def require(self, permission: str) -> None:
        if not self.may(permission):
            raise LockgateError(
                ErrorKind.FORBIDDEN,
                f"token {self.name!r} has the role {self.role!r}, which lacks the permission "
                f"{permission!r} (role {PERMISSIONS[permission]!r} or higher)",
            )


LOCAL = Principal(ANONYMOUS, ADMIN)  # no tokens configured: loopback callers only


def parse_tokens(entries: list[str]) -> dict[str, Principal]:
    """{token: principal} from `name:token[:role]` / `token` entries."""
    tokens: dict[str, Principal] = {}
    for i, raw in enumerate(entries, 1):
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        parts = entry.split(":")
        if len(parts) > 3:
            raise invalid(f"admin token line {i}: expected name:token[:role]")
        name, token, role = (
            [f"token-{i}", *parts, ADMIN][:3] if len(parts) == 1 else [*parts, ADMIN][:3]
        )
        if role not in ROLES:
            raise invalid(f"admin token {name!r}: unknown role {role!r} (use {', '.join(ROLES)})")
        if len(token) < MIN_TOKEN_LENGTH:
            raise invalid(f"admin token {name!r} is shorter than {MIN_TOKEN_LENGTH} characters")
        tokens[token] = Principal(name, role)
    return tokens


def load_tokens(file: Path | None, env_value: str | None) -> dict[str, Principal]:
    entries: list[str] = []
    if file is not None:
        try:
            entries += file.read_text().splitlines()
        except OSError as exc:
            raise invalid(f"cannot read admin token file {file}: {exc.strerror}") from None
    if env_value:
        entries += env_value.split(",")
    return parse_tokens(entries)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class TokenCheck:
    """`tokens` maps each token to its principal, or to a bare name (an admin)."""

    def __init__(self, tokens: Mapping[str, str | Principal]) -> None:
        self._tokens = [
            (token.encode(), who if isinstance(who, Principal) else Principal(who))
            for token, who in tokens.items()
        ]

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def principals(self) -> list[Principal]:
        return [who for _, who in self._tokens]

    def principal(self, authorization: str | None) -> Principal:
        """Who an `Authorization: Bearer ...` header names, else UNAUTHORIZED."""
        if not self._tokens:
            return LOCAL
        scheme, _, presented = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not presented:
            raise LockgateError(ErrorKind.UNAUTHORIZED, "missing bearer token")
        candidate = presented.strip().encode()
        found = None
        for token, who in self._tokens:  # compare with every token: timing reveals nothing
            if hmac.compare_digest(token, candidate):
                found = who
        if found is None:
            raise LockgateError(ErrorKind.UNAUTHORIZED, "invalid bearer token")
        return found

    def actor(self, authorization: str | None) -> str:
        """The token's name (see `principal`)."""
        return self.principal(authorization).name
