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

* m = 1: the single value; m = 2: the first row's value (zero neighbours, all scores 0);
* otherwise, for each candidate i in 0..m-2 (the last row is never a candidate and is
  not among the neighbours), the squared distances ``(x_i - x_j)^2`` to j in 0..m-2 —
  *including itself* (distance 0) — of which the m - 2 smallest are summed (f = 0);
* the output is the value of the first candidate with the lowest score (``np.argmin``).

The ``f`` keyword is accepted for the common interface and ignored, as in the source.
Cost: O(m^2) per coordinate (m = 80: ~6,400 distances per coordinate), computed in column
tiles so memory stays a few MB; meant for emulating the authors' runs, not for large d.
tests/test_aggregators.py checks it against a literal transcription of their loop.
"""

from __future__ import annotations

import numpy as np

from . import register

# float64 (tile x (m-1) x (m-1)) distance tensor per tile: about 4 MB.
_TILE_ELEMS = 1 << 19


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
    if m <= 2:
        return np.asarray(x[0], dtype=np.float64)
    n = m - 1  # candidates and neighbours: every row but the last
    nb = m - 2  # neighbours summed per candidate (their nb_workers - f - 2 with f = 0)
    out = np.empty(k, dtype=np.float64)
    tile = max(1, _TILE_ELEMS // (n * n))
    for j in range(0, k, tile):
        cols = np.asarray(x[:n, j : j + tile], dtype=np.float64).T  # (t, n)
        diff = cols[:, :, None] - cols[:, None, :]  # (t, n, n): candidate i, neighbour j
        # their np.linalg.norm(scalar) ** 2: sqrt of the square, squared again
        sq = np.sqrt(diff * diff) ** 2
        sq.partition(nb - 1, axis=2)
        scores = sq[:, :, :nb].sum(axis=2)
        pick = np.argmin(scores, axis=1)  # first lowest, as np.argmin in the source
        out[j : j + tile] = cols[np.arange(cols.shape[0]), pick]
    return out
