"""Shared pieces of the networked benchmarks (bench_network.py, bench_deadline.py).

* process handling: :func:`spawn` (own process group), :func:`killall` (SIGKILL to each
  group), :func:`wait_file`;
* :class:`CpuSampler`: CPU seconds (user + system, from ``/proc/PID/stat``) of the server
  and the client processes over a wall-clock window, so that server cost and client cost
  are reported apart on a machine where both share the cores;
* the bare grpc.aio reference (:func:`raw_server`, :func:`raw_clients`, :func:`run_raw`):
  a generic bytes-in/bytes-out bidi stream moving the same bytes as an HGO round;
* HGO client processes (:func:`hgo_clients`): ``hgo_worker.client.Worker`` sessions on
  one uvloop loop, each recording when it got each task and queued its first chunk;
* :func:`server_t0`, :func:`traces`, :func:`pct`;
* authenticated sessions (:func:`bench_tokens`, :func:`session_token`): a tokens file with
  one identity per session, as a deployment that enforces f has; the client processes
  learn the run's secret from ``$HGO_BENCH_SECRET``, never from their command line.

The client processes are this file run as a script (``--role raw-server | raw-client |
hgo-client``); nothing here is collected by pytest.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
ME = Path(__file__).resolve()

from hgo_common.wire import DEFAULT_MAX_CHUNK_VALUES  # noqa: E402 (after the sys.path set-up)

CHUNK = DEFAULT_MAX_CHUNK_VALUES  # values per gradient chunk, as the worker sends them
RAW_METHOD = "/bench.Raw/Stream"
OPTIONS = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
CLK_TCK = os.sysconf("SC_CLK_TCK")
SECRET_ENV = "HGO_BENCH_SECRET"


# ---------------------------------------------------------------------- identities


def session_token(secret: str, i: int) -> str:
    """The bearer token of session ``i`` (identity ``bench-i``) in a run with ``secret``."""
    return f"bench-{i}-{secret}"


def bench_tokens(path: Path, n: int) -> str:
    """Write a tokens file with identities ``bench-0 .. bench-{n-1}`` to ``path``; returns the
    run's secret (put it in ``$HGO_BENCH_SECRET`` of the client processes)."""
    import secrets

    secret = secrets.token_hex(8)  # tokens of 24+ bytes: the server's 16-byte rule holds
    path.write_text("".join(f"bench-{i} {session_token(secret, i)}\n" for i in range(n)))
    path.chmod(0o600)
    return secret


def loop_runner() -> asyncio.Runner:
    try:
        import uvloop

        return asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        return asyncio.Runner()


def pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else float("nan")


# ---------------------------------------------------------------------- processes


