"""The admin API's client, for the CLI and the retrain worker: JSON over HTTP, the bearer token,
and the state revision each write is based on (`If-Match`). Answers used as structures are parsed
into the typed model here (`endpoint`), once."""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import orjson

from lockgate.errors import ErrorKind, LockgateError
from lockgate.specs import EndpointSpec

DEFAULT_ADMIN = "http://127.0.0.1:8002"


@dataclass(frozen=True, slots=True)
class EndpointView:
    """An endpoint as the admin API shows it: stored, or implicit (its model's latest version)."""

    name: str
    implicit: bool
    spec: EndpointSpec

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> EndpointView:
        """From `GET /v1/endpoints/{name}` or one of `GET /v1/state`'s endpoints."""
        spec = EndpointSpec.from_doc({k: doc[k] for k in ("variants", "shadows") if k in doc})
        return cls(str(doc.get("name")), bool(doc.get("implicit")), spec)


class AdminClient:
    def __init__(self, base: str, token: str | None, timeout: float = 60.0) -> None:
        self.base = base.rstrip("/")
        self.token = token
        self.timeout = timeout

    def call(
        self, method: str, path: str, body: Any = None, revision: int | None = None
    ) -> dict[str, Any]:
        headers = {"accept": "application/json"}
        if self.token:
            headers["authorization"] = f"Bearer {self.token}"
        if revision is not None:
            headers["if-match"] = f'"{revision}"'
        data = None
        if body is not None:
            data = orjson.dumps(body)
            headers["content-type"] = "application/json"
        request = urllib.request.Request(self.base + path, data, headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                doc: dict[str, Any] = orjson.loads(response.read())
                return doc
        except urllib.error.HTTPError as exc:
            try:
                message = orjson.loads(exc.read()).get("error", exc.reason)
            except (orjson.JSONDecodeError, AttributeError):
                message = exc.reason
            raise LockgateError(ErrorKind.INVALID, f"admin API {exc.code}: {message}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise LockgateError(
                ErrorKind.UNAVAILABLE, f"cannot reach the admin API at {self.base}: {reason}"
            ) from None

    def revision(self) -> int:
        return int(self.call("GET", "/v1/state")["revision"])

    def endpoint(self, name: str) -> EndpointView:
        return EndpointView.from_doc(self.call("GET", f"/v1/endpoints/{name}"))
