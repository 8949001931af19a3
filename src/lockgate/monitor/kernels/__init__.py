"""Numba kernels of the monitor: pure functions on whole arrays, imported only with numpy.

Every statistic they maintain is a fixed-size integer array updated in place, so the state of
several workers or replicas merges by adding arrays. See each module for the exact layout.
"""

from __future__ import annotations

from lockgate.monitor.kernels.ddsketch import sketch_add
from lockgate.monitor.kernels.divergence import (
    drift_scores,
    js_divergence,
    ks_binned,
    psi,
    wasserstein_binned,
)
from lockgate.monitor.kernels.histogram import category_update, histogram_update

__all__ = [
    "category_update",
    "drift_scores",
    "histogram_update",
    "js_divergence",
    "ks_binned",
    "psi",
    "sketch_add",
    "wasserstein_binned",
]
