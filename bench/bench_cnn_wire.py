"""A >= 1M-parameter CNN trained over gRPC by real torch worker processes (issue 23, item 4).

Run: ``.venv/bin/python bench/bench_cnn_wire.py`` (a few minutes on 2 cores; needs
``make install-torch``). Prints accuracy over rounds, wall-clock, per-round overhead,
broadcast time and bytes on the wire; docs/benchmarks.md "CNN over the wire" records it.

Set-up. One ``hgo-server`` process (``--model cnn-cifar``: McMahan et al.'s CIFAR-10 CNN,
d = 1,702,794, so w_k is 6.8 MB of float32 per worker per round; ``--dataset
cifar10-synthetic``: generated images with CIFAR-10's shapes, *not* CIFAR-10, see
``hgo_common.datasets.cifar10_synthetic``; the shards travel from the server) and
``--workers`` worker processes, each one ``hgo_worker.client.Worker`` session (the code
``hgo-worker`` runs, started through ``bench/benchlib.py --role hgo-client --compute real``
so that it records when it received each task), unthrottled (rate 0: each computes its
real torch gradient on a mini-batch of 32 and streams all d values in chunks of
``--max-chunk-values``). q = all workers, the average rule, early close (a round ends when
the last worker's last chunk is in), stratified C_k over the CNN's 10 parameter tensors.

Measured (medians over the rounds after the first two, which warm up):

* accuracy on the test split (2,000 images) every ``--eval-every`` rounds, with the
  wall-clock time since training started;
* round: the round log's ``round_ms`` (w_k sent -> w_{k+1} ready);
* broadcast: the round's start (round log ``t - close_ms``, aligned to wall time by the
  server's ``training:`` line) -> the last worker holds w_k (its trace);
* compute + upload: the last worker holding w_k -> the round closed (its last chunk in);
* overhead: close -> w_{k+1} (``round_ms - close_ms``: RoundClosed, aggregation over the
  (q x d) buffer, update, log), and ``prepare_ms`` (sampling, encoding w_{k+1});
* bytes on the wire: the server's ``hgo_sent_bytes`` / ``hgo_received_bytes`` counters
  (serialized protobuf messages, without HTTP/2 and TCP framing) scraped from its
  ``--metrics-port`` during the run, per round; the shards sent at join are counted apart;
* CPU: cores used by the server and by the workers together over the training window.

Floors: the bare grpc.aio reference of ``benchlib.run_raw`` (the same number of streams
over the same number of processes, d float32 values broadcast to each and d returned by
each in chunks, no protocol logic) for broadcast and round time; the memory floor of the
close is ``values.sum(axis=0)`` over a (q x d) float32 buffer, timed here.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import socket
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib
from benchlib import ROOT, CpuSampler, hgo_client_argv, killall, server_t0, spawn, traces, wait_file

D = 1_702_794  # cnn-cifar on 3 x 32 x 32, 10 classes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[str, float]:
    """The server's byte counters (``hgo_sent_bytes_total``, ``hgo_received_bytes_total``)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
        text = resp.read().decode()
    out = {}
    for name in ("hgo_sent_bytes_total", "hgo_received_bytes_total", "hgo_rounds_total"):
        m = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
        if m:
            out[name] = float(m.group(1))
    return out


