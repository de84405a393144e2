"""Arithmetic mean: the non-robust baseline (plain distributed SGD).

One Byzantine row moves the output arbitrarily far (breakdown point 0); it is here
as the honest baseline of the paper's Figures 3-4 and to show that Average breaks
under attack (Figures 5-6).
"""

from __future__ import annotations

import numpy as np

from .base import register


@register("average", coordinatewise=True, condition="m >= 1")
def average(x: np.ndarray, *, f: int = 0) -> np.ndarray:
    """Column mean of an (m x k) array, accumulated in float64; ``f`` is ignored.

    Parameters
    ----------
    x : ndarray of shape (m, k)
    f : int
        Ignored (no robustness).

    Returns
    -------
    ndarray of shape (k,), float64
    """
    return np.asarray(x.mean(axis=0, dtype=np.float64))
