"""Figure 3's caption on the wire: HGO vs SGD(τ=∞) vs SGD(τ<∞) in wall-clock time (issue 22.5).

Boubouh et al. (SRDS 2022, §6, Figure 3) say HGO is faster than SGD(τ=∞) and slower than
SGD(τ<∞). The simulator's clock is virtual (every HGO round lasts τ exactly); this runs the
scenario ``hgo_lab/scenarios/wallclock.toml`` as real processes — one ``hgo-server`` and n
device sessions in ``hgo-worker --fleet`` processes over gRPC on loopback, the launcher of
``hgo-experiment run --mode net`` — and prints, from the server's round logs:

* time to accuracy (wall-clock seconds, round log ``t``) per variant and seed;
* accuracy at fixed wall-clock times;
* the server's own cost per round: ``prepare_ms`` (sampling, encoding w_k), ``close_ms``
  (broadcast to the close of collection, against τ), ``aggregate_ms`` (from the close to
  w_{k+1}: b_v, the block's segments through the rule, the update; measured around
  ``RoundDriver.close`` in ``hgo_server/roundloop.py``) and ``round_ms - close_ms`` (all of
  the server's work after the close).

SGD(τ=∞) runs its seeds side by side (``--parallel-inf``, default on): its rounds last the
slowest sampled weak worker's full gradient, d·s/λ ≈ 7.6 s at λ = 100/ms, which the worker's
throttle spends asleep, so one seed's CPU use is small; HGO and SGD(τ=60) run one at a
time, since their rounds are CPU-bound on 2 cores.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/bench_wallclock.py --out runs/wallclock
    .venv/bin/python bench/bench_wallclock.py --out runs/wallclock --report-only
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from hgo_common import roundlog  # noqa: E402

WALL_TIMES = (5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0)


def _slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def _stretched(cfg: Any, u: float) -> Any:
    """τ · u and every λ_i / u (``netmode.scale_time_for_net``'s stretch): each worker's
    planned prefix b = λτ/s is unchanged, and the machine's own delays (broadcast,
    back-propagation on shared cores) weigh u times less against τ."""
    from hgo_lab import simulator

    rates = tuple(r / u for r in simulator.worker_rates(cfg))
    return simulator.with_overrides(cfg, rates=rates, tau=cfg.tau_ms * u)


def _one_run(
    scenario: str,
    label: str,
    seed_index: int,
    quick: bool,
    out: str,
    timeout_s: float,
    stretch: float,
    rounds: int | None,
) -> None:
    """One variant x seed as a real cluster (a child process: its own launcher and ports),
    as ``hgo-experiment run --mode net`` runs it, with a wall-clock limit of ``timeout_s``:
    a run cut by the limit keeps the rounds it logged (time to accuracy is read from them)."""
    import dataclasses

    from hgo_lab import cluster
    from hgo_lab.experiment.netmode import cluster_config
    from hgo_lab.experiment.scenario import load_scenario, seed_config

    sc = load_scenario(scenario, quick=quick, rounds=rounds)
    var = next(v for v in sc.variants if v.label == label)
    cfg = seed_config(var, seed_index)
    if stretch != 1.0:
        cfg = _stretched(cfg, stretch)
    path = Path(out) / f"{_slug(label)}-s{seed_index}.jsonl"
    cc, notes = cluster_config(cfg, path.with_suffix(""), int(sc.net.get("processes", 4)))
    cc = dataclasses.replace(cc, timeout_s=timeout_s)
    for note in notes:
        print(f"[{label} s{seed_index}] {note}", flush=True)
    t0 = time.monotonic()
    try:
        cluster.run_cluster(cc)
    except cluster.ClusterError as exc:
        print(f"[{label} s{seed_index}] cut: {str(exc).splitlines()[0]}", flush=True)
    took = time.monotonic() - t0
    print(f"[{label} s{seed_index}] done in {took:.0f} s -> {path.with_suffix('')}", flush=True)


def run_all(
    scenario: str,
    out: Path,
    seeds: int,
    quick: bool,
    parallel_inf: bool,
    only: list[str],
    timeout_s: float,
    stretch: float = 1.0,
    rounds: int | None = None,
) -> None:
    from hgo_lab.experiment.scenario import load_scenario

    sc = load_scenario(scenario, quick=quick)
    out.mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("spawn")
    labels = [v.label for v in sc.variants if not only or v.label in only]
    for label in labels:
        var = next(v for v in sc.variants if v.label == label)
        procs = []
        for s in range(seeds):
            run_args = (scenario, label, s, quick, str(out), timeout_s, stretch, rounds)
            p = ctx.Process(target=_one_run, args=run_args)
            p.start()
            procs.append(p)
            if not (parallel_inf and math.isinf(var.config.tau_ms)):
                p.join()
        for p in procs:
            p.join()
            if p.exitcode:
                print(f"[{label}] a run exited with code {p.exitcode}", flush=True)


def _first_time(recs: list[dict[str, Any]], th: float) -> float | None:
    for r in recs:
        a = r.get("accuracy")
        if a is not None and a >= th:
            return float(r["t"])
    return None


def _acc_at(recs: list[dict[str, Any]], t: float) -> float | None:
    got = None
    for r in recs:
        if r["t"] > t:
            break
        if r.get("accuracy") is not None:
            got = float(r["accuracy"])
    return got


def _fmt(x: float | None, spec: str = ".1f") -> str:
    return "—" if x is None else format(x, spec)


def report(out: Path, thresholds: list[float]) -> None:
    runs: dict[str, list[tuple[int, list[dict[str, Any]]]]] = {}
    for p in sorted(out.glob("*-s[0-9]*/round_log.jsonl")):  # each run's own server log
        label, seed_text = p.parent.name.rsplit("-s", 1)
        runs.setdefault(label, []).append((int(seed_text), list(roundlog.read(p))))
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"# bench_wallclock: {out}  (uptime: {load})")
    for label, seeds in runs.items():
        print(f"\n## {label}: {len(seeds)} seeds")
        for seed, recs in sorted(seeds):
            last: dict[str, Any] = next((r for r in reversed(recs) if r.get("accuracy") is not None), {})
            ths = "  ".join(f"t({th:g})={_fmt(_first_time(recs, th))} s" for th in thresholds)
            print(
                f"  seed {seed}: {len(recs)} rounds in {recs[-1]['t']:.1f} s, final acc "
                f"{_fmt(last.get('accuracy'), '.3f')} at round {last.get('round')}; {ths}"
            )
            accs = "  ".join(
                f"{t:g}s:{_fmt(_acc_at(recs, t), '.3f')}" for t in WALL_TIMES if t <= recs[-1]["t"] * 1.5
            )
            print(f"    accuracy at wall time: {accs}")
        allr = [r for _, recs in seeds for r in recs]
        tau = allr[0].get("tau_ms")

        def col(key: str, allr: list[dict[str, Any]] = allr) -> np.ndarray:
            return np.array([float(r[key]) for r in allr if r.get(key) is not None])

        rms, cms, pms, agg = col("round_ms"), col("close_ms"), col("prepare_ms"), col("aggregate_ms")
        post = rms - cms if len(rms) == len(cms) else np.array([])
        blk = col("block")
        d = max((int(w["prefix"]) for r in allr for w in r.get("workers", [])), default=1)

        def q(a: np.ndarray) -> str:
            if a.size == 0:
                return "n/a"
            return f"median {np.median(a):.1f}, p90 {np.percentile(a, 90):.1f}, mean {a.mean():.1f}"

        print(f"  server per round (ms; tau = {tau}): round {q(rms)}")
        print(f"    prepare (sample, encode w_k)  : {q(pms)}")
        print(f"    broadcast -> close             : {q(cms)}")
        print(f"    aggregate (block + AR + update): {q(agg)}")
        print(f"    close -> w_k+1 (all after close): {q(post)}")
        if agg.size and rms.size:
            share, block_pct = agg.sum() / rms.sum(), 100 * blk.mean() / d
            print(f"    aggregate / round: {share:.1%};  block % of d: {block_pct:.1f}")
        noq = sum(1 for r in allr if not r.get("quorum"))
        prof: dict[str, list[float]] = {}
        for r in allr:
            for w in r.get("workers", []):
                prof.setdefault(str(w.get("profile")), []).append(100.0 * int(w["prefix"]) / d)
        mix = ", ".join(f"{k} {np.mean(v):.1f}" for k, v in sorted(prof.items()))
        print(f"  rounds without quorum: {noq} of {len(allr)};  mean prefix % of d by profile: {mix}")
        per_s = [len(recs) / recs[-1]["t"] for _, recs in seeds if recs[-1]["t"] > 0]
        print(f"  rounds per second: {np.mean(per_s):.2f}")
    summary = {
        lab: {str(th): [_first_time(recs, th) for _, recs in sorted(seeds)] for th in thresholds}
        for lab, seeds in runs.items()
    }
    print("\ntime to accuracy (s), per seed: " + json.dumps(summary))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", default="wallclock", help="scenario name or TOML path (default: wallclock)")
    ap.add_argument("--out", type=Path, default=Path("runs/wallclock"))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="the scenario's [quick] setting (digits, n = 20)")
    ap.add_argument("--variant", action="append", default=[], help="run only this variant label (repeatable)")
    ap.add_argument("--no-parallel-inf", dest="parallel_inf", action="store_false",
                    help="run SGD(tau=inf) seeds one at a time too")  # fmt: skip
    ap.add_argument("--report-only", action="store_true", help="only print the figures of the logs in --out")
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.85, 0.9])
    ap.add_argument("--timeout", type=float, default=3600.0, help="wall-clock limit of one run, s")
    ap.add_argument("--stretch", type=float, default=1.0, help="tau*U, every rate/U (same prefixes)")
    ap.add_argument("--rounds", type=int, default=None, help="override every variant's rounds")
    args = ap.parse_args()
    if args.seeds < 1:
        ap.error(f"--seeds must be >= 1, got {args.seeds}")
    if not args.stretch >= 1.0:
        ap.error(f"--stretch must be >= 1 (a slower clock than the scenario's), got {args.stretch}")
    if not args.report_only:
        run_all(
            args.scenario, args.out, args.seeds, args.quick, args.parallel_inf, args.variant, args.timeout,
            args.stretch, args.rounds,
        )  # fmt: skip
    report(args.out, args.thresholds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
