"""Ring matrices in memory another process can map: anonymous memory files (`memfd_create`).

A file has no name in any file system, so nothing can leak when either process dies: the memory
is freed once the last descriptor and the last mapping are gone. The monitor process maps a set
through its owner's descriptor table (`/proc/<pid>/fd/<fd>`), which needs no descriptor passing
and is open to processes of the same user only.
"""

from __future__ import annotations

import itertools
import mmap
import os
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

Array = np.ndarray[Any, Any]
_ALIGN = 64  # the outputs start on a cache line of their own
_serials = itertools.count(1)


@dataclass(frozen=True, slots=True)
class SharedHandle:
    """Where the monitor process finds a set's matrices: the owner's pid and descriptor (and
    a serial, unique in the owner: descriptor numbers are reused)."""

    pid: int
    fd: int
    nbytes: int
    serial: int
    capacity: int


def _offset(capacity: int, widths: tuple[int, int]) -> int:
    size = capacity * widths[0] * 4
    return (size + _ALIGN - 1) // _ALIGN * _ALIGN


def shared_matrices(capacity: int, widths: tuple[int, int]) -> tuple[Array, Array, SharedHandle]:
    """Two float32 matrices [capacity, width] in one memory file; the file is closed when the
    matrices are garbage (the mapping keeps its own reference)."""
    offset = _offset(capacity, widths)
    nbytes = max(mmap.PAGESIZE, offset + capacity * widths[1] * 4)
    fd = os.memfd_create("lockgate-ring", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, nbytes)
        memory = mmap.mmap(fd, nbytes)
    except BaseException:
        os.close(fd)
        raise
    inputs, outputs = _views(memory, capacity, widths)
    weakref.finalize(memory, os.close, fd)
    handle = SharedHandle(os.getpid(), fd, nbytes, next(_serials), capacity)
    return inputs, outputs, handle


def map_matrices(handle: SharedHandle, widths: tuple[int, int]) -> tuple[Array, Array]:
    """The matrices of a set another process allocated (in the monitor process)."""
    fd = os.open(f"/proc/{handle.pid}/fd/{handle.fd}", os.O_RDWR | os.O_CLOEXEC)
    try:
        memory = mmap.mmap(fd, handle.nbytes)
    finally:
        os.close(fd)  # the mapping holds the memory
    return _views(memory, handle.capacity, widths)


def _views(memory: mmap.mmap, capacity: int, widths: tuple[int, int]) -> tuple[Array, Array]:
    offset = _offset(capacity, widths)
    inputs = np.ndarray((capacity, widths[0]), np.float32, memory, 0)
    outputs = np.ndarray((capacity, widths[1]), np.float32, memory, offset)
    return inputs, outputs
