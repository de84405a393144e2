"""The server's data path at large d without the network: collector -> close -> w_{k+1}.

Issue 23, item 4 (the collector part): q = 80 synthetic rows of float32 wire bytes are fed
through ``hgo_common.collector.RoundCollector.add`` exactly as the servicer feeds a
worker's chunks, then the round is closed the way the server closes it
(``collector.close``, ``rounds.close_round`` with the default row bound,
``rounds.apply_update``). Printed per rule: close -> w_{k+1} time against the memory floor
(``values.sum(axis=0)`` over the same (q x d) buffer), the process's resident memory after
the round closed, and its peak (``ru_maxrss``) against the (q x d) float32 buffer.

Two rounds per rule: one where every row is complete (the buffer's worst case) and one
with mixed prefixes (30% weak in [0.05 d, 0.25 d], 40% medium in [0.35 d, 0.75 d], 30%
full, as bench_blocks.py), after which the collector has returned the pages past each
prefix to the OS. Each (rule) runs in its own process so that peaks do not mix.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/bench_server_path.py --d 11000000

Chunks carry ``--chunk`` values (default 1,048,576; the chunk size changes the upload's
cost, not close -> w_{k+1}).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np

from hgo_common import collector, rounds, wire

Q, V, F = 80, 40, 10


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def prefixes_mixed(rng: np.random.Generator, q: int, d: int) -> np.ndarray:
    n_weak, n_full = round(0.3 * q), round(0.3 * q)
    weak = rng.integers(int(0.05 * d), int(0.25 * d) + 1, size=n_weak)
    medium = rng.integers(int(0.35 * d), int(0.75 * d) + 1, size=q - n_weak - n_full)
    return rng.permutation(np.concatenate([weak, medium, np.full(n_full, d)])).astype(np.int64)


def one_rule(rule: str, d: int, chunk: int, seed: int) -> dict[str, object]:
    rng = np.random.default_rng(seed)
    # 8 distinct base rows, each row a scaled copy: no second (q x d) matrix in memory
    base = rng.standard_normal((8, d), dtype=np.float32)
    col = collector.RoundCollector(d, max_chunk_values=chunk)
    cfg = rounds.RoundConfig(d=d, v=V, rule=rule, f=F if rule != "average" else 0, lr=0.01)
    order = rng.permutation(d)
    w = np.zeros(d)
    out: dict[str, object] = {
        "rule": rule,
        "d": d,
        "buffer_gb": Q * d * 4 / 1e9,
        "row_bound": str(cfg.row_bound),
    }
    for k, label in enumerate(("full", "mixed")):
        p = np.full(Q, d) if label == "full" else prefixes_mixed(rng, Q, d)
        col.start(k, Q)
        for i in range(Q):
            row = base[i % 8] * np.float32(1 + 0.01 * i)
            for a in range(0, int(p[i]), chunk):
                col.add(i, k, a, wire.encode(row[a : min(a + chunk, int(p[i]))]))
            del row
        t0 = time.perf_counter()
        got = col.close()
        outcome = rounds.close_round(col.values, got, order, cfg, rounds.aggregation_rng(seed, k))
        w = rounds.apply_update(w, outcome)
        t_round = time.perf_counter() - t0
        floor = min(_timed(lambda: col.values.sum(axis=0)) for _ in range(2))
        out[label] = {
            "close_to_w_s": t_round,
            "floor_s": floor,
            "x_floor": t_round / floor,
            "block": outcome.block,
            "bounded": outcome.bounded,
            "rss_after_close_gb": rss_bytes() / 1e9,
            "values_received_gb": float(p.sum()) * 4 / 1e9,
        }
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    return out


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--d", type=int, default=11_000_000)
    ap.add_argument("--rules", nargs="+", default=["average", "median", "krum"])
    ap.add_argument("--chunk", type=int, default=1 << 20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(one_rule(args.child, args.d, args.chunk, args.seed)))
        return
    print(
        f"# q={Q} v={V} f={F} d={args.d:,} float32; buffer {Q * args.d * 4 / 1e9:.2f} GB; "
        f"numpy {np.__version__}; OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}; "
        f"load {os.getloadavg()[0]:.2f}"
    )
    head = (
        f"{'rule':<14}{'round':<7}{'b_v':>12}{'close->w s':>12}{'floor s':>9}{'x floor':>9}"
        f"{'received GB':>13}{'RSS after GB':>14}{'peak RSS GB':>13}{'peak/buffer':>13}"
    )
    print(head)
    print("-" * len(head))
    for rule in args.rules:
        argv = [sys.executable, __file__, "--child", rule, "--d", str(args.d), "--chunk", str(args.chunk)]
        res = json.loads(subprocess.run(argv, check=True, capture_output=True, text=True).stdout)
        for label in ("full", "mixed"):
            r = res[label]
            print(
                f"{rule:<14}{label:<7}{r['block']:>12,}{r['close_to_w_s']:>12.2f}{r['floor_s']:>9.3f}"
                f"{r['x_floor']:>9.2f}{r['values_received_gb']:>13.2f}{r['rss_after_close_gb']:>14.2f}"
                f"{res['peak_rss_gb']:>13.2f}{res['peak_rss_gb'] / res['buffer_gb']:>13.2f}"
            )


if __name__ == "__main__":
    main()
