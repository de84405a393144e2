"""Multi-Krum (Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine Learning with
Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017; the multi-Krum
variant as in El Mhamdi, Guerraoui, Rouault, ICML 2018).

Variant: Krum scores (sum of squared distances to the m - f - 2 nearest other rows),
then the plain mean of the ``n_select`` rows with the lowest scores; ``n_select``
defaults to m - f (rows tied in score at the cut taken in lexicographic order). ``n_select = 1`` is Krum.
Precondition m > 2f + 2 and 1 <= n_select <= m.

The weights come from the rows' Gram matrix alone (``multi_krum_weights``), so
hgo_common.blocks computes each segment's Gram in place on the round buffer.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ._common import gram, krum_scores, select_lowest, sq_distances_from_gram, weighted_rows
from .base import register
from .krum import krum_min_rows


def multi_krum_weights(
    g: np.ndarray, rows: Callable[[np.ndarray], np.ndarray], *, f: int = 0, n_select: int | None = None
) -> np.ndarray:
    """(m,) weights 1 / n_select on the rows with the lowest Krum scores, from the Gram ``g``."""
    m = g.shape[0]
    c = m - f if n_select is None else int(n_select)
    if not 1 <= c <= m:
        raise ValueError(f"multi-krum: n_select must be in [1, m={m}], got {n_select}")
    scores = krum_scores(sq_distances_from_gram(g), f)
    chosen = select_lowest(scores, rows, c)
    w = np.zeros(m)
    w[chosen] = 1.0 / c
    return w


@register(
    "multi-krum", coordinatewise=False, min_rows=krum_min_rows, condition="m > 2f+2",
    gram_weights=multi_krum_weights,
)  # fmt: skip
def multi_krum(x: np.ndarray, *, f: int = 0, n_select: int | None = None) -> np.ndarray:
    """Mean of the ``n_select`` rows with the lowest Krum scores.

    Parameters
    ----------
    x : ndarray of shape (m, k)
    f : int
    n_select : int, optional
        How many rows to average; default m - f.

    Returns
    -------
    ndarray of shape (k,), float64
    """
    return weighted_rows(multi_krum_weights(gram(x), lambda idx: x[idx], f=f, n_select=n_select), x)
