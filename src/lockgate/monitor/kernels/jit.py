"""The one Numba decorator every monitor kernel uses, so compile options live in one place.

- cached: compiled machine code is written next to the sources (``__pycache__``), so a
  restarted worker loads kernels in milliseconds instead of recompiling for seconds; through
  :class:`~lockgate.monitor.kernels.cache.LockedCache`, as the gateway's processes share it.
- ``nogil=True``: the drain thread runs kernels without holding the GIL, so the event loop and
  the onnxruntime threads keep running while a slice is folded into the statistics.
- ``error_model="numpy"``: float division by zero gives inf/nan like numpy instead of raising,
  which also lets LLVM vectorise divisions.
- ``fastmath=False``: the kernels rely on IEEE semantics (NaN compares false, inf ordering,
  exact bucket boundaries); fast-math would let LLVM assume no NaN/inf and break them.
- ``boundscheck=False``: kernels validate shapes once at entry instead of per element.

``jit_sums`` is the same with two fast-math flags only, ``reassoc`` and ``contract``: LLVM may
reorder float additions (so a sum over a row vectorises into several partial sums) and fuse a
multiply and an add. Neither assumes finite values, so NaN and inf propagate as in numpy; only
the rounding of long sums changes, for the better with float64 accumulators. ``jit_fused``
has ``contract`` alone: multiply-adds fused (one rounding instead of two), nothing reordered, for
kernels whose order of operations carries precision (a Cody-Waite reduction, a polynomial).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import numba

from lockgate.monitor.kernels.cache import LockedCache

F = TypeVar("F", bound=Callable[..., Any])

JIT_OPTIONS: dict[str, Any] = {
    "cache": False,  # numba's own on-disk cache; `_cached` puts ours in its place
    "nogil": True,
    "error_model": "numpy",
    "fastmath": False,
    "boundscheck": False,
}
SUM_OPTIONS: dict[str, Any] = {**JIT_OPTIONS, "fastmath": {"reassoc", "contract"}}
FUSED_OPTIONS: dict[str, Any] = {**JIT_OPTIONS, "fastmath": {"contract"}}


def jit(fn: F) -> F:
    """Compile ``fn`` in nopython mode with the project's options; typed as the identity so
    callers keep the Python signature under strict mypy."""
    compiled: F = _cached(numba.njit(**JIT_OPTIONS)(fn))
    return compiled


def jit_sums(fn: F) -> F:
    """``jit`` for kernels whose float sums may be reordered and fused (see the module)."""
    compiled: F = _cached(numba.njit(**SUM_OPTIONS)(fn))
    return compiled


def jit_fused(fn: F) -> F:
    """``jit`` for kernels whose multiply-adds may be fused, in their written order."""
    compiled: F = _cached(numba.njit(**FUSED_OPTIONS)(fn))
    return compiled


def _cached(dispatcher: Any) -> Any:
    """`dispatcher` with the on-disk cache numba's ``cache=True`` would give it, locked."""
    dispatcher._cache = LockedCache(dispatcher.py_func)
    return dispatcher
