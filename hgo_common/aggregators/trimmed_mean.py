"""Coordinate-wise trimmed mean (Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust
Distributed Learning: Towards Optimal Statistical Rates", ICML 2018).

Variant: for each coordinate, drop the f largest and the f smallest of the m values
and average the m - 2f that remain (trimming exactly f on each side, the paper's
beta = f/m). Precondition m >= 2f + 1.
"""

from __future__ import annotations

import numpy as np

from ._common import sorted_columns, sorted_form, trimmed_mean_of_sorted
from .base import register


@register("trimmed-mean", coordinatewise=True, min_rows=lambda f: 2 * f + 1, condition="m >= 2f+1")
@sorted_form(trimmed_mean_of_sorted)
def trimmed_mean(x: np.ndarray, *, f: int = 0) -> np.ndarray:
    """Per column, the mean of the values left after removing the f largest and f smallest.

    Parameters
    ----------
    x : ndarray of shape (m, k)
    f : int

    Returns
    -------
    ndarray of shape (k,), float64
    """
    return trimmed_mean_of_sorted(sorted_columns(x), f)
