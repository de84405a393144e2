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

Cost at large d (bench/bench_blocks.py, docs/benchmarks.md): no segment's rows are
copied whole. A coordinate-wise rule runs over column chunks of ``_CHUNK`` coordinates
(each chunk's rows gathered while cache-resident; a rule declared with
``aggregators._common.sorted_form`` — median, trimmed mean, MeaMed, Phocas — gets its
columns sorted from tiles read straight from the buffer, ``_common.sorted_block``), on a
few threads when the block is large (numpy's sort and copies release the GIL; every
chunk writes its own output slice, so the result does not depend on the threads; a
coordinate-wise rule, plug-ins included, is therefore called from several threads at
once and must be pure, as the registry's contract says; ``HGO_AGG_THREADS=1`` turns the
threads off). A rule with ``gram_weights`` (Krum, multi-Krum) gets each segment's Gram
from one product over the segment's columns of the buffer, read in place; the
per-segment Grams partition the Gram of B_k, so all segments together cost one Gram
product. Other vector rules receive the segment's rows (a copy unless every row covers
it).

Row order: each segment's rows are handed to the rule in increasing row index (the
workers' order), so a rule that depends on row order (``krum-coord-authors``) sees the
order the authors' code sees.

Randomness: a randomized rule or pre-aggregation step (bucketing) draws from the
``rng`` the caller passes, forwarded only to rules that declare an ``rng`` keyword;
the server and the simulator pass ``rounds.aggregation_rng(seed, k)`` so the draws
differ from round to round yet replay exactly for the same (seed, k).
"""

from __future__ import annotations

import inspect
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import aggregators
from .aggregators import _common

RuleLike = str | Callable[..., np.ndarray]

# Coordinates per chunk of the coordinate-wise path: 80 rows x 8192 float32 = 2.6 MB
# gathered, transposed and sorted per chunk (measured best of 2,048-32,768 at d = 4M).
_CHUNK = 8192
# Below this many values (rows x block coordinates) one thread does it all: a pool's
# hand-offs cost more than they save on the paper's d = 23,860.
_PARALLEL_MIN = 1 << 22
_POOL: ThreadPoolExecutor | None = None
_POOL_PID = 0
_POOL_LOCK = threading.Lock()


def threads() -> int:
    """Threads for large coordinate-wise aggregations: ``HGO_AGG_THREADS`` or the cores (<= 4)."""
    env = os.environ.get("HGO_AGG_THREADS", "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ValueError(f"HGO_AGG_THREADS must be an integer >= 1, got {env!r}") from None
        if n < 1:
            raise ValueError(f"HGO_AGG_THREADS must be an integer >= 1, got {env!r}")
        return n
    return max(1, min(4, os.cpu_count() or 1))


def _pool(n: int) -> ThreadPoolExecutor:
    global _POOL, _POOL_PID
    with _POOL_LOCK:
        # A forked child (a process pool of experiment runs) inherits the pool object but
        # not its threads: it builds its own.
        if _POOL is None or _POOL._max_workers != n or os.getpid() != _POOL_PID:
            if _POOL is not None and os.getpid() == _POOL_PID:
                _POOL.shutdown(wait=False)
            _POOL = ThreadPoolExecutor(n, thread_name_prefix="hgo-agg")
            _POOL_PID = os.getpid()
        return _POOL


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
    if values.dtype not in (np.float32, np.float64):
        values = values.astype(np.float64)
    # Rows of each segment in increasing index (None: every row, a view of the buffer).
    segs = [(lo, hi, None if rows.size == q else np.sort(rows)) for lo, hi, rows in segments(p, v)]
    if isinstance(fn, aggregators.Rule) and fn.coordinatewise and not extra:
        _columnwise(values, segs, fn.fn, f, out)
    elif isinstance(fn, aggregators.Rule) and fn.gram_weights is not None and not extra:
        _by_gram(values, segs, fn.gram_weights, f, out)
    else:
        for lo, hi, rows in segs:
            block = values[:, lo:hi] if rows is None else values[rows, lo:hi]
            out[lo:hi] = fn(block, f=f, **extra)
    return b_v, out


def _columnwise(
    values: np.ndarray,
    segs: list[tuple[int, int, np.ndarray | None]],
    fn: Callable[..., np.ndarray],
    f: int,
    out: np.ndarray,
) -> None:
    """A coordinate-wise rule over column chunks of every segment (identical per column)."""
    pieces = [(a, min(a + _CHUNK, hi), rows) for lo, hi, rows in segs for a in range(lo, hi, _CHUNK)]
    form = _common.sorted_form_of(fn)

    def run(piece: tuple[int, int, np.ndarray | None]) -> None:
        a, b, rows = piece
        if form is not None:
            # a rule of the sorted columns: sort tiles gathered from the buffer
            out[a:b] = form(_common.sorted_block(values, rows, a, b), f)
        else:
            out[a:b] = fn(values[:, a:b] if rows is None else values[rows, a:b], f=f)

    work = sum((b - a) * (values.shape[0] if r is None else r.size) for a, b, r in pieces)
    n = threads()
    if n == 1 or work < _PARALLEL_MIN or len(pieces) < 2:
        for piece in pieces:
            run(piece)
        return
    # list() re-raises the first exception of any chunk in the caller's thread
    list(_pool(n).map(run, pieces))


def segment_grams(values: np.ndarray, segs: Sequence[tuple[int, int, np.ndarray | None]]) -> list[np.ndarray]:
    """Each segment's (m x m) float64 Gram matrix, from one product over its columns.

    The product runs over all q rows of the buffer's column range (a strided view that
    BLAS reads in place) and the segment's rows are picked from the small (q x q) result,
    so no row is copied; summed over the segments these are the Gram of the block B_k
    (tests/test_blocks.py checks both).
    """
    out = []
    for lo, hi, rows in segs:
        g = _common.gram(values[:, lo:hi])
        out.append(g if rows is None else g[np.ix_(rows, rows)])
    return out


def _by_gram(
    values: np.ndarray,
    segs: list[tuple[int, int, np.ndarray | None]],
    weights: Callable[..., np.ndarray],
    f: int,
    out: np.ndarray,
) -> None:
    """A rule that is a weighted mean of rows with Gram-determined weights, per segment."""
    q = values.shape[0]
    for (lo, hi, rows), g in zip(segs, segment_grams(values, segs), strict=True):
        idx = np.arange(q) if rows is None else rows

        def take(i: np.ndarray, lo: int = lo, hi: int = hi, idx: np.ndarray = idx) -> np.ndarray:
            return np.asarray(values[idx[i], lo:hi])

        w = weights(g, take, f=f)
        nz = np.flatnonzero(w)
        if nz.size == 1 and w[nz[0]] == 1.0:
            # one row chosen (Krum): its values exactly, as the rule itself returns them
            out[lo:hi] = values[idx[nz[0]], lo:hi]
        else:
            # the chosen rows only (rows outside the segment hold stale values there),
            # gathered per column chunk so no copy of the segment exists at once
            sel, wn = idx[nz], w[nz]
            for a in range(lo, hi, _CHUNK):
                b = min(a + _CHUNK, hi)
                out[a:b] = _common.weighted_rows(wn, values[sel, a:b])


def scatter(order: np.ndarray, agg: np.ndarray, d: int) -> np.ndarray:
    """Place a block aggregate (C_k order) at its model coordinates; zeros elsewhere."""
    full = np.zeros(d, dtype=np.float64)
    full[order[: agg.size]] = agg
    return full
