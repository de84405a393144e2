"""Per-coordinate AKSEL as the HGO authors' code runs it: ``aksel-coord-authors``.

Source: the authors' repository ``karimboubouh/HgO``, file ``src/aggregators.py``,
function ``aksel(gradients)``, read at commit 372202e5ff05ae388f590b5649756a628f2a5b3e
(v1.0); the function is the same at ff215db769f6a45a79f065635d86227d247f2db3 (HEAD when
read). It takes no f. It is not the vector rule ``aksel`` (whose distance is over a whole
segment): their active code loops over columns; a vector version is left commented out.

What this rule computes for each column c of the m rows (their NaN padding of short
prefixes is dropped per column, which is exactly the segment's rows here):

* ``med`` = median of c (``np.nanmedian``: mean of the two middle values for an even m);
* ``dev_i = (c_i - med)^2`` (their ``np.linalg.norm(scalar) ** 2``);
* ``cut`` = median of the dev_i (again the mean of the two middles for an even m);
* the output is the mean of the c_i with ``dev_i <= cut`` (never empty: the smallest
  deviation is at most the median of the deviations).

Row order never matters. The ``f`` keyword is accepted for the common interface and
ignored, as in the source. tests/test_aggregators.py checks it against a literal
transcription of their loop.
"""

from __future__ import annotations

import numpy as np

from .base import register


def _median_rows(s: np.ndarray) -> np.ndarray:
    """Median of each row of a row-sorted (k x m) float64 array (mean of the middles)."""
    m = s.shape[1]
    if m % 2:
        return s[:, m // 2]
    return np.asarray(0.5 * (s[:, m // 2 - 1] + s[:, m // 2]))


_TILE = 4096


@register("aksel-coord-authors", coordinatewise=True, condition="m >= 1")
def aksel_coord_authors(x: np.ndarray, *, f: int = 0) -> np.ndarray:
    """Per-coordinate AKSEL as in the authors' ``src/aggregators.py``.

    Parameters
    ----------
    x : ndarray of shape (m, k)
    f : int
        Ignored: the authors' AKSEL takes no f.

    Returns
    -------
    ndarray of shape (k,), float64
    """
    k = x.shape[1]
    out = np.empty(k, dtype=np.float64)
    for j in range(0, k, _TILE):
        cols = np.asarray(x[:, j : j + _TILE], dtype=np.float64).T  # (t, m)
        med = _median_rows(np.sort(cols, axis=1))
        diff = cols - med[:, None]
        dev = np.sqrt(diff * diff) ** 2
        cut = _median_rows(np.sort(dev, axis=1))
        keep = dev <= cut[:, None]
        out[j : j + _TILE] = np.where(keep, cols, 0.0).sum(axis=1) / keep.sum(axis=1)
    return out
