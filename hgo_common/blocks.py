"""Block construction and block aggregation: Algorithm 1, steps 4–5 (paper §3).

Given the q workers' values in C_k order and their prefix lengths |V_i|:

* b_v is the v-th largest prefix length and B_k the first b_v positions of C_k;
* for every position j < b_v, Q_j is the set of workers whose prefix covers j
  (|Q_j| >= v because the v longest prefixes all reach b_v);
* AG_j = AR({V_i[j] : i in Q_j}).

Prefixes are nested, so Q_j only changes where some worker's prefix ends. We sort the
prefixes in decreasing order, p_(1) >= ... >= p_(q); on the segment
[p_(m+1), p_(m)) exactly the m longest-prefix workers cover every position, so the
whole segment is one dense (m x len) matrix and one vectorized AR call. At most q
segments, never a Python loop over coordinates.

Ambiguity resolved here (also in the README): Algorithm 1 writes AR per coordinate.
For coordinate-wise rules (average, median, trimmed mean, ...) applying the rule to a
segment is *identical* to applying it per coordinate. For vector rules (Krum,
geometric median, centered clipping, ...) a per-coordinate reading would collapse them
into 1-d rules and discard what makes them work, so we apply them to each maximal
segment of coordinates sharing the same Q_j — the coarsest grouping that Algorithm 1's
Q_j allows. tests/test_blocks.py checks both readings against brute-force references.

Randomness: a randomized rule or pre-aggregation step (bucketing) draws from the
``rng`` the caller passes, forwarded only to rules that declare an ``rng`` keyword;
the server and the simulator pass ``rounds.aggregation_rng(seed, k)`` so the draws
differ from round to round yet replay exactly for the same (seed, k).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import numpy as np

from . import aggregators

RuleLike = str | Callable[..., np.ndarray]


def block_size(prefixes: Sequence[int] | np.ndarray, v: int) -> int:
    """b_v: the v-th largest prefix length (0 when fewer than v workers responded)."""
    p = np.asarray(prefixes, dtype=np.int64)
    if not v >= 1:
        raise ValueError(f"quorum v must be >= 1, got {v}")
    if v > p.size:
        return 0
    return int(np.sort(p)[::-1][v - 1])


def segments(prefixes: Sequence[int] | np.ndarray, v: int) -> list[tuple[int, int, np.ndarray]]:
    """The (lo, hi, rows) segments of B_k: positions [lo, hi) are covered by exactly ``rows``.

    ``rows`` are indices into ``prefixes``, ordered by decreasing prefix (ties by index).
    Segments are returned from the front of B_k to its end; empty ones are skipped.
    """
    p = np.asarray(prefixes, dtype=np.int64)
    q = p.size
    if q == 0 or v > q:
        return []
    order = np.argsort(-p, kind="stable")
    sorted_p = p[order]
    out: list[tuple[int, int, np.ndarray]] = []
    # Walk from the segment covered by all q workers outwards to the one covered by v.
    for m in range(q, v - 1, -1):
        lo = int(sorted_p[m]) if m < q else 0
        hi = int(sorted_p[m - 1])
        if hi > lo:
            out.append((lo, hi, order[:m]))
    return out


def _resolve(rule: RuleLike) -> Callable[..., np.ndarray]:
    return aggregators.get(rule) if isinstance(rule, str) else rule


def rng_kwargs(fn: Callable[..., np.ndarray], rng: np.random.Generator | None) -> dict[str, object]:
    """``{"rng": rng}`` when ``fn`` takes an ``rng`` keyword and one is given, else ``{}``.

    A registered rule lists its keywords (a composed rule: those of all its parts); for
    a plain callable the signature decides. Rules without randomness never see ``rng``,
    so passing one is always safe.
    """
    if rng is None:
        return {}
    if isinstance(fn, aggregators.Rule):
        takes = "rng" in fn.keywords
    else:
        try:
            param = inspect.signature(fn).parameters.get("rng")
        except (TypeError, ValueError):  # builtins without a signature
            param = None
        takes = param is not None and param.kind in (param.KEYWORD_ONLY, param.POSITIONAL_OR_KEYWORD)
    return {"rng": rng} if takes else {}


def aggregate(
    values: np.ndarray,
    prefixes: Sequence[int] | np.ndarray,
    *,
    v: int,
    rule: RuleLike,
    f: int = 0,
    rng: np.random.Generator | None = None,
) -> tuple[int, np.ndarray]:
    """Aggregate the block B_k exactly as Algorithm 1 defines it.

    Parameters
    ----------
    values : ndarray of shape (q, d)
        Row i holds worker i's values in C_k order; only ``values[i, :prefixes[i]]``
        is read.
    prefixes : sequence of q ints in [0, d]
        |V_i|, the number of leading C_k positions worker i sent.
    v : int
        The quorum, 1 <= v <= q.
    rule : str or callable
        An aggregation rule name (``hgo_common.aggregators.names()``, with optional
        pre-aggregation such as ``"nnm+krum"``) or a callable ``rule(x, f=f)``.
    f : int
        The number of Byzantine rows the rule must tolerate.
    rng : np.random.Generator, optional
        Randomness for rules that take an ``rng`` keyword (``"bucketing+median"``); the
        segments draw from it in turn, front to back. Ignored by every other rule. None:
        the rule's own default (bucketing: a fixed seed, the same buckets every call).

    Returns
    -------
    b_v : int
        The block size; 0 when fewer than v workers sent anything.
    aggregate : ndarray of shape (b_v,)
        AG restricted to B_k, in C_k order (position t is coordinate C_k[t]).
    """
    values = np.asarray(values)
    if values.ndim != 2:
        raise ValueError(f"values must be a (q x d) array, got shape {values.shape}")
    q, d = values.shape
    p = np.asarray(prefixes, dtype=np.int64)
    if p.shape != (q,):
        raise ValueError(f"expected {q} prefix lengths (one per row of values), got shape {p.shape}")
    if p.size and (p.min() < 0 or p.max() > d):
        raise ValueError(f"prefix lengths must lie in [0, {d}], got min {p.min()} max {p.max()}")
    if not 1 <= v <= max(q, 1):
        raise ValueError(f"quorum v must be in [1, q={q}], got {v}")
    fn = _resolve(rule)
    extra = rng_kwargs(fn, rng)
    # Every segment has at least v rows; check the rule's need once, before any work,
    # rather than failing on the last segment.
    if isinstance(fn, aggregators.Rule) and v < fn.min_rows(f):
        raise ValueError(
            f"quorum v={v} is too small for rule {fn.name!r} with f={f}: it needs at least "
            f"{fn.min_rows(f)} rows per coordinate"
        )
    b_v = block_size(p, v)
    out = np.zeros(b_v, dtype=np.float64)
    if b_v == 0:
        return 0, out
    for lo, hi, rows in segments(p, v):
        block = values[rows, lo:hi] if rows.size < q else values[:, lo:hi]
        out[lo:hi] = fn(block, f=f, **extra)
    return b_v, out


def scatter(order: np.ndarray, agg: np.ndarray, d: int) -> np.ndarray:
    """Place a block aggregate (C_k order) at its model coordinates; zeros elsewhere."""
    full = np.zeros(d, dtype=np.float64)
    full[order[: agg.size]] = agg
    return full
