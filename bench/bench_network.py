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
import asyncio
import json
import os
import signal
import statistics
import struct
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

D = 23_860
HIDDEN = 318  # 64*318 + 318 + 318*10 + 10 = 23,860
CHUNK = 16_384
RAW_METHOD = "/bench.Raw/Stream"
OPTIONS = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]


def _loop_runner() -> asyncio.Runner:
    try:
        import uvloop

        return asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        return asyncio.Runner()


# ---------------------------------------------------------------------- raw reference


async def raw_server(port_file: Path, out: Path, streams: int, rounds: int) -> None:
    import grpc

    queues: list[asyncio.Queue[bytes | None]] = []
    got: dict[int, int] = {}
    done_evt: dict[int, asyncio.Event] = {}
    all_in = asyncio.Event()
    need = streams * D * 4

    async def handler(requests: Any, context: Any) -> Any:
        q: asyncio.Queue[bytes | None] = asyncio.Queue()
        queues.append(q)
        if len(queues) == streams:
            all_in.set()

        async def reader() -> None:
            async for msg in requests:
                rnd = struct.unpack_from("<q", msg)[0]
                if rnd < 0:
                    continue
                got[rnd] = got.get(rnd, 0) + len(msg) - 8
                if got[rnd] >= need:
                    done_evt[rnd].set()

        task = asyncio.create_task(reader())
        try:
            while (item := await q.get()) is not None:
                yield item
        finally:
            task.cancel()

    server = grpc.aio.server(options=OPTIONS)
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "bench.Raw", {"Stream": grpc.stream_stream_rpc_method_handler(handler)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    port_file.write_text(str(port))
    await all_in.wait()
    rows = []
    weights = np.zeros(D, dtype=np.float32).tobytes()
    for rnd in range(rounds):
        done_evt[rnd] = asyncio.Event()
        msg = struct.pack("<q", rnd) + weights  # one bytes object for every stream, like HGO
        t_b = time.time()
        for q in queues:
            q.put_nowait(msg)
        await done_evt[rnd].wait()
        rows.append({"round": rnd, "t_b": t_b, "t_last": time.time(), "bytes": got[rnd]})
        await asyncio.sleep(0.02)
    for q in queues:
        q.put_nowait(None)
    out.write_text(json.dumps(rows))
    await server.stop(1)


async def raw_clients(port: int, n: int, out: Path) -> None:
    import grpc

    trace: list[tuple[str, int, float]] = []
    grad = np.ones(D, dtype=np.float32)
    pieces = [grad[a : a + CHUNK].tobytes() for a in range(0, D, CHUNK)]

    async def one(channel: Any) -> None:
        call = channel.stream_stream(RAW_METHOD)()
        await call.write(struct.pack("<q", -1))
        while (msg := await call.read()) is not grpc.aio.EOF:
            rnd = struct.unpack_from("<q", msg)[0]
            trace.append(("task", rnd, time.time()))
            head = struct.pack("<q", rnd)
            trace.append(("chunk", rnd, time.time()))
            for p in pieces:
                await call.write(head + p)

    # One channel (TCP connection) per session, as separate workers have.
    chans = [grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=OPTIONS) for _ in range(n)]
    await asyncio.gather(*(one(c) for c in chans), return_exceptions=True)
    for c in chans:
        await c.close()
    out.write_text(json.dumps(trace))


# ---------------------------------------------------------------------- HGO clients


async def hgo_clients(port: int, n: int, base: int, out: Path, compute: str) -> None:
    from hgo_common import local as compute_mod
    from hgo_worker.client import Worker, WorkerConfig

    if compute == "stub":
        # Transport measurement: replace back-propagation by a constant vector (see docstring).
        def ensure(self: Any, n_: int) -> int:
            if self.computed < self.limit:
                self.values[:] = 1e-3
                self.computed = self.limit
            return int(self.computed)

        compute_mod.RoundGradient.ensure = ensure  # type: ignore[method-assign]
    workers = []
    for i in range(n):
        cfg = WorkerConfig(
            server=f"127.0.0.1:{port}", profile="powerful", rate=0.0, batch_size=32, seed=base + i,
            name=f"bench-{base + i}", reconnect_timeout=5.0,
        )  # fmt: skip
        w = Worker(cfg)
        w.trace = []
        workers.append(w)
    await asyncio.gather(*(w.run() for w in workers))
    out.write_text(json.dumps([ev for w in workers for ev in (w.trace or [])]))


# ---------------------------------------------------------------------- orchestration


def _spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as fh:
        return subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


