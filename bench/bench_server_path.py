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

``--net`` runs the same data path over the wire: one ``hgo-server`` process (an MLP on
digits with the hidden width that gives about ``--d`` parameters, q = 80, early close,
``--max-chunk-values --chunk``) and q lightweight synthetic sessions in ``--procs`` client
processes (``tests.wireclient.WireClient``: join with their own token, answer
heartbeats, and on each RoundTask stream a prefix of one of 4 fixed gradient vectors, its
length drawn per round from the mixed distribution above). Only a full gradient finishes a
session's round, so rounds close at the deadline ``--tau`` (default 60 s; what arrived by
then forms the block), and the byte-rate limit per session is lifted to its maximum. The
server's heartbeat interval is ``--heartbeat`` (default 20 s: a session is dropped after 3
silent intervals, and with the default 2 s, at load 29 on 2 cores, all 80 sessions were
dropped at the first round's close while the server's loop was still draining 3.5 GB).
From the round log and the sessions' receipt times, per round: broadcast (round start -> the last
session holds w_k), close -> w_{k+1} (``round_ms - close_ms``: RoundClosed, aggregation,
update), the task's preparation (w_k encoded once), and the server's peak RSS (VmHWM).
Floors, measured in this process after the server has exited: memory, one
``values.sum(axis=0)`` over a (q x d) float32 buffer (for close -> w_{k+1}) and q copies
of the 4d-byte task (for the broadcast); loopback, the same 4d bytes written to q plain
TCP sockets on 127.0.0.1 read by ``--procs`` processes (no gRPC, no HTTP/2).

    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/bench_server_path.py --net --d 11000000
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import asyncio
import contextlib
import json
import re
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
for _p in (str(ROOT), str(ROOT / "bench")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from benchlib import SECRET_ENV, bench_tokens, killall, server_t0, session_token, spawn, split  # noqa: E402

from hgo_common import collector, rounds, wire  # noqa: E402

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


# ----------------------------------------------------------------------------- --net


def _hidden_for(d: int) -> int:
    """The MLP hidden width on digits (64 features, 10 classes) with about d parameters."""
    return max(1, round((d - 10) / 75))  # 64h + h (biases) + 10h + 10


async def net_sessions(port: int, n: int, base: int, out: Path, seed: int, d_net: int) -> None:
    """``n`` synthetic sessions on this process's loop; writes their receipt times."""
    import grpc.aio

    from hgo_common.net import credentials
    from hgo_common.net.proto import hgo_pb2, hgo_pb2_grpc
    from tests.wireclient import WireClient, channel_options

    secret = os.environ.get(SECRET_ENV)
    trace: list[tuple[str, int, float]] = []
    rows: list[bytes] = []

    async def one(i: int) -> None:
        # one channel (TCP connection) per session, as separate devices have
        ch = grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=[*channel_options(), ("grpc.use_local_subchannel_pool", 1)]
        )
        token = session_token(secret, base + i) if secret else None
        c = WireClient(hgo_pb2_grpc.HGOStub(ch), credentials.bearer_metadata(token))
        try:
            welcome = await c.join(timeout=120, name=f"path-{base + i}", profile="powerful")
            d = int(welcome.spec.dim)
            if d != d_net:
                raise RuntimeError(f"the server trains d={d}, the sessions were built for d={d_net}")
            step = int(welcome.spec.max_chunk_values) or d
            data = rows[(base + i) % len(rows)]
            beat_s = welcome.heartbeat_ms / 2000.0 or 1.0
            tasks: asyncio.Queue[int] = asyncio.Queue()

            async def upload() -> None:
                while True:
                    k = await tasks.get()
                    p = int(prefixes_mixed(np.random.default_rng([seed, base + i, k]), 1, d)[0])
                    for a in range(0, p, step):
                        await c.chunk(k, a, data[4 * a : 4 * min(p, a + step)])
                    trace.append(("sent", k, time.time()))

            async def beat() -> None:
                # like hgo_worker: heartbeats on a timer, so a session stays alive while a
                # 44 MB task or its own upload occupies the stream
                while True:
                    await asyncio.sleep(beat_s)
                    await c.send(hgo_pb2.WorkerMessage(heartbeat=hgo_pb2.Heartbeat()))

            helpers = [asyncio.create_task(upload()), asyncio.create_task(beat())]
            try:
                while True:
                    msg = await c.call.read()
                    if msg is grpc.aio.EOF:
                        return
                    kind = msg.WhichOneof("kind")
                    if kind == "task":
                        trace.append(("task", int(msg.task.round), time.time()))
                        tasks.put_nowait(int(msg.task.round))
                        del msg  # w_k is not kept
                    elif kind == "stop":
                        return
            finally:
                for h in helpers:
                    h.cancel()
                await asyncio.gather(*helpers, return_exceptions=True)
        except (grpc.aio.AioRpcError, grpc.aio.UsageError):
            return
        finally:
            await c.close()
            await ch.close()

    # 4 distinct gradient vectors per process, shared by its sessions, built before any
    # session joins (at load 30 drawing 44M normals took longer than the server's 6 s
    # heartbeat limit, and the loop could not answer meanwhile)
    block = np.random.default_rng(seed).standard_normal((4, 1 << 16), dtype=np.float32) * np.float32(1e-3)
    rows.extend(wire.encode(np.resize(r, d_net)) for r in block)
    await asyncio.gather(*(one(i) for i in range(n)))
    out.write_text(json.dumps(trace))


