"""Vectorized building blocks shared by the rules (private).

Layout notes (measured, docs/design.md §8 and docs/benchmarks.md): sorting short columns
of an (m x k) row-major array is dominated by strided gathers, so
``sorted_columns`` transposes cache-sized column tiles into a (k x m) buffer and
sorts its contiguous rows. Pairwise squared distances come from ONE Gram product
``x @ x.T`` in the input dtype (float32 on the server: no upcast copy of the matrix).

The tiles are gathered into a buffer whose rows are an odd number of 64-byte cache lines
apart before they are transposed. Reading one value from each of m rows whose starts are
a multiple of 4 KiB apart (an 8,192-column float32 chunk, or the server's buffer at
d = 2^20) maps all m cache lines to one set of the 8-way L1 cache: the transpose then
missed the cache on nearly every value and cost 2.9 ns a value instead of 0.35
(docs/benchmarks.md, "Aggregation at large d").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import numpy as np

# A tile's row is _TILE_LINES cache lines of 64 bytes: an odd count, so the m rows of a
# gathered tile start in m different L1 sets (1,008 float32 columns, 80 rows: 315 KB,
# which stays in a 1 MB L2 cache with its transposed copy).
_TILE_LINES = 63

RuleFn = TypeVar("RuleFn", bound=Callable[..., np.ndarray])
SortedForm = Callable[[np.ndarray, int], np.ndarray]
_SORTED_FORMS: dict[Callable[..., np.ndarray], SortedForm] = {}


def tile_columns(itemsize: int) -> int:
    """Columns per tile of ``sorted_columns`` for values of ``itemsize`` bytes."""
    return max(1, _TILE_LINES * 64 // itemsize)


def sorted_columns(x: np.ndarray) -> np.ndarray:
    """Each column of ``x`` sorted, returned transposed.

    Parameters
    ----------
    x : ndarray of shape (m, k)

    Returns
    -------
    s : ndarray of shape (k, m), dtype of ``x``
        ``s[j]`` is column j of ``x`` in increasing order.
    """
    return sorted_block(x, None, 0, x.shape[1])


def sorted_block(values: np.ndarray, rows: np.ndarray | None, lo: int, hi: int) -> np.ndarray:
    """Columns ``lo:hi`` of the rows ``rows`` of ``values`` (every row when None), sorted.

    The same as ``sorted_columns(values[rows, lo:hi])`` value for value, without the copy
    of the (m x (hi - lo)) block: each tile of columns is gathered from ``values`` straight
    into a small buffer (rows in the order given), transposed while cache-resident and
    sorted along its contiguous rows. hgo_common.blocks calls it on the round buffer.

    Parameters
    ----------
    values : ndarray of shape (q, d)
    rows : ndarray of int, or None
    lo, hi : int, 0 <= lo <= hi <= d

    Returns
    -------
    s : ndarray of shape (hi - lo, m), dtype of ``values``; m = q or len(rows)
    """
    q = values.shape[0]
    # Every row, read in place, unless the rows' starts alias in the L1 cache: then they
    # are gathered like a subset of rows (a copy whose rows are a tile apart).
    idx = None if rows is None and not _rows_alias(values.strides[0], q) else rows
    if rows is None and idx is None:
        m = q
    else:
        idx = np.arange(q) if idx is None else idx
        m = idx.size
    k = hi - lo
    out = np.empty((k, m), dtype=values.dtype)
    t = tile_columns(values.itemsize)
    # A loop over tiles (not over coordinates); a full tile's gathered rows are
    # _TILE_LINES cache lines apart.
    for a in range(0, k, t):
        b = min(a + t, k)
        src = values[:, lo + a : lo + b] if idx is None else values[idx, lo + a : lo + b]
        tile = out[a:b]
        tile[...] = src.T
        tile.sort(axis=1)
    return out


def _rows_alias(stride: int, m: int) -> bool:
    """Whether m rows ``stride`` bytes apart share too few sets of an 8-way L1 cache
    (64 sets of 64-byte lines) to hold one line of each while a tile is transposed."""
    span = 4096
    g = np.gcd(abs(stride) % span, span)  # gcd(0, span) = span: every row in one set
    sets = span // max(int(g), 64)
    return sets * 8 < m


def sorted_form(form: SortedForm) -> Callable[[RuleFn], RuleFn]:
    """Declare a coordinate-wise rule to be ``form(s, f)`` of its sorted columns.

    ``s`` is the (k x m) array ``sorted_columns`` returns; ``form`` must give, row for
    row, exactly what the rule gives for the column. hgo_common.blocks then sorts the
    round buffer's columns in tiles (``sorted_block``) and calls ``form`` instead of
    copying each segment's rows for the rule.
    """

    def mark(fn: RuleFn) -> RuleFn:
        _SORTED_FORMS[fn] = form
        return fn

    return mark


def sorted_form_of(fn: Callable[..., np.ndarray]) -> SortedForm | None:
    """The form ``sorted_form`` declared for a rule's raw function, or None."""
    return _SORTED_FORMS.get(fn)


