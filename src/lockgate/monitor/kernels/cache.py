"""Numba's on-disk cache, made safe for several processes compiling at once.

A gateway's workers, its monitor process and the retrain worker all read and write the same
kernel cache, and on a fresh install they compile at the same moment (each warms the kernels at
start). Numba's own cache is not safe for that: saving a signature reads the index, picks the
first free data file number and writes the index and the file, with no lock, so two processes
saving different signatures of one kernel can both take the same number, and the index ends up
naming a file that holds the other signature's machine code. The next process to load that
signature runs code compiled for other argument types: wrong results or a crash.

`LockedCache` saves under an exclusive lock on a file in the cache directory (index and data
together), loads under a shared one, and uses a loaded entry only if it was compiled for the
signature asked for; anything else counts as a miss and is compiled again, which also mends a
cache written before (or by a version without) the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from typing import Any

from numba.core.caching import FunctionCache

LOCK_NAME = "lockgate-kernels.lock"


class LockedCache(FunctionCache):
    """`FunctionCache` whose loads and saves hold a lock shared by every process (numba's
    methods carry no type hints, hence the ignores)."""

    def __init__(self, py_func: Callable[..., Any]) -> None:
        super().__init__(py_func)  # type: ignore[no-untyped-call]

    def load_overload(self, sig: Any, target_context: Any) -> Any:
        with self._locked(fcntl.LOCK_SH):
            loaded = super().load_overload(sig, target_context)  # type: ignore[no-untyped-call]
        if loaded is not None and tuple(loaded.signature.args) != tuple(sig):
            return None  # another signature's code under this one's key: compile anew
        return loaded

    def save_overload(self, sig: Any, data: Any) -> None:
        with self._locked(fcntl.LOCK_EX):
            super().save_overload(sig, data)  # type: ignore[no-untyped-call]

    @contextlib.contextmanager
    def _locked(self, kind: int) -> Iterator[None]:
        """Hold `kind` of lock on the cache directory's lock file; without one (a read-only
        cache directory, which nothing can write to either) go on unlocked."""
        try:
            os.makedirs(self.cache_path, exist_ok=True)
            fd = os.open(os.path.join(self.cache_path, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:
            yield
            return
        try:
            fcntl.flock(fd, kind)
            yield
        finally:
            os.close(fd)  # closing releases the lock