def sink(port: int, n: int, d: int, out: Path) -> None:
    """Loopback floor, receiving side: ``n`` TCP connections, each reading 4d bytes per round."""
    buf = bytearray(4 << 20)
    view = memoryview(buf)
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
    done: list[float] = []
    lock = threading.Lock()

    def read(s: socket.socket) -> None:
        while True:
            left = 4 * d
            while left:
                got = s.recv_into(view[: min(left, len(buf))])
                if not got:
                    return
                left -= got
            with lock:
                done.append(time.time())

    threads = [threading.Thread(target=read, args=(s,)) for s in socks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.write_text(json.dumps(done))


def loopback_floor(d: int, q: int, procs: int, work: Path, reps: int = 2) -> float:
    """Seconds to write the same 4d bytes to q plain TCP sockets read by ``procs`` processes."""
    payload = wire.encode(np.zeros(d, dtype=np.float32))
    srv = socket.create_server(("127.0.0.1", 0), backlog=q)
    port = srv.getsockname()[1]
    outs = [work / f"sink{i}.json" for i in range(procs)]
    me = [sys.executable, __file__, "--sink", "--port", str(port), "--d", str(d)]
    started = [
        spawn([*me, "--n", str(n), "--out", str(outs[i])], work / f"sink{i}.log")
        for i, n in enumerate(split(q, procs))
    ]
    try:
        conns = [srv.accept()[0] for _ in range(q)]
        starts = []
        for _ in range(reps):
            starts.append(time.time())
            threads = [threading.Thread(target=c.sendall, args=(payload,)) for c in conns]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            time.sleep(0.5)  # let the readers finish this round before the next
        for c in conns:
            c.close()
        for p in started:
            p.wait(120)
        done = sorted(t for o in outs for t in json.loads(o.read_text()))
    finally:
        killall(started)
        srv.close()
    return float(min(done[(r + 1) * q - 1] - starts[r] for r in range(reps)))


def _sum_floor(d: int, q: int) -> float:
    buf = np.random.default_rng(0).standard_normal((q, d), dtype=np.float32)
    return min(_timed(lambda: buf.sum(axis=0)) for _ in range(2))


def memory_floors(d: int, q: int) -> tuple[float, float]:
    """(one sum over a (q x d) float32 buffer, q copies of 4d bytes), best of 2, seconds."""
    t_sum = _sum_floor(d, q)
    src = np.ones(d, dtype=np.float32)
    dst = np.empty_like(src)

    def copies() -> None:
        for _ in range(q):
            np.copyto(dst, src)

    return t_sum, min(_timed(copies) for _ in range(2))


def _vm_kib(pid: int, field: str) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def net_run(
    d_target: int,
    rule: str,
    rounds_: int,
    procs: int,
    chunk: int,
    seed: int,
    tau_s: float,
    heartbeat_s: float,
    work: Path,
) -> dict[str, Any]:
    """One networked run: hgo-server and q synthetic sessions; per-round figures."""
    from hgo_common import roundlog

    hidden = _hidden_for(d_target)
    d_model = 75 * hidden + 10
    port_file, log = work / "port", work / f"rounds-{rule}.jsonl"
    port_file.unlink(missing_ok=True)
    secret = bench_tokens(work / "tokens", Q)
    argv = [
        str(Path(sys.executable).parent / "hgo-server"), "--port", "0", "--port-file", str(port_file),
        "--bind", "127.0.0.1", "--dataset", "digits", "--model", "mlp", "--hidden", str(hidden),
        "--q", str(Q), "--min-workers", str(Q), "--tau", f"{tau_s:g}s", "--rounds", str(rounds_),
        "--session-byte-rate-mb", "2047", "--heartbeat-ms", f"{heartbeat_s * 1000:g}",
        "--eval-every", "0", "--log", str(log), "--rule", rule, "--f", str(F if rule != "average" else 0),
        "--max-chunk-values", str(chunk), "--tokens-file", str(work / "tokens"), "--seed", str(seed),
    ]  # fmt: skip
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "HGO_LOG_LEVEL": "INFO", SECRET_ENV: secret}
    server_log = work / f"server-{rule}.log"
    started = [spawn(argv, server_log, env)]
    outs = [work / f"sessions-{rule}-{i}.json" for i in range(procs)]
    hwm = 0
    try:
        t_end = time.monotonic() + 300
        while not port_file.exists():
            if started[0].poll() is not None or time.monotonic() > t_end:
                raise RuntimeError(f"server did not start:\n{server_log.read_text()[-3000:]}")
            time.sleep(0.2)
        port = port_file.read_text().strip()
        base = 0
        for i, n in enumerate(split(Q, procs)):
            cmd = [sys.executable, __file__, "--net-client", "--port", port, "--n", str(n),
                   "--d", str(d_model), "--base", str(base), "--out", str(outs[i]),
                   "--seed", str(seed)]  # fmt: skip
            started.append(spawn(cmd, work / f"sessions-{rule}-{i}.log", env))
            base += n
        t_end = time.monotonic() + 3600
        while started[0].poll() is None:
            hwm = max(hwm, _vm_kib(started[0].pid, "VmHWM"))
            if time.monotonic() > t_end:
                raise RuntimeError("the networked run timed out")
            for p in started[1:]:
                if p.poll() not in (None, 0):
                    raise RuntimeError(f"a session process exited {p.returncode}")
            time.sleep(0.5)
        if started[0].returncode != 0:
            raise RuntimeError(f"server exited {started[0].returncode}:\n{server_log.read_text()[-3000:]}")
        for p in started[1:]:
            p.wait(120)
    finally:
        killall(started)
    recs = roundlog.read(log)
    d = int(re.search(r"training: .*?d=(\d+)", server_log.read_text()).group(1))  # type: ignore[union-attr]
    t0 = server_t0(server_log, d)
    task: dict[int, list[float]] = {}
    for o in outs:
        for kind, k, t in json.loads(o.read_text()):
            if kind == "task":
                task.setdefault(int(k), []).append(float(t))
    per_round = []
    for r in recs:
        k = int(r["round"])
        start = t0 + r["t"] - r["close_ms"] / 1000.0
        per_round.append({
            "round": k,
            "block": int(r["block"]),
            "responded": int(r["responded"]),
            "prepare_ms": float(r.get("prepare_ms", float("nan"))),
            "broadcast_ms": 1000.0 * (max(task.get(k, [float("nan")])) - start),
            "close_ms": float(r["close_ms"]),
            "overhead_ms": float(r["round_ms"]) - float(r["close_ms"]),
        })  # fmt: skip
    peak_gb = hwm * 1024 / 1e9
    return {"rule": rule, "d": d, "hidden": hidden, "rounds": per_round, "server_peak_rss_gb": peak_gb}


