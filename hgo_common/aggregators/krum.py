"""Krum (Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine Learning with Adversaries:
Byzantine Tolerant Gradient Descent", NeurIPS 2017).

Variant: the score of row i is the sum of its squared Euclidean distances to its
m - f - 2 nearest other rows; Krum returns the row with the lowest score (on an exact
tie, the lexicographically smallest of the tied rows, so row order never matters).
Precondition m > 2f + 2, i.e. m >= 2f + 3.

All m^2 distances come from ONE Gram product ``x @ x.T`` (no loop over pairs); see
``_common.pairwise_sq_distances`` for its float32 rounding.
"""

from __future__ import annotations

import numpy as np

from . import register
from ._common import krum_scores, pairwise_sq_distances, select_lowest


def krum_min_rows(f: int) -> int:
    """Krum needs m > 2f + 2."""
    return 2 * f + 3


@register("krum", coordinatewise=False, min_rows=krum_min_rows, condition="m > 2f+2")
def krum(x: np.ndarray, *, f: int = 0) -> np.ndarray:
    """The row of ``x`` with the lowest Krum score.

    Parameters
    ----------
    x : ndarray of shape (m, k)
    f : int

    Returns
    -------
    ndarray of shape (k,), float64
    """
    scores = krum_scores(pairwise_sq_distances(x), f)
    return np.asarray(x[int(select_lowest(scores, x, 1)[0])], dtype=np.float64)
