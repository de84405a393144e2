"""Benchmark: one round of block aggregation (Algorithm 1, steps 4-5) at the paper's scale.

Prints a table; not a test. Run with ``make bench`` or
``OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/bench_blocks.py``; results are
recorded in docs/benchmarks.md.

Setting: q = 80 sampled workers, d = 23,860 (the 784-30-10 MLP), float32 round buffer
(as the collector fills it), f = 25 (the paper's Figures 5-6) and the server's default
quorum v = max(q/2, rule.min_rows(f)). Prefix lengths are drawn once from a seeded
generator: 30% weak workers uniform in [0.05 d, 0.25 d], 40% medium uniform in
[0.35 d, 0.75 d], 30% full (d).

For each rule the table gives the median (and best) time of ``blocks.aggregate`` over
several repetitions, and its ratio to
  * floor: one ``np.sum`` pass over the same (q x d) buffer (the memory floor);
  * gram: one (q x q) Gram product ``values @ values.T`` of the buffer (Krum's core);
  * python: a per-coordinate Python reference. For coordinate-wise rules it computes
    Q_j for every j and calls the rule on column j; for vector rules it computes Q_j
    for every j, groups coordinates by identical Q_j and calls the rule per group
    (the reading hgo_common/blocks.py documents). The per-coordinate loop is timed on
    an evenly spaced subset of coordinates and extrapolated to b_v (marked "~").

Large d (issue 23, item 3): ``--large [D ...]`` (default 1,000,000 and 4,000,000) times
one round at q = 80, v = 40, f = 10 with the mixed prefixes, best of ``--reps`` (default
2 there), against ``values.sum(axis=0)`` (the memory floor) and one Gram product
``values @ values.T`` of the whole (q x d) buffer, and reports the round's peak extra
memory (tracemalloc, which numpy reports its buffers to) as a multiple of the (q x d)
buffer: "peak / buffer" = (buffer + extra) / buffer. ``--threads N`` sets
HGO_AGG_THREADS for the coordinate-wise rules (hgo_common.blocks).

``--against CHECKOUT`` times median and trimmed-mean of another checkout (e.g. main) and
this one round-robin at the first ``--large`` d, and checks their results are equal.

``--kernels`` times the numpy kernels the coordinate-wise order statistics are made of
(the tiled transpose with and without 4 KiB-aliased rows; sort vs partition per column).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import platform
import statistics
import time
import tracemalloc
from collections.abc import Callable

import numpy as np

from hgo_common import aggregators, blocks
from hgo_common.rounds import default_quorum

Q, D, F = 80, 23_860, 25
RULES = ("median", "trimmed-mean", "krum", "geometric-median")
LARGE_Q, LARGE_V, LARGE_F = 80, 40, 10
LARGE_RULES = ("average", "median", "trimmed-mean", "krum", "multi-krum")


def draw_prefixes(rng: np.random.Generator, q: int, d: int) -> np.ndarray:
    """30% weak (short), 40% medium, 30% full prefixes, in random worker order."""
    n_weak, n_full = round(0.3 * q), round(0.3 * q)
    n_medium = q - n_weak - n_full
    weak = rng.integers(int(0.05 * d), int(0.25 * d) + 1, size=n_weak)
    medium = rng.integers(int(0.35 * d), int(0.75 * d) + 1, size=n_medium)
    full = np.full(n_full, d)
    return rng.permutation(np.concatenate([weak, medium, full])).astype(np.int64)


def timeit(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, tuple[float, float]]:
    """{name: (median, best)} wall time in seconds over ``reps`` rounds after one warm-up.

    The functions run round-robin (one call each per round), so a load spike from
    other processes on the shared machine hits all of them alike and the ratios
    between them stay meaningful.
    """
    for fn in fns.values():
        fn()
    return {k: (statistics.median(v), min(v)) for k, v in round_robin(fns, reps).items()}


def round_robin(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, list[float]]:
    """{name: [seconds per call]}: ``reps`` rounds of one call each, in turn (no warm-up)."""
    ts: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            ts[k].append(time.perf_counter() - t0)
    return ts


def python_reference_time(values: np.ndarray, prefixes: np.ndarray, v: int, name: str, sample: int) -> float:
    """Seconds for the per-coordinate Python reference, extrapolated from ``sample`` coordinates."""
    rule = aggregators.get(name)
    b = blocks.block_size(prefixes, v)
    coords = np.linspace(0, b - 1, num=min(sample, b)).astype(np.int64)
    plist = prefixes.tolist()
    t0 = time.perf_counter()
    if rule.coordinatewise:
        for j in coords.tolist():
            q_j = [i for i, p in enumerate(plist) if p > j]
            rule(values[q_j, j : j + 1], f=F)
        per_coord = (time.perf_counter() - t0) / coords.size
        return per_coord * b
    # vector rules: Q_j for every coordinate of B_k (timed on the sample, extrapolated),
    # then one rule call per distinct Q_j (timed in full)
    for j in coords.tolist():
        tuple(i for i, p in enumerate(plist) if p > j)
    grouping = (time.perf_counter() - t0) / coords.size * b
    groups: dict[tuple[int, ...], list[int]] = {}
    for lo, hi, rows in blocks.segments(prefixes, v):
        groups[tuple(sorted(rows.tolist()))] = list(range(lo, hi))
    t1 = time.perf_counter()
    for q_j, cols in groups.items():
        rule(values[np.ix_(q_j, cols)], f=F)
    return grouping + (time.perf_counter() - t1)


def peak_extra(fn: Callable[[], object]) -> int:
    """Bytes allocated at the peak of ``fn()`` beyond what was live before it (tracemalloc)."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def large(sizes: list[int], rules: list[str], reps: int, seed: int) -> None:
    """One round at q = 80, v = 40, f = 10 per d in ``sizes``: time vs floor and Gram, peak memory."""
    from hgo_common import blocks as blk

    print(
        f"# q={LARGE_Q} v={LARGE_V} f={LARGE_F} float32, mixed prefixes; numpy {np.__version__}; "
        f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}; HGO_AGG_THREADS -> "
        f"{getattr(blk, 'threads', lambda: 1)()}; cpus={os.cpu_count()}; load {os.getloadavg()[0]:.2f}; "
        f"best of {reps}"
    )
    header = (
        f"{'d':>11} {'rule':<13}{'b_v':>10}{'segs':>6}{'best ms':>10}{'floor ms':>10}{'x floor':>9}"
        f"{'gram ms':>10}{'x gram':>8}{'peak/buffer':>13}"
    )
    print(header)
    print("-" * len(header))
    for d in sizes:
        large_one(d, rules, reps, seed)


