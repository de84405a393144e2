"""The HGO authors' rules as their code runs them on NaN-padded rows: ``average-authors``,
``median-authors``, ``krum-authors``, ``aksel-authors``.

Source: the authors' repository ``karimboubouh/HgO``, file ``src/aggregators.py``,
functions ``average``, ``median``, ``krum`` and ``aksel`` (called by ``aggregate_vector``),
read at commit 372202e5ff05ae388f590b5649756a628f2a5b3e (v1.0) and at
ff215db769f6a45a79f065635d86227d247f2db3 (HEAD when read; the four functions are the same,
HEAD adds a ``tmean`` not used by Figures 5-8). Their server (``src/network.py``
``ParamServer.consistent_grads``, both commits) counts every row at its length — a
Byzantine row at the longest honest length, since ``src/utils.py`` ``fill_array`` pads the
honest rows to it before the attack — picks b_v from those lengths, cuts every row to b_v
and pads the shorter ones with NaN; then each rule skips NaN column by column:

* ``average``: ``np.nanmean(gradients, axis=0)``;
* ``median``: ``np.nanmedian(gradients, axis=0)``;
* ``krum(grads)`` (so f = 0) and ``aksel``: a loop over columns, each column's NaN entries
  dropped (``c = c[~np.isnan(c)]``) before the per-coordinate rule — here
  ``krum-coord-authors`` and ``aksel-coord-authors``, which document the rules themselves.

Every function here does the same: column j is aggregated over the rows whose value at j
is not NaN, in their order. On NaN-free input each equals its plain counterpart
(``average``, ``median`` for m >= 1, ``krum-coord-authors``, ``aksel-coord-authors``).
A column with no finite value gives NaN, as ``np.nanmean`` does in their code (where
it cannot happen: b_v never passes the v-th longest honest row); the round's guard then
refuses the update (``hgo_common.rounds``).

Why these exist (issue 22, item 3): the authors' ALIE (``alie-authors-nan``,
hgo_common/attacks/alie.py) is NaN past the shortest honest prefix. Without NaN-aware
rules the non-finite policy ends such a row there, so at v = 51 the block shrinks to the
weak prefixes; with these rules the simulator keeps the row at the longest honest length
with its NaN (``hgo_lab.simulator``, :data:`NAN_AWARE`), as their server does, and the
block is theirs.

Columns are grouped by their NaN pattern (rows that are NaN at j): prefixes make at most
one pattern per distinct row length, and each group is one vectorized call.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np

from .aksel_coord_authors import aksel_coord_authors
from .base import register
from .krum_coord_authors import krum_coord_authors

__all__ = ["NAN_AWARE", "aksel_authors", "average_authors", "krum_authors", "median_authors", "skips_nan"]

NAN_AWARE = frozenset({"average-authors", "median-authors", "krum-authors", "aksel-authors"})


def skips_nan(rule: str) -> bool:
    """Whether the rule named ``rule`` skips NaN per column (one of :data:`NAN_AWARE`)."""
    return rule in NAN_AWARE


def _per_pattern(x: np.ndarray, fn: Callable[..., np.ndarray]) -> np.ndarray:
    """``fn`` over each column's non-NaN rows: one call per distinct NaN pattern."""
    mask = np.isnan(x)
    if not mask.any():
        return np.asarray(fn(x, f=0), dtype=np.float64)
    out = np.full(x.shape[1], np.nan)
    patterns, inverse = np.unique(mask, axis=1, return_inverse=True)
    inverse = np.asarray(inverse).ravel()
    for p in range(patterns.shape[1]):
        rows = np.flatnonzero(~patterns[:, p])
        if rows.size == 0:
            continue  # no finite value: NaN, as np.nanmean of an all-NaN column
        cols = np.flatnonzero(inverse == p)
        out[cols] = fn(x[np.ix_(rows, cols)], f=0)
    return out


@register("average-authors", coordinatewise=True, condition="m >= 1")
def average_authors(x: np.ndarray, *, f: int = 0) -> np.ndarray:
    """``np.nanmean`` per column (their ``average``); ``f`` is ignored as in the source.

    Parameters
    ----------
    x : ndarray of shape (m, k)
        NaN where a row sent nothing.

    Returns
    -------
    ndarray of shape (k,), float64; NaN only where a column has no finite value.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "Mean of empty slice"
        return np.asarray(np.nanmean(x, axis=0, dtype=np.float64))


@register("median-authors", coordinatewise=True, condition="m >= 1")
def median_authors(x: np.ndarray, *, f: int = 0) -> np.ndarray:
    """``np.nanmedian`` per column (their ``median``: the mean of the two middle values
    for an even count); ``f`` is ignored as in the source."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "All-NaN slice encountered"
        return np.asarray(np.nanmedian(np.asarray(x, dtype=np.float64), axis=0))


@register("krum-authors", coordinatewise=True, condition="m >= 1")
def krum_authors(x: np.ndarray, *, f: int = 0) -> np.ndarray:
    """``krum-coord-authors`` over each column's non-NaN rows, in order (their ``krum``
    drops a column's NaN first; called with f = 0 whatever the run's f)."""
    return _per_pattern(x, krum_coord_authors)


@register("aksel-authors", coordinatewise=True, condition="m >= 1")
def aksel_authors(x: np.ndarray, *, f: int = 0) -> np.ndarray:
    """``aksel-coord-authors`` over each column's non-NaN rows (their ``aksel`` drops a
    column's NaN first; it takes no f)."""
    return _per_pattern(x, aksel_coord_authors)
