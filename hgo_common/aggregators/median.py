"""Coordinate-wise median (Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust
Distributed Learning: Towards Optimal Statistical Rates", ICML 2018).

Variant: for each coordinate, the median of the m values; for an even m, the mean of
the two middle values. Precondition m >= 2f + 1 (an honest majority on every
coordinate), so the output always lies between two honest values.
"""

from __future__ import annotations

import numpy as np

from ._common import median_of_sorted, sorted_columns, sorted_form
from .base import register


def _of_sorted(s: np.ndarray, f: int) -> np.ndarray:
    return median_of_sorted(s)


@register("median", coordinatewise=True, min_rows=lambda f: 2 * f + 1, condition="m >= 2f+1")
@sorted_form(_of_sorted)
def median(x: np.ndarray, *, f: int = 0) -> np.ndarray:
    """Column median of an (m x k) array.

    Parameters
    ----------
    x : ndarray of shape (m, k)
    f : int
        Only checked against the precondition m >= 2f + 1.

    Returns
    -------
    ndarray of shape (k,), float64
    """
    # Sorting cache-sized transposed tiles beats np.median's partition on the
    # (workers x coordinates) layout by 2-4x (docs/design.md §8, docs/benchmarks.md).
    return _of_sorted(sorted_columns(x), f)
