"""Network benchmark: the HGO server with q = 80 live worker sessions at d = 23,860.

Run: ``.venv/bin/python bench/bench_network.py`` (about 2-3 minutes on 2 cores). Prints a
table; docs/benchmarks.md "## Network" records it with the command.

Set-up. One ``hgo-server`` process (MLP 64-318-10 on digits: d = 23,860, the paper's MNIST
MLP size, stratified order, q = v-default, --eval-every 0) and ``--procs`` client processes
each hosting ``80 / procs`` worker sessions (``hgo_worker.client.Worker`` objects sharing
one uvloop loop, unthrottled, s = 32). Every round the server broadcasts w_k (95 KB) to 80
sessions and each returns its full gradient (95 KB) in chunks of at most 16,384 values
(64 KiB), i.e. 7.6 MB of gradient payload per round.

Compute modes. ``stub`` (default rows): the sessions' gradient computation is replaced by
a constant vector (the real MLP back-propagation costs ~3 ms per session per round on
this machine, so 80 sessions on 2 shared cores would measure the CPU, not the network).
``real``: the worker's actual computation, for reference.

Measured per round (medians over the rounds):

* broadcast: from the server starting round k until the last session has w_k. The round
  start comes from the round log (t − close_ms) aligned to wall time with the server's
  "training:" log line (millisecond resolution), receipts from the sessions' traces.
* ingest: gradient payload (sum of prefixes × 4 B, from the round log) divided by the
  time from the first chunk any session queued to the round's close (rounds that closed
  early, i.e. when the last chunk arrived; at a deadline the window is cut).
* overhead: from the close (deadline or last chunk) to w_{k+1} ready (round_ms − close_ms
  in the round log: RoundClosed, aggregation, update, log), and the full gap until round
  k+1 starts.

Reference: a bare grpc.aio bidi-streaming server and clients in the same layout (80
streams over the same client processes) move the same messages: one 95 KB broadcast per
stream, then 95 KB back per stream in the same chunk sizes, with no protocol logic.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib
from benchlib import ROOT, hgo_client_argv, killall, server_t0, spawn, split, traces, wait_file

D = 23_860
HIDDEN = 318  # 64*318 + 318 + 318*10 + 10 = 23,860


def run_hgo(work: Path, q: int, procs: int, rounds: int, tau: str, compute: str) -> dict[str, float]:
    tag = f"hgo-{tau}-{compute}"
    port_file, log_file = work / f"{tag}.port", work / f"{tag}.jsonl"
    port_file.unlink(missing_ok=True)
    log_file.unlink(missing_ok=True)
    started: list[Any] = []
    server_log = work / f"{tag}-server.log"
    try:
        srv = spawn(
            [sys.executable, "-m", "hgo_server.cli", "--port", "0", "--port-file", str(port_file),
             "--log", str(log_file), "--q", str(q), "--min-workers", str(q), "--num-shards", str(q),
             "--tau", tau, "--rounds", str(rounds), "--dataset", "digits", "--model", "mlp",
             "--hidden", str(HIDDEN), "--eval-every", "0", "--seed", "0"],
            server_log,
        )  # fmt: skip
        started.append(srv)
        port = wait_file(port_file, started)
        outs = [work / f"{tag}-client-{i}.json" for i in range(procs)]
        per = split(q, procs)
        for i in range(procs):
            argv = hgo_client_argv(port, per[i], sum(per[:i]), outs[i], compute=compute)
            started.append(spawn(argv, work / f"{tag}-client-{i}.log"))
        srv.wait(timeout=600)
        for p in started[1:]:
            p.wait(timeout=60)
        tr = traces(outs)
    finally:
        killall(started)
    from hgo_common import roundlog

    recs = roundlog.read(log_file)
    t0 = server_t0(server_log, D)
    bcast, ingest, overhead, gap, closes = [], [], [], [], []
    for i, r in enumerate(recs[2:-1], start=2):
        k = r["round"]
        start = t0 + r["t"] - r["close_ms"] / 1000.0
        close = t0 + r["t"]
        if k in tr["task"] and len(tr["task"][k]) == r["sampled"]:
            bcast.append(max(tr["task"][k]) - start)
        payload = 4 * sum(w["prefix"] for w in r["workers"])
        if r.get("early_close") and k in tr["chunk"]:
            ingest.append(payload / (close - min(tr["chunk"][k])))
        overhead.append(r["round_ms"] - r["close_ms"])
        nxt = recs[i + 1]
        gap.append(1000 * ((nxt["t"] - nxt["close_ms"] / 1000.0) - r["t"]))
        closes.append(r["close_ms"])
    med = statistics.median
    return {
        "broadcast_ms": 1000 * med(bcast) if bcast else float("nan"),
        "ingest_MBps": med(ingest) / 1e6 if ingest else float("nan"),
        "overhead_ms": med(overhead),
        "overhead_p90_ms": float(np.percentile(overhead, 90)),
        "gap_ms": med(gap),
        "close_ms": med(closes),
        "early_close_frac": sum(bool(r.get("early_close")) for r in recs) / len(recs),
        "mean_prefix": float(np.mean([w["prefix"] for r in recs for w in r["workers"]])),
        "rounds_per_s": len(recs) / recs[-1]["t"],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--q", type=int, default=80)
    p.add_argument("--procs", type=int, default=4, help="client processes (each hosts q/procs sessions)")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_network")
    a = p.parse_args()
    if a.q % a.procs:
        p.error(f"--q {a.q} must be a multiple of --procs {a.procs}")
    a.work.mkdir(parents=True, exist_ok=True)
    print(f"q={a.q} sessions over {a.procs} client processes, d={D}, {a.rounds} rounds per setting")
    raw = benchlib.run_raw(a.work, a.q, a.procs, a.rounds, D)
    rows = []
    for tau, compute in (("60", "stub"), ("500", "stub"), ("500", "real")):
        rows.append((tau, compute, run_hgo(a.work, a.q, a.procs, a.rounds, tau, compute)))
        print(f"  done tau={tau} compute={compute}", flush=True)
    payload_mb = a.q * D * 4 / 1e6
    print(f"\npayload per round: {a.q} x {D} float32 = {payload_mb:.2f} MB each way\n")
    hdr = (f"{'setting':<22} {'bcast ms':>9} {'ingest MB/s':>12} {'% raw':>6} {'close ms':>9} "
           f"{'overhead ms':>12} {'p90':>6} {'% tau':>6} {'gap ms':>7} {'early':>6} {'prefix':>7} "
           f"{'rounds/s':>9}")  # fmt: skip
    print(hdr)
    print("-" * len(hdr))
    print(f"{'raw grpc.aio':<22} {raw['broadcast_ms']:>9.1f} {raw['ingest_MBps']:>12.0f} {100:>6.0f} "
          f"{raw['round_ms']:>9.1f}")  # fmt: skip
    for tau, compute, r in rows:
        print(
            f"{f'hgo tau={tau} {compute}':<22} {r['broadcast_ms']:>9.1f} {r['ingest_MBps']:>12.0f} "
            f"{100 * r['ingest_MBps'] / raw['ingest_MBps']:>6.0f} {r['close_ms']:>9.1f} "
            f"{r['overhead_ms']:>12.1f} "
            f"{r['overhead_p90_ms']:>6.1f} {100 * r['overhead_ms'] / float(tau):>6.1f} {r['gap_ms']:>7.1f} "
            f"{r['early_close_frac']:>6.2f} {r['mean_prefix']:>7.0f} {r['rounds_per_s']:>9.1f}"
        )
    r500 = rows[1][2]
    print(f"\ntarget overhead <= 10% of tau at 500 ms: {r500['overhead_ms']:.1f} ms = "
          f"{100 * r500['overhead_ms'] / 500:.1f}% -> "
          f"{'met' if r500['overhead_ms'] <= 50 else 'NOT met'}")  # fmt: skip
    ratio = r500["ingest_MBps"] / raw["ingest_MBps"]
    print(f"target ingest >= 50% of raw: {100 * ratio:.0f}% -> {'met' if ratio >= 0.5 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
