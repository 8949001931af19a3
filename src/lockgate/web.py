"""HTTP plumbing shared by the data-plane and admin listeners: the one ErrorKind -> status table,
error bodies, bounded body reads and strict parsing of numeric header values."""

from __future__ import annotations

import math

import msgpack
import orjson
from starlette.requests import Request
from starlette.responses import Response

from lockgate.errors import ErrorKind, LockgateError, invalid

JSON = "application/json"
MSGPACK = "application/msgpack"
STATUS: dict[ErrorKind, int] = {
    ErrorKind.INVALID: 400,
    ErrorKind.UNAUTHORIZED: 401,
    ErrorKind.FORBIDDEN: 403,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.CONFLICT: 409,
    ErrorKind.TOO_LARGE: 413,
    ErrorKind.UNSUPPORTED_MEDIA: 415,
    ErrorKind.UNPROCESSABLE: 422,
    ErrorKind.MODEL_FAILED: 500,
    ErrorKind.UNAVAILABLE: 503,
    ErrorKind.OVERLOADED: 503,
    ErrorKind.DEADLINE: 504,
}


def is_msgpack(content_type: str) -> bool:
    return "msgpack" in content_type


def error_body(message: str, *, msgpack_body: bool = False) -> tuple[bytes, str]:
    """`{"error": message}` as JSON, or as msgpack for a client that speaks it."""
    if msgpack_body:
        return msgpack.packb({"error": message}), MSGPACK
    return orjson.dumps({"error": message}), JSON


def error_headers(exc: LockgateError) -> dict[str, str]:
    """Headers an error answer carries besides its body: when to retry a shed request."""
    if exc.kind is ErrorKind.OVERLOADED:
        return {"retry-after": str(max(1, math.ceil(exc.retry_after or 1)))}
    return {}


def error_response(exc: LockgateError, *, msgpack_body: bool = False) -> Response:
    body, media = error_body(exc.message, msgpack_body=msgpack_body)
    return Response(
        body, status_code=STATUS[exc.kind], headers=error_headers(exc), media_type=media
    )


class BodyBudget:
    """Request-body bytes this process holds for bodies still arriving. A body that arrives in
    the first read never touches it; one that must wait for more reserves its declared length
    (or what has arrived, when none is declared) and is shed with 503 when the budget is spent,
    so stalled uploads cannot take the memory. One event loop: no lock."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self.shed = 0

    def reserve(self, nbytes: int) -> None:
        if self.held + nbytes > self.limit:
            self.shed += 1
            raise LockgateError(
                ErrorKind.OVERLOADED,
                f"too many request bodies in transit ({self.held} bytes buffered): retry later",
                retry_after=1.0,
            )
        self.held += nbytes

    def release(self, nbytes: int) -> None:
        self.held -= nbytes


def digits(raw: str, what: str) -> int:
    """A non-negative integer written in ASCII digits only (`str.isdigit` also accepts '²')."""
    text = raw.strip()
    if not (text.isascii() and text.isdigit()):
        raise invalid(f"{what} must be a non-negative integer, got {raw!r}")
    return int(text)


def check_declared_length(declared: str | None, limit: int) -> None:
    """Refuse a body over the limit before reading it, when its length is declared."""
    if declared is None:
        return
    length = digits(declared, "Content-Length")
    if length > limit:
        raise LockgateError(
            ErrorKind.TOO_LARGE, f"body of {length} bytes exceeds the {limit}-byte limit"
        )


async def read_body(request: Request, limit: int, budget: BodyBudget | None = None) -> bytes:
    """The body, refusing more than `limit` bytes before reading them when the length is known,
    and holding its bytes against `budget` while it arrives."""
    declared = request.headers.get("content-length")
    check_declared_length(declared, limit)
    chunks, total = [], 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise LockgateError(ErrorKind.TOO_LARGE, f"body exceeds the {limit}-byte limit")
            if budget is not None:
                budget.reserve(len(chunk))
            chunks.append(chunk)
    finally:
        if budget is not None:
            budget.release(sum(map(len, chunks)))
    return b"".join(chunks)
