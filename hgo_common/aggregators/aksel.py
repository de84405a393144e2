"""AKSEL (Boussetta, El Mhamdi, Guerraoui, Maurer, Rouault, "AKSEL: Fast Byzantine
SGD", OPODIS 2020, LIPIcs 184, 8:1-8:16), the vector rule.

What this follows: S. Rouault's reference ``aksel.py`` (EPFL, 2020-2021, the Garfield
library's GAR; read from a public copy of the file, its repository commit not pinned):
compute the coordinate-wise median ``med`` of the m rows, the squared distance
``|x_i - med|^2`` of every row to it, and return the plain mean of the ``c`` rows closest
to ``med``. ``c`` depends on ``mode``:

* ``"mid"`` (default, as in the reference): c = ceil(m / 2) = (m + 1) // 2;
* ``"n-f"``: c = m - f, keep every row but the f farthest.

Differences from that reference: for an even m its ``torch.median`` takes the lower of
the two middle values, here the median is their mean; rows tied at the cut are taken in
lexicographic order (so row order never matters), where the reference keeps Python's
stable sort order. Precondition m >= 2f + 1 (an honest majority, as the reference's
``check``).

Not what the HGO authors' code runs: their ``src/aggregators.py`` (karimboubouh/HgO,
commit 372202e) applies AKSEL per coordinate — that is ``aksel-coord-authors``. The same
file keeps a vector version commented out (``np.nanmedian`` median, rows whose squared
distance is at most the median squared distance), which keeps the same rows as ``"mid"``
up to ties.
"""

from __future__ import annotations

import numpy as np

from ._common import median_of_sorted, select_lowest, sorted_columns, weighted_rows
from .base import register

MODES = ("mid", "n-f")


@register("aksel", coordinatewise=False, min_rows=lambda f: 2 * f + 1, condition="m >= 2f+1")
def aksel(x: np.ndarray, *, f: int = 0, mode: str = "mid") -> np.ndarray:
    """Mean of the rows closest (squared L2) to the coordinate-wise median.

    Parameters
    ----------
    x : ndarray of shape (m, k)
    f : int
    mode : {"mid", "n-f"}
        How many rows to keep: (m + 1) // 2, or m - f.

    Returns
    -------
    ndarray of shape (k,), float64
    """
    m = x.shape[0]
    if mode == "mid":
        c = (m + 1) // 2
    elif mode == "n-f":
        c = m - f
    else:
        raise ValueError(f"aksel: mode must be one of {MODES}, got {mode!r}")
    med = median_of_sorted(sorted_columns(x)).astype(x.dtype)
    diff = x - med
    dist = np.einsum("ij,ij->i", diff, diff, dtype=np.float64)
    chosen = select_lowest(dist, x, c)
    w = np.zeros(m)
    w[chosen] = 1.0 / c
    return weighted_rows(w, x)
