"""Bulyan (El Mhamdi, Guerraoui, Rouault, "The Hidden Vulnerability of Distributed
Learning in Byzantium", ICML 2018), on top of Krum.

Variant:
1. Selection: theta = m - 2f rows chosen by Krum repeatedly: score the remaining
   rows (sum of squared distances to their r - f - 2 nearest remaining rows, r the
   number remaining, at least 1 neighbour), move the best one (the lexicographically
   smallest row on an exact tie) to the selected set, repeat.
2. Aggregation, per coordinate: beta = theta - 2f; the mean of the beta selected
   values closest to the coordinate-wise median of the selected rows (ties: lowest
   window of the sorted column, as meamed).

Precondition m >= 4f + 3. All distances come from one Gram product, computed once.
"""

from __future__ import annotations

import numpy as np

from ._common import (
    closest_mean_of_sorted,
    median_of_sorted,
    pairwise_sq_distances,
    select_lowest,
    sorted_columns,
)
from .base import register


def bulyan_select(d: np.ndarray, f: int, theta: int, x: np.ndarray | None = None) -> np.ndarray:
    """Indices of the ``theta`` rows chosen by iterated Krum on the distance matrix ``d``.

    Parameters
    ----------
    d : ndarray of shape (m, m)
        Squared pairwise distances.
    f : int
    theta : int
    x : ndarray of shape (m, k), optional
        The rows, to break exact score ties lexicographically (default: by index).

    Returns
    -------
    ndarray of shape (theta,), int
        In order of selection.
    """
    m = d.shape[0]
    remaining = np.ones(m, dtype=bool)
    chosen: list[int] = []
    others = d.copy()
    np.fill_diagonal(others, np.inf)
    # theta <= m iterations of an O(m^2) scoring step on the precomputed matrix.
    for _ in range(theta):
        r = int(remaining.sum())
        idx = np.flatnonzero(remaining)
        if r == 1:
            chosen.append(int(idx[0]))
            break
        nb = min(max(r - f - 2, 1), r - 1)
        sub = others[np.ix_(idx, idx)]
        scores = np.sort(sub, axis=1)[:, :nb].sum(axis=1)
        rows = x[idx] if x is not None else idx[:, None].astype(np.float64)
        best = int(idx[int(select_lowest(scores, rows, 1)[0])])
        chosen.append(best)
        remaining[best] = False
    return np.asarray(chosen, dtype=np.int64)


@register("bulyan", coordinatewise=False, min_rows=lambda f: 4 * f + 3, condition="m >= 4f+3")
def bulyan(x: np.ndarray, *, f: int = 0) -> np.ndarray:
    """Bulyan over Krum.

    Parameters
    ----------
    x : ndarray of shape (m, k)
    f : int

    Returns
    -------
    ndarray of shape (k,), float64
    """
    m = x.shape[0]
    theta = m - 2 * f
    chosen = bulyan_select(pairwise_sq_distances(x), f, theta, x)
    s = sorted_columns(x[np.sort(chosen)])
    return closest_mean_of_sorted(s, median_of_sorted(s), theta - 2 * f)
