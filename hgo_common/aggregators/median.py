"""Coordinate-wise median (Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust
Distributed Learning: Towards Optimal Statistical Rates", ICML 2018).

For an even number of rows the median is the mean of the two middle values.
"""

from __future__ import annotations

import numpy as np

from . import register


@register("median", coordinatewise=True, min_rows=lambda f: 2 * f + 1)
def median(x: np.ndarray, *, f: int = 0) -> np.ndarray:
    """Column median of an (m x k) array."""
    # np.sort along rows then picking the middle is several times faster than
    # np.median's partition on a (workers x coordinates) layout (DESIGN.md §8).
    m = x.shape[0]
    s = np.sort(x, axis=0)
    if m % 2:
        return np.asarray(s[m // 2])
    return np.asarray(0.5 * (s[m // 2 - 1] + s[m // 2]))
