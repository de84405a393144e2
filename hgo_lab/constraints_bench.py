"""Measure what a really constrained device delivers per round, beside an unconstrained one.

Issue 21 (real constraints): does a CPU share of 10 % or a 1 Mbit/s uplink still yield a
useful prefix of C_k by τ (paper §3, Algorithm 1: worker i delivers the prefix it can
compute and send)? This starts an ``hgo-server`` on loopback and two ``hgo-worker``
processes with ``--throttle off`` (release as computed): ``free`` (no limits) and
``device`` (run through :func:`hgo_lab.constraints.constrain_argv` with the limits
given), waits until the free worker has delivered once (start-up), then reports over the
next ``--rounds`` rounds the mean prefix of each, the rate each delivered (coordinates per
ms, :func:`hgo_lab.constraints.delivered_rates`) and the device's prefixes round by round.

Example (root)::

    python -m hgo_lab.constraints_bench --cpu-share 0.1 --hidden 2048 --batch-size 512 --tau 300ms
    python -m hgo_lab.constraints_bench --uplink 1mbit --hidden 128 --tau 150ms --max-chunk-values 1024

Every process it started and every device it created is removed on exit.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hgo_common import roundlog

from . import constraints


def _start(argv: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OPENBLAS_NUM_THREADS": "1"}
    with log.open("wb") as fh:
        return subprocess.Popen(
            list(argv), stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


def _stop(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            with_suppress_kill(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    for p in procs:
        try:
            p.wait(max(0.05, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with_suppress_kill(p.pid, signal.SIGKILL)
            p.wait(5)


def with_suppress_kill(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _console(name: str, module: str) -> list[str]:
    exe = Path(sys.executable).parent / name
    return [str(exe)] if exe.exists() else [sys.executable, "-m", module]


def measure(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    limits = constraints.DeviceLimits.parse(args.cpu_share, args.uplink, args.downlink, args.latency)
    if not limits.any:
        raise SystemExit("give at least one of --cpu-share, --uplink, --downlink, --latency")
    rlog, port_file = out / "rounds.jsonl", out / "port"
    procs: list[subprocess.Popen[bytes]] = []
    with constraints.Lab() as lab:
        try:
            server_argv = [
                *_console("hgo-server", "hgo_server.cli"), "--bind", "127.0.0.1", "--port", "0",
                "--port-file", str(port_file), "--dataset", args.dataset, "--model", args.model,
                "--hidden", args.hidden, "--tau", args.tau, "--q", "2", "--v", "1", "--no-early-close",
                "--rounds", "1000000", "--min-workers", "2", "--eval-every", "0", "--log", str(rlog),
                "--max-chunk-values", str(args.max_chunk_values), "--evict-after", "0",
            ]  # fmt: skip
            procs.append(_start(server_argv, out / "server.log"))
            end = time.monotonic() + 60
            while not (port_file.exists() and port_file.read_text().strip().isdigit()):
                if time.monotonic() > end or procs[0].poll() is not None:
                    raise SystemExit(f"hgo-server did not start; see {out / 'server.log'}")
                time.sleep(0.1)
            port = int(port_file.read_text())
            worker = [
                *_console("hgo-worker", "hgo_worker.cli"), "--server", f"127.0.0.1:{port}",
                "--throttle", "off", "--batch-size", str(args.batch_size), "--reconnect-timeout", "120",
            ]  # fmt: skip
            procs.append(_start([*worker, "--name", "free"], out / "free.log"))
            argv = constraints.constrain_argv(lab, limits, [*worker, "--name", "device"], name="device")
            procs.append(_start(argv, out / "device.log"))
            return _collect(args, rlog, out, procs[0])
        finally:
            _stop(procs)


def _collect(
    args: argparse.Namespace, rlog: Path, out: Path, server: subprocess.Popen[bytes]
) -> dict[str, Any]:
    end = time.monotonic() + args.timeout
    ids: dict[str, int] = {}
    while len(ids) < 2:
        text = (out / "server.log").read_text(errors="replace")
        ids = {n: int(i) for i, n in re.findall(r"join worker=(\d+) name='(\w+)'", text)}
        if time.monotonic() > end or server.poll() is not None:
            raise SystemExit(f"the workers did not both join; see {out}")
        time.sleep(0.2)
    by_id = {i: n for n, i in ids.items()}
    while True:
        recs = roundlog.read(rlog) if rlog.exists() else []
        start = next(
            (
                k
                for k, r in enumerate(recs)
                if any(w["id"] == ids["free"] and w["prefix"] for w in r["workers"])
            ),
            None,
        )
        rows = [] if start is None else [r for r in recs[start:] if len(r["workers"]) == 2]
        if len(rows) >= args.rounds:
            break
        if time.monotonic() > end:
            raise SystemExit(f"fewer than {args.rounds} rounds in {args.timeout} s; see {out}")
        time.sleep(0.3)
    rows = rows[: args.rounds]
    per: dict[str, list[int]] = {"free": [], "device": []}
    rates: dict[str, list[float]] = {"free": [], "device": []}
    for r in rows:
        delivered = constraints.delivered_rates(r)
        for w in r["workers"]:
            per[by_id[w["id"]]].append(int(w["prefix"]))
            rates[by_id[w["id"]]].append(delivered.get(int(w["id"]), 0.0))
    return {
        "limits": {k: getattr(args, k) for k in constraints.LIMIT_KEYS if getattr(args, k) is not None},
        "model": f"{args.model} hidden={args.hidden} on {args.dataset}",
        "tau": args.tau,
        "batch_size": args.batch_size,
        "max_chunk_values": args.max_chunk_values,
        "rounds": len(rows),
        "mean_prefix": {k: sum(v) / len(v) for k, v in per.items()},
        "mean_rate_coords_per_ms": {k: sum(v) / len(v) for k, v in rates.items()},
        "device_prefixes": per["device"],
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m hgo_lab.constraints_bench", description=__doc__.split("\n")[0]
    )
    p.add_argument("--cpu-share", default=None)
    p.add_argument("--uplink", default=None)
    p.add_argument("--downlink", default=None)
    p.add_argument("--latency", default=None)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--model", default="mlp")
    p.add_argument("--hidden", default="512")
    p.add_argument("--tau", default="100ms")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-chunk-values", type=int, default=16384)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument(
        "--out", type=Path, default=None, help="keep the logs here (default: a temporary directory)"
    )
    args = p.parse_args(argv)
    try:
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            result = measure(args, args.out)
        else:
            with tempfile.TemporaryDirectory(prefix="hgo-constraints-") as tmp:
                result = measure(args, Path(tmp))
    except (constraints.ConstraintError, ValueError) as exc:
        print(f"constraints_bench: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