def _killall(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        p.wait()


def _wait_file(path: Path, procs: list[subprocess.Popen[bytes]], timeout: float = 120) -> str:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        if any(p.poll() not in (None, 0) for p in procs):
            raise RuntimeError(f"a process failed before {path.name} appeared")
        time.sleep(0.05)
    raise RuntimeError(f"{path} did not appear within {timeout} s")


def _traces(files: list[Path]) -> dict[str, dict[int, list[float]]]:
    out: dict[str, dict[int, list[float]]] = {"task": {}, "chunk": {}}
    for f in files:
        for kind, rnd, t in json.loads(f.read_text()):
            out[kind].setdefault(int(rnd), []).append(float(t))
    return out


def run_raw(work: Path, q: int, procs: int, rounds: int) -> dict[str, float]:
    me = [sys.executable, str(Path(__file__).resolve())]
    port_file, res = work / "raw.port", work / "raw.json"
    port_file.unlink(missing_ok=True)  # a stale port from an earlier run would mislead the clients
    started: list[subprocess.Popen[bytes]] = []
    try:
        srv = _spawn([*me, "--role", "raw-server", "--port-file", str(port_file), "--out", str(res),
                      "--q", str(q), "--rounds", str(rounds)], work / "raw-server.log")  # fmt: skip
        started.append(srv)
        port = _wait_file(port_file, started)
        outs = [work / f"raw-client-{i}.json" for i in range(procs)]
        for i in range(procs):
            started.append(_spawn([*me, "--role", "raw-client", "--port", port, "--sessions", str(q // procs),
                                   "--out", str(outs[i])], work / f"raw-client-{i}.log"))  # fmt: skip
        srv.wait(timeout=300)
        for p in started[1:]:
            p.wait(timeout=30)
        rows = json.loads(res.read_text())
        tr = _traces(outs)
    finally:
        _killall(started)
    bcast, ingest = [], []
    for r in rows[2:]:  # the first rounds warm the connections up
        k = r["round"]
        bcast.append(max(tr["task"][k]) - r["t_b"])
        ingest.append(r["bytes"] / (r["t_last"] - min(tr["chunk"][k])))
    return {
        "broadcast_ms": 1000 * statistics.median(bcast),
        "ingest_MBps": statistics.median(ingest) / 1e6,
        "round_ms": 1000 * statistics.median(r["t_last"] - r["t_b"] for r in rows[2:]),
    }


def run_hgo(work: Path, q: int, procs: int, rounds: int, tau: str, compute: str) -> dict[str, float]:
    tag = f"hgo-{tau}-{compute}"
    port_file, log_file = work / f"{tag}.port", work / f"{tag}.jsonl"
    port_file.unlink(missing_ok=True)
    log_file.unlink(missing_ok=True)
    started: list[subprocess.Popen[bytes]] = []
    me = [sys.executable, str(Path(__file__).resolve())]
    server_log = work / f"{tag}-server.log"
    try:
        srv = _spawn(
            [sys.executable, "-m", "hgo_server.cli", "--port", "0", "--port-file", str(port_file),
             "--log", str(log_file), "--q", str(q), "--min-workers", str(q), "--num-shards", str(q),
             "--tau", tau, "--rounds", str(rounds), "--dataset", "digits", "--model", "mlp",
             "--hidden", str(HIDDEN), "--eval-every", "0", "--seed", "0"],
            server_log,
        )  # fmt: skip
        started.append(srv)
        port = _wait_file(port_file, started)
        outs = [work / f"{tag}-client-{i}.json" for i in range(procs)]
        per = q // procs
        for i in range(procs):
            started.append(_spawn([*me, "--role", "hgo-client", "--port", port, "--sessions", str(per),
                                   "--base", str(i * per), "--compute", compute, "--out", str(outs[i])],
                                  work / f"{tag}-client-{i}.log"))  # fmt: skip
        srv.wait(timeout=600)
        for p in started[1:]:
            p.wait(timeout=60)
        tr = _traces(outs)
    finally:
        _killall(started)
    from hgo_common import roundlog

    recs = roundlog.read(log_file)
    text = server_log.read_text()
    line = next(ln for ln in text.splitlines() if "training:" in ln)
    if f"d={D}" not in line:
        raise RuntimeError(f"server did not train d={D}: {line}")
    t0 = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
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
    p.add_argument("--role", default="main", choices=["main", "raw-server", "raw-client", "hgo-client"])
    p.add_argument("--q", type=int, default=80)
    p.add_argument("--procs", type=int, default=4, help="client processes (each hosts q/procs sessions)")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--port-file", type=Path)
    p.add_argument("--port", type=int)
    p.add_argument("--sessions", type=int)
    p.add_argument("--base", type=int, default=0)
    p.add_argument("--compute", default="stub", choices=["stub", "real"])
    p.add_argument("--out", type=Path)
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_network")
    a = p.parse_args()
    with _loop_runner() as runner:
        if a.role == "raw-server":
            runner.run(raw_server(a.port_file, a.out, a.q, a.rounds))
            return 0
        if a.role == "raw-client":
            runner.run(raw_clients(a.port, a.sessions, a.out))
            return 0
        if a.role == "hgo-client":
            if os.environ.get("BENCH_PROFILE") and a.base == 0:  # where does a client's time go?
                import cProfile

                with cProfile.Profile() as prof:
                    runner.run(hgo_clients(a.port, a.sessions, a.base, a.out, a.compute))
                prof.dump_stats(str(a.out) + ".prof")
                return 0
            runner.run(hgo_clients(a.port, a.sessions, a.base, a.out, a.compute))
            return 0
    if a.q % a.procs:
        p.error(f"--q {a.q} must be a multiple of --procs {a.procs}")
    a.work.mkdir(parents=True, exist_ok=True)
    print(f"q={a.q} sessions over {a.procs} client processes, d={D}, {a.rounds} rounds per setting")
    raw = run_raw(a.work, a.q, a.procs, a.rounds)
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