def large_one(d: int, rules: list[str], reps: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    values = rng.standard_normal((LARGE_Q, d), dtype=np.float32)
    prefixes = draw_prefixes(rng, LARGE_Q, d)
    buffer = values.nbytes
    b = blocks.block_size(prefixes, LARGE_V)
    n_seg = len(blocks.segments(prefixes, LARGE_V))
    for name in rules:

        def agg(name: str = name) -> object:
            return blocks.aggregate(values, prefixes, v=LARGE_V, rule=name, f=LARGE_F)

        t = timeit({"agg": agg, "floor": lambda: values.sum(axis=0), "gram": lambda: values @ values.T}, reps)
        extra = peak_extra(agg)
        best, fbest, gbest = t["agg"][1], t["floor"][1], t["gram"][1]
        peak = (buffer + extra) / buffer
        print(
            f"{d:>11,} {name:<13}{b:>10,}{n_seg:>6}{best * 1e3:>10.0f}{fbest * 1e3:>10.0f}"
            f"{best / fbest:>9.2f}{gbest * 1e3:>10.0f}{best / gbest:>8.2f}{peak:>13.3f}"
        )


def _best(fn: Callable[[], object], reps: int) -> float:
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def _transpose_ns(row: int, tile: int, reps: int, m: int = 80) -> float:
    """ns per value of the tiled transpose of an (m x k) float32 block whose rows are ``row`` values apart."""
    src = np.random.default_rng(0).standard_normal((m, row), dtype=np.float32)
    k = row - row % 16
    x = src[:, :k]
    dst = np.empty((k, m), dtype=np.float32)

    def tr() -> None:
        for j in range(0, k, tile):
            dst[j : j + tile] = x[:, j : j + tile].T

    return _best(tr, reps) / (m * k) * 1e9


def _per_column_ns(m: int, op: str, reps: int, k: int = 8000) -> float:
    """ns per column of ``op`` on the rows of a (k x m) float32 array, the refill excluded."""
    a0 = np.random.default_rng(m).standard_normal((k, m), dtype=np.float32)
    buf = np.empty_like(a0)

    def refill() -> None:
        np.copyto(buf, a0)

    def run() -> None:
        np.copyto(buf, a0)
        if op == "sort":
            buf.sort(axis=1)
        elif op == "partition kth":
            buf.partition(m // 2, axis=1)
        else:
            buf.partition([m // 2 - 1, m // 2], axis=1)

    return (_best(run, reps) - _best(refill, reps)) / k * 1e9


def kernels(reps: int) -> None:
    """The numpy kernels a coordinate-wise order statistic is built from, per value/column.

    Prints (best of ``reps``): the cache-blocked transpose of an (80 x k) float32 block into
    (k x 80) when its rows are a multiple of 4 KiB apart and when they are not, with
    tiles of 256 and 1,008 columns; and, per column of m values (rows of a (k x m) array),
    ``sort``, ``partition`` with one kth and with the two middle kth of an even median.
    """
    print(f"# kernels; numpy {np.__version__}; load {os.getloadavg()[0]:.2f}; best of {reps}")
    print("# transpose (80 x k) -> (k x 80) by tiles, ns per value")
    for row in (8192, 8208, 8000, 4096):
        cells = [f"tile {tile:>5}: {_transpose_ns(row, tile, reps):5.2f}" for tile in (256, 1008)]
        print(f"  rows {row * 4:>6} bytes apart ({row * 4 % 4096:>4} mod 4096)  " + "  ".join(cells))
    print("# per column of m float32 values, rows of a (8000 x m) array, ns per column (refill excluded)")
    for m in (40, 41, 60, 64, 65, 80):
        ops = ("sort", "partition kth", "partition 2 kth")
        cells = [f"{op}: {_per_column_ns(m, op, reps):7.1f}" for op in ops]
        print(f"  m={m:>3}  " + "  ".join(cells))


def _load_other(checkout: str) -> object:
    """``hgo_common.blocks`` of another checkout, imported beside this one (as ``hgo_other``)."""
    import atexit
    import importlib
    import shutil
    import sys
    import tempfile
    from pathlib import Path

    tmp = Path(tempfile.mkdtemp(prefix="hgo-other-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    shutil.copytree(Path(checkout) / "hgo_common", tmp / "hgo_other")
    for f in (tmp / "hgo_other").rglob("*.py"):
        f.write_text(f.read_text().replace("hgo_common", "hgo_other"))
    sys.path.insert(0, str(tmp))
    return importlib.import_module("hgo_other.blocks")


def head_to_head(d: int, reps: int, checkout: str) -> None:
    """Median and trimmed mean at q = 80, v = 40, f = 10 (mixed prefixes): another checkout's
    ``blocks.aggregate`` and this one's, round-robin with the floor, results compared bit for bit."""
    other = _load_other(checkout)
    rng = np.random.default_rng(0)
    values = rng.standard_normal((LARGE_Q, d), dtype=np.float32)
    prefixes = draw_prefixes(rng, LARGE_Q, d)
    fns: dict[str, Callable[[], object]] = {"floor": lambda: values.sum(axis=0)}
    for rule in ("median", "trimmed-mean"):
        for label, mod in (("other", other), ("this", blocks)):

            def agg(mod: object = mod, rule: str = rule) -> object:
                return mod.aggregate(values, prefixes, v=LARGE_V, rule=rule, f=LARGE_F)  # type: ignore[attr-defined]

            fns[f"{label} {rule}"] = agg
        a, b = fns[f"other {rule}"](), fns[f"this {rule}"]()
        assert np.array_equal(a[1], b[1]), f"{rule}: the two checkouts differ"  # type: ignore[index]
    ts = round_robin(fns, reps)
    fb, fm = min(ts["floor"]), statistics.median(ts["floor"])
    print(
        f"# d={d:,} q={LARGE_Q} v={LARGE_V} f={LARGE_F} mixed; other = {checkout}; HGO_AGG_THREADS -> "
        f"{blocks.threads()}; round-robin x{reps}; load {os.getloadavg()[0]:.2f}; results equal bit for bit"
    )
    for k, v in ts.items():
        print(
            f"  {k:<20} best {min(v) * 1e3:7.0f} ms  median {statistics.median(v) * 1e3:7.0f} ms  "
            f"x floor best/best {min(v) / fb:5.2f}  median/median {statistics.median(v) / fm:5.2f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions (default 15; --large: 2)")
    ap.add_argument("--sample", type=int, default=1500, help="coordinates timed in the Python reference")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rules", nargs="+", default=None, help="rules to time")
    ap.add_argument(
        "--large", nargs="*", type=int, default=None, metavar="D",
        help="time q=80, v=40, f=10 rounds at these d (default 1000000 4000000) instead",
    )  # fmt: skip
    ap.add_argument("--threads", type=int, default=None, help="HGO_AGG_THREADS for this run")
    ap.add_argument("--kernels", action="store_true", help="time the transpose and sort kernels instead")
    ap.add_argument(
        "--against", metavar="CHECKOUT", default=None,
        help="time median and trimmed-mean of another checkout's hgo_common round-robin with this one's "
        "(at the first --large D, default 4000000)",
    )  # fmt: skip
    args = ap.parse_args()
    if args.against:
        if args.threads is not None:
            os.environ["HGO_AGG_THREADS"] = str(args.threads)
        head_to_head((args.large or [4_000_000])[0], args.reps or 7, args.against)
        return
    if args.kernels:
        kernels(args.reps or 10)
        return
    if args.threads is not None:
        os.environ["HGO_AGG_THREADS"] = str(args.threads)
    if args.large is not None:
        large(
            args.large or [1_000_000, 4_000_000], args.rules or list(LARGE_RULES), args.reps or 2, args.seed
        )
        return
    args.reps = args.reps or 15
    args.rules = args.rules or list(RULES)

    rng = np.random.default_rng(args.seed)
    values = rng.standard_normal((Q, D)).astype(np.float32)
    prefixes = draw_prefixes(rng, Q, D)
    full = np.full(Q, D, dtype=np.int64)

    base = timeit(
        {
            "floor": lambda: np.sum(values),
            "gram": lambda: values @ values.T,
            "sort": lambda: np.sort(np.ascontiguousarray(values.T), axis=1),
        },
        args.reps,
    )
    print(
        f"# q={Q} d={D} float32 f={F}; numpy {np.__version__}; python {platform.python_version()}; "
        f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}; cpus={os.cpu_count()}"
    )
    for k, label in (
        ("floor", "np.sum(values)    "),
        ("gram", "values @ values.T "),
        ("sort", "sort each column  "),
    ):
        print(f"# {k:<6} {label}: median {base[k][0] * 1e3:7.3f} ms  best {base[k][1] * 1e3:7.3f} ms")
    print("# ratios: median/median (best/best), each rule timed round-robin with floor and gram")
    print()
    header = (
        f"{'rule':<18}{'prefixes':<10}{'v':>4}{'b_v':>7}{'segs':>6}{'median ms':>11}{'best ms':>9}"
        f"{'x floor':>15}{'x gram':>15}{'python ms':>11}{'speed-up':>10}"
    )
    print(header)
    print("-" * len(header))
    for name in args.rules:
        v = default_quorum(Q, name, F)
        for label, p in (("mixed", prefixes), ("all-full", full)):
            b = blocks.block_size(p, v)
            n_seg = len(blocks.segments(p, v))
            t = timeit(
                {
                    "agg": lambda p=p, v=v, name=name: blocks.aggregate(values, p, v=v, rule=name, f=F),
                    "floor": lambda: np.sum(values),
                    "gram": lambda: values @ values.T,
                },
                args.reps,
            )
            (med, best), (fmed, fbest), (gmed, gbest) = t["agg"], t["floor"], t["gram"]
            if label == "mixed":
                py = python_reference_time(values, p, v, name, args.sample)
                py_s, speed = f"~{py * 1e3:9.0f}", f"{py / med:9.0f}x"
            else:
                py_s, speed = f"{'-':>10}", f"{'-':>10}"
            print(
                f"{name:<18}{label:<10}{v:>4}{b:>7}{n_seg:>6}{med * 1e3:>11.2f}{best * 1e3:>9.2f}"
                f"{med / fmed:>8.1f} ({best / fbest:4.1f}){med / gmed:>8.2f} ({best / gbest:4.2f})"
                f"{py_s:>11}{speed:>10}"
            )


if __name__ == "__main__":
    main()
