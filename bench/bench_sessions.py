"""Load: one hgo-server holding hundreds of concurrent worker sessions (docs/reliability.md).

Starts ``hgo-server`` as a process (--no-early-close, so every round lasts its full
deadline tau, as with throttled workers), then a few client processes that each host
many lightweight protocol clients (``tests.wireclient.WireClient``: answer heartbeats,
stream an all-zero gradient for each RoundTask at once). Training starts when every
session has joined. Reported:

* ``round_ms`` from the server's round log (time from task broadcast to model update):
  p50 / p90 / p99 / max, and the overshoot over tau; ``close_ms`` (broadcast to the
  deadline firing: how well the deadline itself is kept, before aggregation);
* server memory per session: (RSS with all sessions joined - RSS before the first one)
  / sessions, read from /proc/<pid>/status;
* CPU: cores used by the server and by the client processes from "all joined" to the end
  (CPU seconds from /proc/PID/stat, sampled every 0.5 s, over wall seconds).

Example (the recorded run)::

    .venv/bin/python bench/bench_sessions.py --sessions 500 --procs 4 --q 80 --tau 500 --rounds 30

``--client`` is the internal entry point of the client processes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
BIN = Path(sys.executable).parent

from benchlib import SECRET_ENV, bench_tokens, session_token  # noqa: E402  (needs the path above)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _cpu_sampler(server: int, clients: list[int]) -> Any:
    from benchlib import CpuSampler

    return CpuSampler({"server": [server], "clients": clients})


def _status(port: int, token: str | None = None) -> Any:
    import grpc

    from hgo_common.net import credentials
    from hgo_common.net.proto import hgo_pb2, hgo_pb2_grpc

    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            return hgo_pb2_grpc.HGOStub(ch).Status(
                hgo_pb2.StatusRequest(), metadata=credentials.bearer_metadata(token), timeout=5
            )
    except grpc.RpcError:
        return None


# ----------------------------------------------------------------------------- client processes


async def _clients(server: str, n: int, per_channel: int, join_batch: int, base: int = 0) -> int:
    import grpc.aio

    from hgo_common.net import credentials
    from hgo_common.net.proto import hgo_pb2_grpc
    from tests.wireclient import WireClient, channel_options

    secret = os.environ.get(SECRET_ENV)

    # one TCP connection per `per_channel` streams (a local subchannel pool stops channels
    # with the same target from sharing one connection)
    channels = [
        grpc.aio.insecure_channel(server, options=[*channel_options(), ("grpc.use_local_subchannel_pool", 1)])
        for _ in range((n + per_channel - 1) // per_channel)
    ]
    stubs = [hgo_pb2_grpc.HGOStub(ch) for ch in channels]
    clients: list[WireClient] = []

    async def join(i: int) -> WireClient:
        for attempt in range(20):
            token = session_token(secret, base + i) if secret else None
            c = WireClient(stubs[i // per_channel], credentials.bearer_metadata(token))
            try:
                await c.join(timeout=60, name=f"load-{os.getpid()}-{i}", profile="powerful")
            except Exception:  # e.g. CANCELLED when too many streams open at once: retry
                await c.close()
                await asyncio.sleep(0.2 * (attempt + 1))
                continue
            c.respond()
            return c
        raise RuntimeError(f"session {i} could not join")

    for start in range(0, n, join_batch):
        clients += await asyncio.gather(*(join(i) for i in range(start, min(n, start + join_batch))))
    print(f"client {os.getpid()}: {n} sessions joined", flush=True)
    # Until every session got Stop or its stream ended otherwise (dropped under load, or the
    # server gone): a session that never hears Stop must not keep this process waiting.
    while any(c.stop_reason is None and not c.call.done() for c in clients):
        await asyncio.sleep(0.5)
    lost = sum(c.stop_reason is None for c in clients)
    print(f"client {os.getpid()}: {n - lost} sessions stopped by the server, {lost} ended otherwise",
          flush=True)  # fmt: skip
    for c in clients:
        await c.close()
    for ch in channels:
        await ch.close()
    return 0


def client_main(args: argparse.Namespace) -> int:
    try:
        import uvloop

        return uvloop.run(_clients(args.server, args.n, args.per_channel, args.join_batch, args.base))
    except ImportError:
        return asyncio.run(_clients(args.server, args.n, args.per_channel, args.join_batch, args.base))


# ----------------------------------------------------------------------------- the benchmark


def run(
    *,
    sessions: int,
    procs: int,
    q: int,
    tau_ms: float,
    rounds: int,
    dataset: str,
    model: str | None,
    data_dir: str | None,
    workdir: Path,
    timeout_s: float = 900.0,
    server_args: Sequence[str] = (),
) -> dict[str, Any]:
    """Run one load test; returns the figures (also printed by :func:`main`)."""
    port_file = workdir / "port"
    log = workdir / "rounds.jsonl"
    argv = [
        str(BIN / "hgo-server"), "--port", "0", "--port-file", str(port_file), "--bind", "127.0.0.1",
        "--dataset", dataset, "--q", str(q), "--tau", f"{tau_ms:g}ms", "--no-early-close",
        "--rounds", str(rounds), "--min-workers", str(sessions), "--eval-every", "0", "--log", str(log),
    ]  # fmt: skip
    if model:
        argv += ["--model", model]
    if data_dir:
        argv += ["--data-dir", data_dir]
    # one identity per session: f is enforceable and the resilience limits apply as deployed
    # (many identities from one address, one session per identity)
    secret = bench_tokens(workdir / "tokens", sessions)
    argv += ["--tokens-file", str(workdir / "tokens")]
    argv += list(server_args)
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "HGO_LOG_LEVEL": "WARNING", SECRET_ENV: secret}
    children: list[subprocess.Popen[bytes]] = []
    server_out = open(workdir / "server.log", "wb")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        argv, stdout=server_out, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    try:
        t_end = time.monotonic() + 120
        while not port_file.exists():
            if server.poll() is not None or time.monotonic() > t_end:
                raise RuntimeError(f"server did not start:\n{(workdir / 'server.log').read_text()[-3000:]}")
            time.sleep(0.1)
        port = int(port_file.read_text())
        time.sleep(0.5)
        rss0 = _rss_kib(server.pid)
        per = [sessions // procs + (1 if i < sessions % procs else 0) for i in range(procs)]
        t_join = time.monotonic()
        for i, n in enumerate(per):
            out = open(workdir / f"client{i}.log", "wb")  # noqa: SIM115 - closed with the process
            children.append(
                subprocess.Popen(
                    [sys.executable, __file__, "--client", "--server", f"127.0.0.1:{port}", "--n", str(n),
                     "--base", str(sum(per[:i]))],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            )
            out.close()
        rss_joined = 0
        dim = 0
        joined_s = float("nan")
        deadline = time.monotonic() + timeout_s
        cpu = _cpu_sampler(server.pid, [c.pid for c in children])
        cpu_from = cpu_to = 0.0
        while server.poll() is None:
            if time.monotonic() > deadline:
                raise RuntimeError("load test timed out")
            st = _status(port, session_token(secret, 0))
            if st is not None and not rss_joined and st.active_sessions >= sessions:
                dim = int(st.dim)
                joined_s = time.monotonic() - t_join
                rss_joined = _rss_kib(server.pid)
                cpu_from = time.time()
            if rss_joined:
                cpu.sample()
                cpu_to = time.time()
            for c in children:
                if c.poll() not in (None, 0):
                    raise RuntimeError(f"client process exited {c.returncode}")
            time.sleep(0.5)
        if server.returncode != 0:
            raise RuntimeError(
                f"server exited {server.returncode}:\n{(workdir / 'server.log').read_text()[-3000:]}"
            )
        for c in children:
            c.wait(60)
    finally:
        for p in [server, *children]:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, 9)
                p.wait(10)
        server_out.close()
    from hgo_common import roundlog

    recs = roundlog.read(log)
    round_ms = np.array([r["round_ms"] for r in recs], dtype=float)
    close_ms = np.array([r.get("close_ms", np.nan) for r in recs], dtype=float)
    over = round_ms - tau_ms
    cores = cpu.window(cpu_from, cpu_to)
    return {
        "sessions": sessions,
        "client_procs": procs,
        "q": q,
        "tau_ms": tau_ms,
        "rounds": len(recs),
        "d": dim,
        "join_all_s": round(joined_s, 2),
        "sampled_min": int(min(r["sampled"] for r in recs)),
        "responded_min": int(min(r["responded"] for r in recs)),
        "quorum_rounds": int(sum(bool(r["quorum"]) for r in recs)),
        "round_ms_p50": round(float(np.percentile(round_ms, 50)), 1),
        "round_ms_p90": round(float(np.percentile(round_ms, 90)), 1),
        "round_ms_p99": round(float(np.percentile(round_ms, 99)), 1),
        "round_ms_max": round(float(round_ms.max()), 1),
        "close_ms_p50": round(float(np.nanpercentile(close_ms, 50)), 1),
        "close_ms_p99": round(float(np.nanpercentile(close_ms, 99)), 1),
        "close_ms_max": round(float(np.nanmax(close_ms)), 1),
        "overshoot_ms_p50": round(float(np.percentile(over, 50)), 1),
        "overshoot_ms_max": round(float(over.max()), 1),
        "server_rss_before_mib": round(rss0 / 1024, 1),
        "server_rss_joined_mib": round(rss_joined / 1024, 1),
        "server_kib_per_session": round((rss_joined - rss0) / max(1, sessions), 1),
        # cores used (CPU s / wall s, /proc/PID/stat) from "all joined" to the end
        "server_cores": round(cores["server"], 2),
        "client_cores": round(cores["clients"], 2),
        "loadavg_end": round(os.getloadavg()[0], 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", type=int, default=500)
    p.add_argument("--procs", type=int, default=4, help="client processes hosting the sessions")
    p.add_argument("--q", type=int, default=80)
    p.add_argument("--tau", type=float, default=500.0, help="round deadline in ms")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--model", default="mlp")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                   help="pass ARG to hgo-server (repeatable: --server-arg=--heartbeat-ms=5s)")  # fmt: skip
    # client-process mode
    p.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--server", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--base", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--per-channel", type=int, default=50, help=argparse.SUPPRESS)
    p.add_argument("--join-batch", type=int, default=50, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.client:
        return client_main(args)
    with tempfile.TemporaryDirectory(prefix="hgo-bench-sessions-") as tmp:
        res = run(
            sessions=args.sessions,
            procs=args.procs,
            q=args.q,
            tau_ms=args.tau,
            rounds=args.rounds,
            dataset=args.dataset,
            model=args.model,
            data_dir=args.data_dir,
            workdir=Path(tmp),
            server_args=args.server_arg,
        )
    print(json.dumps(res, indent=1))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
