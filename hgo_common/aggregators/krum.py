"""Krum (Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine Learning with Adversaries:
Byzantine Tolerant Gradient Descent", NeurIPS 2017).

Variant: the score of row i is the sum of its squared Euclidean distances to its
m - f - 2 nearest other rows; Krum returns the row with the lowest score (on an exact
tie, the lexicographically smallest of the tied rows, so row order never matters).
Precondition m > 2f + 2, i.e. m >= 2f + 3.

This is the rule of Blanchard et al.'s paper (its Section 4, "Krum", with n = m
workers): the score of a vector is the sum of squared distances to its n - f - 2 closest
vectors and Krum outputs the vector with the smallest score. It is not what the HGO
authors' code runs: theirs is ``krum-coord-authors`` (a 1-d Krum per coordinate, f = 0).

All m^2 distances come from ONE Gram product ``x @ x.T`` (no loop over pairs); see
``_common.sq_distances_from_gram`` for its float32 rounding. ``krum_weights`` works from
the Gram matrix alone, so hgo_common.blocks computes each segment's Gram in place on the
round buffer (no copy of the segment's rows).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ._common import gram, krum_scores, select_lowest, sq_distances_from_gram
from .base import register


def krum_min_rows(f: int) -> int:
    """Krum needs m > 2f + 2."""
    return 2 * f + 3


def krum_weights(g: np.ndarray, rows: Callable[[np.ndarray], np.ndarray], *, f: int = 0) -> np.ndarray:
    """One-hot (m,) weights on the Krum choice, from the rows' (m x m) Gram matrix ``g``."""
    scores = krum_scores(sq_distances_from_gram(g), f)
    w = np.zeros(g.shape[0])
    w[int(select_lowest(scores, rows, 1)[0])] = 1.0
    return w


@register(
    "krum", coordinatewise=False, min_rows=krum_min_rows, condition="m > 2f+2", gram_weights=krum_weights
)
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
    w = krum_weights(gram(x), lambda idx: x[idx], f=f)
    return np.asarray(x[int(np.argmax(w))], dtype=np.float64)
