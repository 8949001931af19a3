"""API keys for the data plane: who is calling, and whether the key's scope allows the call.

Keys come from `--api-keys-file` (one `name:key[:scope]` per line) and `LOCKGATE_API_KEYS` (the
same entries, separated by commas or newlines). Scopes: `infer` (infer, plus model metadata,
configuration, statistics and the repository index), `feedback` (labels, plus the same reads) or
`all` (the default). Blank lines and `#` comments are ignored. Errors name the line and the key's
name, never the key.

On the request path a check is one header read, one sha256 of the presented key, one dict probe
and one `hmac.compare_digest`: no loop over the keys, no lock (one event loop per process).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from lockgate.errors import ErrorKind, LockgateError, invalid

MIN_KEY_LENGTH = 16
INFER, FEEDBACK, ALL = "infer", "feedback", "all"
SCOPES = (INFER, FEEDBACK, ALL)
READ = "read"  # what model metadata, configuration, statistics and the index need: any scope
ENV = "LOCKGATE_API_KEYS"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_KEY = re.compile(r"[\x21-\x7e]+")  # printable ASCII without spaces: it travels in a header
ANONYMOUS = ""  # the client of a request when no keys are configured

# (name, key, scope): how keys travel in ServeConfig (pickled to `--workers N` processes).
KeyEntry = tuple[str, str, str]


def parse_keys(lines: Iterable[tuple[str, str]]) -> tuple[KeyEntry, ...]:
    """Entries from (where, text) pairs, `where` naming the line for error messages."""
    entries: list[KeyEntry] = []
    names: set[str] = set()
    keys: dict[str, str] = {}
    for where, raw in lines:
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        parts = text.split(":")
        if len(parts) not in (2, 3):
            raise invalid(f"{where}: expected name:key[:scope] (a key may not contain ':')")
        name, key, scope = (*parts, ALL)[:3] if len(parts) == 2 else parts
        name, key, scope = name.strip(), key.strip(), scope.strip()
        if not _NAME.fullmatch(name):
            raise invalid(
                f"{where}: the name must be 1-64 letters, digits, '_', '.' or '-', got {name!r}"
            )
        if scope not in SCOPES:
            raise invalid(f"{where}: key {name!r} has the unknown scope {scope!r} (use {SCOPES})")
        if len(key) < MIN_KEY_LENGTH:
            raise invalid(f"{where}: key {name!r} is shorter than {MIN_KEY_LENGTH} characters")
        if not _KEY.fullmatch(key):
            raise invalid(f"{where}: key {name!r} must be printable ASCII without spaces")
        if name in names:
            raise invalid(f"{where}: the name {name!r} is given twice")
        if key in keys:
            raise invalid(f"{where}: key {name!r} is the same key as {keys[key]!r}")
        names.add(name)
        keys[key] = name
        entries.append((name, key, scope))
    return tuple(entries)


def load_keys(file: Path | None, env_value: str | None) -> tuple[KeyEntry, ...]:
    """The keys of the file and of the environment variable's value, together."""
    lines: list[tuple[str, str]] = []
    if file is not None:  # a file that holds no key is a mistake, not an open gateway
        try:
            text = file.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise invalid(f"cannot read the API keys file {file}: {why}") from None
        lines += [(f"{file} line {i}", line) for i, line in enumerate(text.splitlines(), 1)]
    if env_value:
        pieces = env_value.replace("\n", ",").split(",")
        lines += [(f"{ENV} entry {i}", piece) for i, piece in enumerate(pieces, 1)]
    entries = parse_keys(lines)
    if file is not None and not entries:
        raise invalid(f"the API keys file {file} holds no key")
    return entries


class ClientKeys:
    """The configured keys, by the sha256 digest of each; `requests` counts each client's
    authenticated requests (read at scrape time, bounded by the keys file)."""

    def __init__(self, entries: Iterable[KeyEntry] = ()) -> None:
        self.requests: Counter[str] = Counter()
        self._by_digest: dict[bytes, tuple[bytes, str, str]] = {}
        self.replace(entries)

    def replace(self, entries: Iterable[KeyEntry]) -> None:
        """Serve these keys from now on (one assignment: a request sees the old set or the
        new one). Counts of names no longer configured are kept: counters never go back."""
        by_digest = {}
        for name, key, scope in entries:
            raw = key.encode()
            by_digest[hashlib.sha256(raw).digest()] = (raw, name, scope)
            self.requests[name] += 0  # every client is in the metrics from the start
        self._by_digest = by_digest

    @property
    def enabled(self) -> bool:
        return bool(self._by_digest)

    def describe(self) -> list[str]:
        """`name (scope)` of each key, for the start-up log."""
        return [f"{name} ({scope})" for _, name, scope in self._by_digest.values()]

    def client(self, authorization: str | None, scope: str) -> str:
        """The name of the key an `Authorization: Bearer KEY` header presents, if its scope
        allows `scope` (INFER, FEEDBACK or READ); UNAUTHORIZED or FORBIDDEN otherwise. Without
        configured keys every caller is ANONYMOUS."""
        if not self._by_digest:
            return ANONYMOUS
        if authorization is None:
            raise LockgateError(
                ErrorKind.UNAUTHORIZED, "an API key is required: send 'Authorization: Bearer KEY'"
            )
        scheme, _, presented = authorization.strip().partition(" ")
        presented = presented.strip()
        if scheme.lower() != "bearer" or not presented:
            raise LockgateError(
                ErrorKind.UNAUTHORIZED,
                "malformed Authorization header: expected 'Bearer KEY'",
            )
        raw = presented.encode("utf-8", "surrogateescape")
        found = self._by_digest.get(hashlib.sha256(raw).digest())
        if found is None or not hmac.compare_digest(found[0], raw):
            raise LockgateError(ErrorKind.UNAUTHORIZED, "invalid API key")
        _, name, allowed = found
        if allowed != ALL and scope != READ and scope != allowed:
            raise LockgateError(
                ErrorKind.FORBIDDEN,
                f"API key {name!r} has the scope {allowed!r}; this call needs the scope "
                f"{scope!r} (or 'all')",
            )
        self.requests[name] += 1
        return name