def run(a: argparse.Namespace) -> dict[str, Any]:
    work: Path = a.work
    port_file, log_file, server_log = work / "port", work / "rounds.jsonl", work / "server.log"
    for f in (port_file, log_file):
        f.unlink(missing_ok=True)
    metrics_port = free_port()
    env = {**os.environ, "HGO_TORCH_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    argv = [
        sys.executable, "-m", "hgo_server.cli", "--port", "0", "--port-file", str(port_file),
        "--log", str(log_file), "--q", str(a.workers), "--min-workers", str(a.workers),
        "--num-shards", str(a.workers), "--tau", a.tau, "--rounds", str(a.rounds),
        "--dataset", "cifar10-synthetic", "--model", "cnn-cifar", "--lr", str(a.lr),
        "--eval-every", str(a.eval_every), "--order", a.order, "--rule", a.rule, "--seed", "0",
        "--max-message-mb", str(a.max_message_mb), "--max-chunk-values", str(a.max_chunk_values),
        "--heartbeat-ms", str(a.heartbeat_ms), "--metrics-port", str(metrics_port),
    ]  # fmt: skip
    if a.max_train:
        argv += ["--max-train", str(a.max_train)]
    started = []
    scrapes: list[tuple[float, dict[str, float]]] = []
    try:
        srv = spawn(argv, server_log, env=env)
        started.append(srv)
        port = wait_file(port_file, started, timeout=600)
        outs = [work / f"worker-{i}.json" for i in range(a.workers)]
        for i in range(a.workers):
            wargv = hgo_client_argv(port, 1, i, outs[i], compute="real", rate=0.0)
            started.append(spawn(wargv, work / f"worker-{i}.log", env=env))
        sampler = CpuSampler({"server": [srv.pid], "workers": [p.pid for p in started[1:]]})
        deadline = time.monotonic() + a.timeout
        while srv.poll() is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not finish within {a.timeout} s; see {server_log}")
            sampler.sample()
            try:
                scrapes.append((time.time(), scrape(metrics_port)))
            except OSError:
                pass
            time.sleep(0.5)
        if srv.returncode != 0:
            raise RuntimeError(f"hgo-server exited {srv.returncode}: {server_log.read_text()[-3000:]}")
        for p in started[1:]:
            p.wait(timeout=120)
        tr = traces(outs)
    finally:
        killall(started)
    from hgo_common import roundlog

    recs = roundlog.read(log_file)
    t0 = server_t0(server_log, D)
    bcast, upload, overhead, prepare, rounds_ms, closes = [], [], [], [], [], []
    for r in recs[2:]:
        k = r["round"]
        start = t0 + r["t"] - r["close_ms"] / 1000.0
        if k in tr["task"] and len(tr["task"][k]) == r["sampled"]:
            got = max(tr["task"][k])
            bcast.append(1000 * (got - start))
            upload.append(1000 * (t0 + r["t"] - got))
        overhead.append(r["round_ms"] - r["close_ms"])
        prepare.append(r["prepare_ms"])
        rounds_ms.append(r["round_ms"])
        closes.append(r["close_ms"])
    evals = [(r["round"], r["t"], r["accuracy"]) for r in recs if "accuracy" in r]
    # Bytes per round: the slope of the counters against the rounds closed, over the
    # scrapes from round 3 on (the shards, ~4 KB a training image, are still streaming
    # during the first rounds; a difference of two scrapes would be off by up to a round,
    # as the counters move before the round counter does).
    late = [s for _, s in scrapes if s.get("hgo_rounds_total", 0) >= 3]
    per_round: dict[str, float] = {}
    if len({s["hgo_rounds_total"] for s in late}) >= 3:
        x = np.array([s["hgo_rounds_total"] for s in late])
        per_round = {
            "sent_MB": float(np.polyfit(x, [s["hgo_sent_bytes_total"] for s in late], 1)[0]) / 1e6,
            "received_MB": float(np.polyfit(x, [s["hgo_received_bytes_total"] for s in late], 1)[0]) / 1e6,
            "rounds_counted": float(x.max() - x.min()),
        }
    first = [s for _, s in scrapes if s.get("hgo_rounds_total", 0) >= 3]
    # evaluation: an evaluated round's close -> the next round's start (the others' gap apart)
    pairs = itertools.pairwise(recs)
    gaps = {r0["round"]: 1000 * (r1["t"] - r1["close_ms"] / 1000.0 - r0["t"]) for r0, r1 in pairs}
    eval_ms = [g for k, g in gaps.items() if "accuracy" in recs[k]]
    plain_ms = [g for k, g in gaps.items() if "accuracy" not in recs[k]]
    cpu = sampler.window(t0, t0 + recs[-1]["t"])
    prefixes = [w["prefix"] for r in recs for w in r["workers"]]
    med = statistics.median
    return {
        "d": D,
        "rounds": len(recs),
        "quorum_rounds": sum(bool(r["quorum"]) for r in recs),
        "train_s": recs[-1]["t"],
        "evals": evals,
        "round_ms": med(rounds_ms),
        "round_p90_ms": float(np.percentile(rounds_ms, 90)),
        "close_ms": med(closes),
        "broadcast_ms": med(bcast) if bcast else float("nan"),
        "broadcast_p90_ms": float(np.percentile(bcast, 90)) if bcast else float("nan"),
        "compute_upload_ms": med(upload) if upload else float("nan"),
        "overhead_ms": med(overhead),
        "overhead_p90_ms": float(np.percentile(overhead, 90)),
        "prepare_ms": med(prepare),
        "mean_prefix": float(np.mean(prefixes)),
        "bytes": per_round,
        "total_sent_MB": first[-1]["hgo_sent_bytes_total"] / 1e6 if first else float("nan"),
        "eval_ms": med(eval_ms) if eval_ms else float("nan"),
        "gap_ms": med(plain_ms) if plain_ms else float("nan"),
        "cpu": cpu,
    }