def net_main(args: argparse.Namespace) -> None:
    a = args
    with tempfile.TemporaryDirectory(prefix="hgo-path-") as tmp:
        work = Path(tmp)
        runs = [
            net_run(a.d, rule, a.rounds, a.procs, a.chunk, a.seed, a.tau, a.heartbeat, work)
            for rule in a.rules
        ]
        d = int(runs[0]["d"])
        t_sum, t_copy = memory_floors(d, Q)
        t_loop = loopback_floor(d, Q, args.procs, work)
    buffer_gb = Q * d * 4 / 1e9
    print(
        f"# --net q={Q} v={V} f={F} d={d:,} (mlp hidden {runs[0]['hidden']:,} on digits); task "
        f"{4 * d / 1e6:.1f} MB x {Q} = {Q * 4 * d / 1e9:.2f} GB per broadcast; buffer {buffer_gb:.2f} GB; "
        f"chunk {args.chunk:,} values; {args.procs} session processes; load {os.getloadavg()[0]:.2f}"
    )
    print(
        f"# floors: memory sum(q x d) {t_sum * 1e3:.0f} ms; memory {Q} task copies {t_copy * 1e3:.0f} ms; "
        f"loopback TCP {Q} x {4 * d / 1e6:.1f} MB {t_loop * 1e3:.0f} ms"
    )
    head = (
        f"{'rule':<10}{'round':>6}{'b_v':>12}{'resp':>5}{'prepare ms':>11}{'bcast ms':>10}{'x loopback':>11}"
        f"{'x mem':>8}{'close ms':>10}{'close->w ms':>12}{'x floor':>9}{'peak RSS GB':>12}{'/ buffer':>9}"
    )
    print(head)
    print("-" * len(head))
    for run in runs:
        for r in run["rounds"]:
            print(
                f"{run['rule']:<10}{r['round']:>6}{r['block']:>12,}{r['responded']:>5}{r['prepare_ms']:>11.0f}"
                f"{r['broadcast_ms']:>10.0f}{r['broadcast_ms'] / 1e3 / t_loop:>11.2f}"
                f"{r['broadcast_ms'] / 1e3 / t_copy:>8.2f}{r['close_ms']:>10.0f}{r['overhead_ms']:>12.0f}"
                f"{r['overhead_ms'] / 1e3 / t_sum:>9.2f}{run['server_peak_rss_gb']:>12.2f}"
                f"{run['server_peak_rss_gb'] / buffer_gb:>9.2f}"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--d", type=int, default=11_000_000)
    ap.add_argument("--rules", nargs="+", default=["average", "median", "krum"])
    ap.add_argument("--chunk", type=int, default=1 << 20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--net", action="store_true", help="over the wire: hgo-server and q synthetic sessions")
    ap.add_argument("--rounds", type=int, default=4, help="--net: training rounds (the first is a warm-up)")
    ap.add_argument("--procs", type=int, default=2, help="--net: client processes hosting the sessions")
    ap.add_argument("--tau", type=float, default=60.0, help="--net: the round deadline in seconds")
    ap.add_argument("--heartbeat", type=float, default=20.0, help="--net: the server's heartbeat interval, s")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--net-client", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--sink", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--base", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(one_rule(args.child, args.d, args.chunk, args.seed)))
        return
    if args.net_client:
        asyncio.run(net_sessions(args.port, args.n, args.base, args.out, args.seed, args.d))
        return
    if args.sink:
        sink(args.port, args.n, args.d, args.out)
        return
    if args.net:
        net_main(args)
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
