"""Clipped mean: a robust aggregation rule written outside HGO.

For every coordinate, clip the m values to ``median ± c · MAD`` (MAD: median absolute
deviation from the median) and average them. Coordinate-wise, vectorized over the
(m x k) matrix; tolerates f < m/2 outliers per coordinate (the median and the MAD do).
"""

from __future__ import annotations

import numpy as np

from hgo_common import aggregators


def _clipped_mean(x: np.ndarray, *, f: int, c: float = 2.0) -> np.ndarray:
    med = np.median(x, axis=0)
    mad = np.median(np.abs(x - med), axis=0)
    return np.asarray(np.clip(x, med - c * mad, med + c * mad).mean(axis=0), dtype=np.float64)


clipped_mean = aggregators.make_rule(
    _clipped_mean,
    name="clipped-mean",
    coordinatewise=True,
    min_rows=lambda f: 2 * f + 1,
    condition="m > 2f",
)
