"""Mean-around-median, "MeaMed" (Xie, Koyejo, Gupta, "Generalized Byzantine-tolerant
SGD", arXiv:1802.10116, 2018).

Variant: for each coordinate j, the mean of the m - f values closest to the
coordinate-wise median of column j (median of an even count: mean of the two middle
values). Among equally close candidates the selection is the lowest contiguous
window of the sorted column, so the output depends only on the multiset of values.
Precondition m >= 2f + 1.
"""

from __future__ import annotations

import numpy as np

from ._common import closest_mean_of_sorted, median_of_sorted, sorted_columns, sorted_form
from .base import register


def _of_sorted(s: np.ndarray, f: int) -> np.ndarray:
    return closest_mean_of_sorted(s, median_of_sorted(s), s.shape[1] - f)


@register("meamed", coordinatewise=True, min_rows=lambda f: 2 * f + 1, condition="m >= 2f+1")
@sorted_form(_of_sorted)
def meamed(x: np.ndarray, *, f: int = 0) -> np.ndarray:
    """Per column, the mean of the m - f values nearest to the column median.

    Parameters
    ----------
    x : ndarray of shape (m, k)
    f : int

    Returns
    -------
    ndarray of shape (k,), float64
    """
    return _of_sorted(sorted_columns(x), f)