def memory_floor(q: int, d: int) -> float:
    """ms for ``values.sum(axis=0)`` over a (q x d) float32 buffer (best of 5)."""
    values = np.random.default_rng(0).standard_normal((q, d), dtype=np.float32)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        values.sum(axis=0)
        best = min(best, time.perf_counter() - t)
    return 1000 * best


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=3, help="torch worker processes (q = all of them)")
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--lr", type=float, default=0.03)
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--tau", default="60s", help="round deadline; rounds close early when all are in")
    p.add_argument("--order", default="stratified", choices=["flat", "stratified"])
    p.add_argument("--rule", default="average")
    p.add_argument("--max-train", type=int, default=0, help="training images (0: all 10,000)")
    p.add_argument("--max-message-mb", type=int, default=64)
    p.add_argument("--max-chunk-values", type=int, default=16384)
    p.add_argument("--heartbeat-ms", type=int, default=2000)
    p.add_argument("--raw-rounds", type=int, default=10, help="rounds of the grpc.aio reference (0: skip)")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_cnn_wire")
    a = p.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()
    print(f"cnn-cifar d={D} ({4 * D / 1e6:.2f} MB of float32 per w_k), cifar10-synthetic, "
          f"{a.workers} torch workers, {a.rounds} rounds, order {a.order}, rule {a.rule}, lr {a.lr}; "
          f"load average at start {load0[0]:.1f}", flush=True)  # fmt: skip
    r = run(a)
    load1 = os.getloadavg()
    raw = benchlib.run_raw(a.work, a.workers, a.workers, a.raw_rounds, D) if a.raw_rounds else None
    floor = memory_floor(a.workers, D)
    print("\naccuracy on the 2,000 test images (round: accuracy @ seconds since training started):")
    print("  " + ", ".join(f"{k}: {acc:.3f} @ {t:.0f} s" for k, t, acc in r["evals"]))
    print(f"wall-clock: {r['rounds']} rounds ({r['quorum_rounds']} with quorum) in {r['train_s']:.1f} s "
          f"({r['train_s'] / r['rounds']:.2f} s a round, evaluations included); mean prefix "
          f"{r['mean_prefix']:.0f} of {D}")  # fmt: skip
    print(f"per round (median / p90, rounds 2..): round {r['round_ms']:.0f} / {r['round_p90_ms']:.0f} ms; "
          f"broadcast {r['broadcast_ms']:.0f} / {r['broadcast_p90_ms']:.0f} ms; compute + upload "
          f"{r['compute_upload_ms']:.0f} ms; close -> w_(k+1) {r['overhead_ms']:.0f} / "
          f"{r['overhead_p90_ms']:.0f} ms; "
          f"prepare (sample, encode w) {r['prepare_ms']:.0f} ms")  # fmt: skip
    b = r["bytes"]
    if b:
        print(f"bytes on the wire per round (server counters, {b['rounds_counted']:.0f} rounds): sent "
              f"{b['sent_MB']:.2f} MB (w_k x {a.workers} = {a.workers * 4 * D / 1e6:.2f} MB of values), "
              f"received {b['received_MB']:.2f} MB (d values x {a.workers}); "
              f"whole run sent {r['total_sent_MB']:.0f} MB (shards included)")  # fmt: skip
    print(f"evaluation on the server (close -> next round, evaluated rounds): {r['eval_ms'] / 1000:.1f} s; "
          f"other rounds' gap {r['gap_ms']:.0f} ms")  # fmt: skip
    cpu = r["cpu"]
    print(f"CPU over training: server {cpu.get('server', float('nan')):.2f} cores, workers "
          f"{cpu.get('workers', float('nan')):.2f} cores")  # fmt: skip
    if raw:
        print(f"floors: bare grpc.aio ({a.workers} streams, {a.workers} processes, d={D}): broadcast "
              f"{raw['broadcast_ms']:.0f} ms, round {raw['round_ms']:.0f} ms; memory: sum over the "
              f"({a.workers} x d) buffer {floor:.1f} ms")  # fmt: skip
    else:
        print(f"floor: memory, sum over the ({a.workers} x d) buffer {floor:.1f} ms")
    print(f"load average at end {load1[0]:.1f} (1 min), {load1[1]:.1f} (5 min); {os.cpu_count()} CPUs")
    (a.work / "result.json").write_text(json.dumps({"hgo": r, "raw": raw, "floor_ms": floor}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