def median_of_sorted(s: np.ndarray) -> np.ndarray:
    """Median of each row of a row-sorted (k x m) array (mean of the two middles for even m)."""
    m = s.shape[1]
    if m % 2:
        return s[:, m // 2].astype(np.float64)
    return np.asarray(0.5 * (s[:, m // 2 - 1].astype(np.float64) + s[:, m // 2]))


def median_1d(v: np.ndarray) -> float:
    """Median of a short 1-d array (mean of the two middles for an even length).

    ``np.median`` costs ~70 us of overhead on an 80-vector; this is ~5 us, which
    matters in the per-segment loops of the iterative rules.
    """
    s = np.sort(v)
    n = s.size
    return float(s[n // 2]) if n % 2 else float(0.5 * (s[n // 2 - 1] + s[n // 2]))


def trimmed_mean_of_sorted(s: np.ndarray, f: int) -> np.ndarray:
    """Mean of each row of a row-sorted (k x m) array without its f smallest and f largest."""
    m = s.shape[1]
    return np.asarray(s[:, f : m - f].mean(axis=1, dtype=np.float64))


def closest_mean_of_sorted(s: np.ndarray, center: np.ndarray, keep: int) -> np.ndarray:
    """Per row, the mean of the ``keep`` values closest to ``center``.

    On a line the ``keep`` nearest values to a point c form a contiguous window
    ``s[t : t + keep]`` of the sorted values. The window should slide right while its
    left end is strictly farther from c than the first value past its right end;
    ``c - s[t] > s[t + keep] - c`` is non-increasing in t, so the start is simply the
    number of t for which it holds. On equal distances we keep the left value, so the
    result depends only on the multiset of values (row order never matters).

    Parameters
    ----------
    s : ndarray of shape (k, m), each row sorted increasingly
    center : ndarray of shape (k,)
    keep : int, 1 <= keep <= m

    Returns
    -------
    ndarray of shape (k,), float64
    """
    m = s.shape[1]
    c = center[:, None]
    slide = (c - s[:, : m - keep]) > (s[:, keep:] - c)
    start = np.count_nonzero(slide, axis=1)[:, None]
    cols = np.arange(m)[None, :]
    inside = (cols >= start) & (cols < start + keep)
    total = np.where(inside, s, 0).sum(axis=1, dtype=np.float64)
    return np.asarray(total / keep)


def gram(x: np.ndarray) -> np.ndarray:
    """The (m x m) Gram matrix ``x @ x.T`` as float64, computed in the input dtype.

    A Byzantine row of huge but finite float32 values (|v| around 1e19 or more)
    overflows float32 products to inf, and inf * 0 later turns weights into NaN. Only
    then (checked on the small (m x m) result) the product is redone in float64, where
    no product of float32 values can overflow, over column chunks so that the float64
    copy never exceeds ``_GRAM_CHUNK`` columns (memory stays bounded at large k).

    ``x`` may be a strided view (a column range of the server's (q x d) buffer): BLAS
    reads it in place, no copy.

    Parameters
    ----------
    x : ndarray of shape (m, k)

    Returns
    -------
    ndarray of shape (m, m), float64
    """
    with np.errstate(over="ignore", invalid="ignore"):
        g = np.asarray(x @ x.T, dtype=np.float64)
    if x.dtype != np.float64 and not np.isfinite(g).all():
        g = np.zeros((x.shape[0], x.shape[0]))
        for j in range(0, x.shape[1], _GRAM_CHUNK):
            x64 = x[:, j : j + _GRAM_CHUNK].astype(np.float64)
            g += x64 @ x64.T
    return g


# Columns per float64 chunk in gram's overflow fallback (80 rows: 42 MB).
_GRAM_CHUNK = 1 << 16


def pairwise_sq_distances(x: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances between the rows of ``x`` via one Gram product.

    See :func:`sq_distances_from_gram` (rounding) and :func:`gram` (overflow).

    Parameters
    ----------
    x : ndarray of shape (m, k)

    Returns
    -------
    ndarray of shape (m, m), float64
    """
    return sq_distances_from_gram(gram(x))


def sq_distances_from_gram(g: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances between rows from their (m x m) Gram matrix ``g``.

    ``|x_i - x_j|^2 = |x_i|^2 + |x_j|^2 - 2 x_i.x_j``. The product runs in the input
    dtype (float64 on overflow, see ``gram``); its rounding error on an entry is about
    eps * (|x_i|^2 + |x_j|^2) (eps = 6e-8 for float32), below the float32 quantization
    of the inputs themselves for typical gradients. Negative round-off is clipped to 0
    and the diagonal is exactly 0.
    """
    sq = np.diag(g).copy()
    d = sq[:, None] + sq[None, :] - 2.0 * g
    np.maximum(d, 0.0, out=d)
    # Exact symmetry: rows that share a nearest-neighbour distance then share it bit
    # for bit, so structural ties (Krum with one neighbour) stay ties.
    d = 0.5 * (d + d.T)
    np.fill_diagonal(d, 0.0)
    return np.asarray(d)


def weighted_rows(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``w @ x`` as float64 without upcasting ``x`` (weights are cast to x's dtype).

    Parameters
    ----------
    w : ndarray of shape (m,)
    x : ndarray of shape (m, k)

    Returns
    -------
    ndarray of shape (k,), float64
    """
    return np.asarray(w.astype(x.dtype) @ x, dtype=np.float64)


def select_lowest(
    scores: np.ndarray, x: np.ndarray | Callable[[np.ndarray], np.ndarray], c: int
) -> np.ndarray:
    """Indices of the ``c`` rows with the lowest scores, independent of row order.

    Rows tied at the boundary score are taken in lexicographic order of their values
    (so a permutation of the rows never changes which *vectors* are chosen). The
    lexicographic sort only runs on the tied rows, which random data never has.

    Parameters
    ----------
    scores : ndarray of shape (m,)
    x : ndarray of shape (m, k), or a callable ``rows(idx) -> x[idx]``
        The rows' values, read only for tied rows (a callable spares the caller a copy
        of all rows: hgo_common.blocks passes one over the round buffer).
    c : int, 1 <= c <= m

    Returns
    -------
    ndarray of shape (c,), int
    """
    order = np.argsort(scores, kind="stable")
    if c >= scores.size or scores[order[c - 1]] != scores[order[c]]:
        return order[:c]
    t = scores[order[c - 1]]
    below = np.flatnonzero(scores < t)
    tied = np.flatnonzero(scores == t)
    tied_rows = x(tied) if callable(x) else x[tied]
    tied = tied[np.lexsort(np.asarray(tied_rows).T[::-1])]
    return np.concatenate([below, tied[: c - below.size]])


def krum_scores(d: np.ndarray, f: int) -> np.ndarray:
    """Krum scores: for each row, the sum of its m - f - 2 smallest distances to other rows.

    Parameters
    ----------
    d : ndarray of shape (m, m)
        Squared pairwise distances.
    f : int

    Returns
    -------
    ndarray of shape (m,)
    """
    m = d.shape[0]
    nb = m - f - 2
    others = d.copy()
    np.fill_diagonal(others, np.inf)  # a row is not its own neighbour
    return np.asarray(np.sort(others, axis=1)[:, :nb].sum(axis=1))