def spawn(argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own process group, output to ``log``."""
    with open(log, "wb") as fh:
        return subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, env=env)


def killall(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    """SIGKILL the process group of every process still running, and reap them all."""
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        p.wait()


def wait_file(path: Path, procs: Sequence[subprocess.Popen[bytes]], timeout: float = 120) -> str:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        if any(p.poll() not in (None, 0) for p in procs):
            raise RuntimeError(f"a process failed before {path.name} appeared")
        time.sleep(0.05)
    raise RuntimeError(f"{path} did not appear within {timeout} s")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` (its threads included), or None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "; utime, stime are 14, 15
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class CpuSampler:
    """Samples the CPU seconds of named groups of processes; :meth:`window` differences them.

    Call :meth:`sample` often (every ~0.1 s) while the processes run; a window's figures
    come from the samples that bracket it, so they can stretch it by one sampling period
    at each end.
    """

    def __init__(self, groups: dict[str, Sequence[int]]) -> None:
        self.groups = {k: list(v) for k, v in groups.items()}
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._last: dict[int, float] = {}

    def sample(self) -> None:
        now = time.time()
        row: dict[str, float] = {}
        for name, pids in self.groups.items():
            total = 0.0
            for pid in pids:
                c = cpu_seconds(pid)
                if c is not None:
                    self._last[pid] = c
                total += self._last.get(pid, 0.0)
            row[name] = total
        self.samples.append((now, row))

    def window(self, t_a: float, t_b: float) -> dict[str, float]:
        """Cores used by each group between wall times ``t_a`` and ``t_b`` (CPU s / wall s)."""
        if len(self.samples) < 2:
            return {k: float("nan") for k in self.groups}
        times = np.array([s[0] for s in self.samples])
        # the samples that bracket the window (the last at or before t_a, the first at or after t_b)
        ia = max(0, int(np.searchsorted(times, t_a, side="right")) - 1)
        ib = min(len(times) - 1, int(np.searchsorted(times, t_b, side="left")))
        if ib <= ia:
            return {k: float("nan") for k in self.groups}
        wall = self.samples[ib][0] - self.samples[ia][0]
        out = {k: (self.samples[ib][1][k] - self.samples[ia][1][k]) / wall for k in self.groups}
        out["wall_s"] = wall
        return out


def server_t0(server_log: Path, d: int) -> float:
    """Wall time when training started, from the server's ``training:`` log line (±1 ms)."""
    text = server_log.read_text()
    line = next((ln for ln in text.splitlines() if "training:" in ln), None)
    if line is None:
        raise RuntimeError(f"no 'training:' line in {server_log}:\n{text[-2000:]}")
    if f"d={d}" not in line:
        raise RuntimeError(f"server did not train d={d}: {line}")
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def traces(files: Sequence[Path]) -> dict[str, dict[int, list[float]]]:
    """The client processes' traces merged: kind ("task" | "chunk") -> round -> wall times."""
    out: dict[str, dict[int, list[float]]] = {"task": {}, "chunk": {}}
    for f in files:
        for kind, rnd, t in json.loads(f.read_text()):
            out[kind].setdefault(int(rnd), []).append(float(t))
    return out


# ---------------------------------------------------------------------- raw reference


async def raw_server(port_file: Path, out: Path, streams: int, rounds: int, d: int) -> None:
    import grpc

    queues: list[asyncio.Queue[bytes | None]] = []
    got: dict[int, int] = {}
    done_evt: dict[int, asyncio.Event] = {}
    all_in = asyncio.Event()
    need = streams * d * 4

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
    weights = np.zeros(d, dtype=np.float32).tobytes()
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


async def raw_clients(port: int, n: int, out: Path, d: int) -> None:
    import grpc

    trace: list[tuple[str, int, float]] = []
    grad = np.ones(d, dtype=np.float32)
    pieces = [grad[a : a + CHUNK].tobytes() for a in range(0, d, CHUNK)]

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


def run_raw(work: Path, q: int, procs: int, rounds: int, d: int) -> dict[str, float]:
    """The reference: q streams over ``procs`` client processes; medians over rounds 2.."""
    port_file, res = work / "raw.port", work / "raw.json"
    port_file.unlink(missing_ok=True)  # a stale port from an earlier run would mislead the clients
    me = [sys.executable, str(ME)]
    started: list[subprocess.Popen[bytes]] = []
    try:
        argv = [*me, "--role", "raw-server", "--port-file", str(port_file), "--out", str(res),
                "--q", str(q), "--rounds", str(rounds), "--d", str(d)]  # fmt: skip
        srv = spawn(argv, work / "raw-server.log")
        started.append(srv)
        port = wait_file(port_file, started)
        outs = [work / f"raw-client-{i}.json" for i in range(procs)]
        per = split(q, procs)
        for i in range(procs):
            argv = [*me, "--role", "raw-client", "--port", port, "--sessions", str(per[i]),
                    "--out", str(outs[i]), "--d", str(d)]  # fmt: skip
            started.append(spawn(argv, work / f"raw-client-{i}.log"))
        srv.wait(timeout=300)
        for p in started[1:]:
            p.wait(timeout=30)
        rows = json.loads(res.read_text())
        tr = traces(outs)
    finally:
        killall(started)
    bcast, ingest = [], []
    for r in rows[2:]:  # the first rounds warm the connections up
        k = r["round"]
        bcast.append(max(tr["task"][k]) - r["t_b"])
        ingest.append(r["bytes"] / (r["t_last"] - min(tr["chunk"][k])))
    return {
        "broadcast_ms": 1000 * float(np.median(bcast)),
        "ingest_MBps": float(np.median(ingest)) / 1e6,
        "round_ms": 1000 * float(np.median([r["t_last"] - r["t_b"] for r in rows[2:]])),
    }


def split(n: int, parts: int) -> list[int]:
    """``n`` items over ``parts`` as evenly as possible (the first ones get the remainder)."""
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


# ---------------------------------------------------------------------- HGO clients


def stub_gradients() -> None:
    """Replace back-propagation by a constant vector (transport measurements)."""
    from hgo_common import local as compute_mod

    def ensure(self: Any, n_: int) -> int:
        if self.computed < self.limit:
            self.values[:] = 1e-3
            self.computed = self.limit
        return int(self.computed)

    compute_mod.RoundGradient.ensure = ensure  # type: ignore[method-assign]


async def hgo_clients(port: int, n: int, base: int, out: Path, compute: str, profiles: Sequence[str],
                      rate: float | None, data_dir: str | None) -> None:  # fmt: skip
    """``n`` Worker sessions (seeds ``base + i``; profile ``profiles[i]``; ``rate`` None =
    drawn from the profile, 0 = unthrottled) on this process's loop; writes their traces."""
    from hgo_worker.client import Worker, WorkerConfig

    secret = os.environ.get(SECRET_ENV)
    if compute == "stub":
        stub_gradients()
    workers = []
    for i in range(n):
        cfg = WorkerConfig(
            server=f"127.0.0.1:{port}", profile=profiles[i % len(profiles)], rate=rate, batch_size=32,
            seed=base + i, name=f"bench-{base + i}", reconnect_timeout=5.0,
            data_dir=Path(data_dir) if data_dir else None,
            token=session_token(secret, base + i) if secret else None,
        )  # fmt: skip
        w = Worker(cfg)
        w.trace = []
        workers.append(w)
    await asyncio.gather(*(w.run() for w in workers))
    out.write_text(json.dumps([ev for w in workers for ev in (w.trace or [])]))


def hgo_client_argv(port: str | int, n: int, base: int, out: Path, *, compute: str = "stub",
                    profiles: Sequence[str] = ("powerful",), rate: float | None = 0.0,
                    data_dir: str | None = None) -> list[str]:  # fmt: skip
    """The command line of one HGO client process (this file, ``--role hgo-client``)."""
    argv = [sys.executable, str(ME), "--role", "hgo-client", "--port", str(port), "--sessions", str(n),
            "--base", str(base), "--compute", compute, "--out", str(out),
            "--profiles", ",".join(profiles)]  # fmt: skip
    if rate is not None:
        argv += ["--rate", str(rate)]
    if data_dir:
        argv += ["--data-dir", data_dir]
    return argv


def main() -> int:
    p = argparse.ArgumentParser(description="internal: the benchmarks' helper processes")
    p.add_argument("--role", required=True, choices=["raw-server", "raw-client", "hgo-client"])
    p.add_argument("--q", type=int, default=80)
    p.add_argument("--d", type=int, default=23_860)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--port-file", type=Path)
    p.add_argument("--port", type=int)
    p.add_argument("--sessions", type=int)
    p.add_argument("--base", type=int, default=0)
    p.add_argument("--compute", default="stub", choices=["stub", "real"])
    p.add_argument("--profiles", default="powerful")
    p.add_argument("--rate", type=float, default=None)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    with loop_runner() as runner:
        if a.role == "raw-server":
            runner.run(raw_server(a.port_file, a.out, a.q, a.rounds, a.d))
        elif a.role == "raw-client":
            runner.run(raw_clients(a.port, a.sessions, a.out, a.d))
        else:
            coro = hgo_clients(a.port, a.sessions, a.base, a.out, a.compute, a.profiles.split(","), a.rate,
                               a.data_dir)  # fmt: skip
            if os.environ.get("BENCH_PROFILE") and a.base == 0:  # where does a client's time go?
                import cProfile

                with cProfile.Profile() as prof:
                    runner.run(coro)
                prof.dump_stats(str(a.out) + ".prof")
            else:
                runner.run(coro)
    return 0


if __name__ == "__main__":
    sys.exit(main())
