"""One error type for the whole gateway; each transport maps ErrorKind to its own status codes."""

from __future__ import annotations

import enum


class ErrorKind(enum.Enum):
    INVALID = "invalid"  # the client's request is malformed or does not match the model
    NOT_FOUND = "not_found"  # unknown model, version, output or route
    TOO_LARGE = "too_large"  # request body or tensor beyond the configured limit
    UNSUPPORTED_MEDIA = "unsupported_media"  # a body in a content type the route does not read
    UNAVAILABLE = "unavailable"  # not ready yet, shutting down, or the version failed to load
    OVERLOADED = "overloaded"  # queue full: shed load rather than collapse
    DEADLINE = "deadline"  # the request's deadline passed before it was answered
    CONFLICT = "conflict"  # stale revision (optimistic concurrency)
    UNAUTHORIZED = "unauthorized"  # missing or wrong credentials
    FORBIDDEN = "forbidden"  # credentials without the permission the call needs
    UNPROCESSABLE = "unprocessable"  # well-formed but semantically refused (e.g. weights)
    MODEL_FAILED = "model_failed"  # onnxruntime raised while running a valid request


# Outcomes that are the server's failure (5xx, timeouts, shedding), as the request counters name
# them: what a rollout holds against a canary. The rest of ErrorKind is the client's mistake.
SERVER_SIDE_OUTCOMES = frozenset(
    {
        ErrorKind.MODEL_FAILED.value,
        ErrorKind.UNAVAILABLE.value,
        ErrorKind.OVERLOADED.value,
        ErrorKind.DEADLINE.value,
        "internal",  # an unexpected exception: logged, 500
    }
)


class LockgateError(Exception):
    """An expected failure with a message meant for the caller."""

    def __init__(self, kind: ErrorKind, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"LockgateError({self.kind.name}, {self.message!r})"


def invalid(message: str) -> LockgateError:
    return LockgateError(ErrorKind.INVALID, message)


def not_found(message: str) -> LockgateError:
    return LockgateError(ErrorKind.NOT_FOUND, message)
