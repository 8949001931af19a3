"""Waiting for a condition instead of sleeping for a guessed time: tests that wait poll what they
wait for, with a deadline far beyond any machine's normal speed, so a busy machine only makes
them slower, never wrong."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")
TIMEOUT = 60.0  # seconds; only reached when the condition never holds


def wait_until(
    check: Callable[[], T], what: str, timeout: float = TIMEOUT, interval: float = 0.02
) -> T:
    """Poll `check` until it returns something truthy, and return that; fail naming `what`
    after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (found := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
    return found


async def until(
    check: Callable[[], T | Awaitable[T]],
    what: str,
    timeout: float = TIMEOUT,
    interval: float = 0.005,
) -> T:
    """`wait_until` on an event loop: `check` may be a coroutine function; the loop runs other
    tasks between polls."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if isinstance(found, Awaitable):
            found = await found
        if found:
            return found  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(interval)
