"""Phocas (Xie, Koyejo, Gupta, "Generalized Byzantine-tolerant SGD", arXiv:1802.10116,
2018).

Variant: for each coordinate j, the mean of the m - f values closest to the
coordinate-wise trimmed mean of column j (trimmed mean with b = f: the f largest and
f smallest values dropped). Ties as in meamed: the lowest contiguous window of the
sorted column. Precondition m >= 2f + 1.
"""

from __future__ import annotations

import numpy as np

from ._common import closest_mean_of_sorted, sorted_columns, sorted_form, trimmed_mean_of_sorted
from .base import register


def _of_sorted(s: np.ndarray, f: int) -> np.ndarray:
    return closest_mean_of_sorted(s, trimmed_mean_of_sorted(s, f), s.shape[1] - f)


@register("phocas", coordinatewise=True, min_rows=lambda f: 2 * f + 1, condition="m >= 2f+1")
@sorted_form(_of_sorted)
def phocas(x: np.ndarray, *, f: int = 0) -> np.ndarray:
    """Per column, the mean of the m - f values nearest to the column's trimmed mean.

    Parameters
    ----------
    x : ndarray of shape (m, k)
    f : int

    Returns
    -------
    ndarray of shape (k,), float64
    """
    return _of_sorted(sorted_columns(x), f)
