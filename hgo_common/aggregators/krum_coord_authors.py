"""Per-coordinate Krum as the HGO authors' code runs it: ``krum-coord-authors``.

Source: the authors' repository ``karimboubouh/HgO``, file ``src/aggregators.py``,
function ``krum(gradients, f=0)``, read at commit
372202e5ff05ae388f590b5649756a628f2a5b3e (v1.0); the function is the same at
ff215db769f6a45a79f065635d86227d247f2db3 (HEAD when read). Their ``aggregate_vector``
calls it as ``krum(grads)``, i.e. always with **f = 0**, whatever the run's f. It is not
the Krum of Blanchard et al. 2017 (that is the vector rule ``krum``): every coordinate is
a separate 1-d Krum, and their candidate loop leaves the last row out.

What this rule computes, column by column, for the m rows in the order given
(hgo_common.blocks passes them in increasing worker index, as the authors' list of
responding workers is ordered; their NaN padding of short prefixes is dropped per column,
which is exactly the segment's rows here):

* m <= 3: the first row's value (m = 3: each candidate's one smallest distance is to
  itself, all scores 0; m = 2: no neighbour at all);
* otherwise, for each candidate i in 0..m-2 (the last row is never a candidate and is
  not among the neighbours), the squared distances ``(x_i - x_j)^2`` to j in 0..m-2 —
  *including itself* (distance 0) — of which the m - 2 smallest are summed (f = 0);
* the output is the value of the first candidate with the lowest score (``np.argmin``).

The ``f`` keyword is accepted for the common interface and ignored, as in the source.

Computed in O(m) per coordinate, not with their O(m^2) loop: with f = 0 a candidate sums
its n - 1 smallest of n squared distances (n = m - 1, itself included), i.e. all of them
but the largest, and in one dimension the largest is to the column's minimum or maximum.
So ``score_i = n (x_i - mean)^2 + sum_j (x_j - mean)^2 - max((x_i - min)^2, (x_i - max)^2)``
over the n candidates, in float64. That closed form rounds differently from the source's
sum of sorted terms, which matters where two scores are mathematically equal: with m = 4
(three candidates) the two closest rows always tie, and the source takes the first. So the
columns where a second candidate comes within rounding of the lowest score are scored
again the source's way (each candidate's squared distances sorted, the m - 2 smallest
summed), which is exact for ties, and the first lowest is taken.
tests/test_authors_rules.py checks it against a naive transcription of their loop.
"""

from __future__ import annotations

import numpy as np

from .base import register

# Columns per float64 tile (80 rows: 42 MB).
_TILE = 65536


@register("krum-coord-authors", coordinatewise=True, condition="m >= 1")
def krum_coord_authors(x: np.ndarray, *, f: int = 0) -> np.ndarray:
    """Per-coordinate Krum with f = 0 as in the authors' ``src/aggregators.py``.

    Parameters
    ----------
    x : ndarray of shape (m, k)
    f : int
        Ignored: the authors' code always calls Krum with f = 0.

    Returns
    -------
    ndarray of shape (k,), float64
    """
    m, k = x.shape
    if m <= 3:
        return np.asarray(x[0], dtype=np.float64)
    n = m - 1  # candidates and neighbours: every row but the last
    out = np.empty(k, dtype=np.float64)
    for j in range(0, k, _TILE):
        c = np.asarray(x[:n, j : j + _TILE], dtype=np.float64).T  # (t, n)
        dev = c - c.mean(axis=1)[:, None]
        spread = (dev * dev).sum(axis=1)[:, None]
        farthest = np.maximum((c - c.min(axis=1)[:, None]) ** 2, (c - c.max(axis=1)[:, None]) ** 2)
        scores = n * dev * dev + spread - farthest
        pick = np.argmin(scores, axis=1)  # first lowest, as np.argmin in the source
        # Near ties (within the closed form's rounding): score those columns exactly.
        best = scores[np.arange(c.shape[0]), pick][:, None]
        tol = 1e-9 * (n * spread + farthest.max(axis=1, keepdims=True)) + 1e-300
        near = np.flatnonzero((scores <= best + tol).sum(axis=1) > 1)
        if near.size:
            pick[near] = _exact_pick(c[near], n)
        out[j : j + _TILE] = c[np.arange(c.shape[0]), pick]
    return out


def _exact_pick(c: np.ndarray, n: int) -> np.ndarray:
    """The source's choice for the columns ``c`` (t, n): sorted squared distances, the n - 1
    smallest summed, the first lowest. Equal multisets of distances give equal sums."""
    out = np.empty(c.shape[0], dtype=np.int64)
    for a in range(0, c.shape[0], 4096):  # (t, n, n) float64 in tiles of at most ~200 MB
        block = c[a : a + 4096]
        d2 = (block[:, :, None] - block[:, None, :]) ** 2
        d2.sort(axis=2)
        out[a : a + 4096] = np.argmin(d2[:, :, : n - 1].sum(axis=2), axis=1)
    return out
