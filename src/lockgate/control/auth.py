"""Bearer tokens for the admin API: loaded once, compared in constant time, named for the audit.

Token sources, one `name:token` per line (or per comma in the environment variable); a bare
`token` is named `token-N`. Blank lines and `#` comments are ignored.
"""

from __future__ import annotations

import hmac
import ipaddress
from pathlib import Path

from lockgate.errors import ErrorKind, LockgateError, invalid

ANONYMOUS = "local"  # the actor recorded when no tokens are configured (loopback only)
MIN_TOKEN_LENGTH = 16


def parse_tokens(entries: list[str]) -> dict[str, str]:
    """{token: name} from `name:token` / `token` entries."""
    tokens: dict[str, str] = {}
    for i, raw in enumerate(entries, 1):
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        name, sep, token = entry.rpartition(":")
        if not sep:
            name = f"token-{i}"
        if len(token) < MIN_TOKEN_LENGTH:
            raise invalid(f"admin token {name!r} is shorter than {MIN_TOKEN_LENGTH} characters")
        tokens[token] = name
    return tokens


def load_tokens(file: Path | None, env_value: str | None) -> dict[str, str]:
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
    def __init__(self, tokens: dict[str, str]) -> None:
        self._tokens = [(token.encode(), name) for token, name in tokens.items()]

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def actor(self, authorization: str | None) -> str:
        """The token's name for an `Authorization: Bearer ...` header, else UNAUTHORIZED."""
        if not self._tokens:
            return ANONYMOUS
        scheme, _, presented = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not presented:
            raise LockgateError(ErrorKind.UNAUTHORIZED, "missing bearer token")
        candidate = presented.strip().encode()
        found = None
        for token, name in self._tokens:  # compare with every token: timing reveals nothing
            if hmac.compare_digest(token, candidate):
                found = name
        if found is None:
            raise LockgateError(ErrorKind.UNAUTHORIZED, "invalid bearer token")
        return found
