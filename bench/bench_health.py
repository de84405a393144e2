"""What one health probe of hgo-server costs: exec probe (a Python process) vs. a gRPC call.

Starts a real hgo-server (waiting for workers, port 0) and measures

* the exec probe ``python -m hgo_server.health`` as the TLS overlay and the Docker
  HEALTHCHECK run it: ``--status`` (the HGO Status rpc, the probe before grpc.health.v1)
  and the default grpc.health.v1 Check; wall time and peak RSS of the child process;
* grpc.health.v1 ``Check`` from an already running client, as the kubelet's native gRPC
  probe does it: a new channel (TCP connection + HTTP/2 handshake) per probe, and calls on
  one long-lived channel.

Usage: python bench/bench_health.py [--repeat N]. Prints one line per figure.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

TOKEN = "bench-health-token-0123456789"


def _child(argv: list[str]) -> tuple[float, float, int]:
    """(wall seconds, peak RSS MiB, exit status) of one child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "HGO_TOKEN": TOKEN})  # fmt: skip
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - t0, usage.ru_maxrss / 1024.0, proc.returncode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=10, help="exec probes per kind (default 10)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        port_file = Path(tmp) / "port"
        server = subprocess.Popen(
            [sys.executable, "-m", "hgo_server.cli", "--port", "0", "--port-file", str(port_file),
             "--q", "2", "--min-workers", "2"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "HGO_TOKEN": TOKEN},
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while not (port_file.exists() and port_file.read_text().strip()):
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("hgo-server did not start")
                time.sleep(0.1)
            target = f"127.0.0.1:{int(port_file.read_text())}"
            probe = [sys.executable, "-m", "hgo_server.health", "--grpc", target]
            for name, argv in (("exec probe, Status rpc (before)", [*probe, "--status"]),
                               ("exec probe, grpc.health.v1 Check", probe)):  # fmt: skip
                runs = [_child(argv) for _ in range(args.repeat)]
                assert all(code == 0 for *_, code in runs), runs
                wall = statistics.median(r[0] for r in runs)
                rss = statistics.median(r[1] for r in runs)
                print(f"{name}: median {wall * 1000:.0f} ms wall, {rss:.0f} MiB peak RSS "
                      f"({args.repeat} runs)")  # fmt: skip
            request = health_pb2.HealthCheckRequest(service="hgo.v1.HGO")
            fresh = []
            for _ in range(200):
                t0 = time.perf_counter()
                with grpc.insecure_channel(target) as channel:
                    reply = health_pb2_grpc.HealthStub(channel).Check(request, timeout=5)
                fresh.append(time.perf_counter() - t0)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            print(f"grpc.health.v1 Check, new channel per probe (kubelet-style): median "
                  f"{statistics.median(fresh) * 1000:.2f} ms (200 probes)")  # fmt: skip
            with grpc.insecure_channel(target) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                stub.Check(request, timeout=5)
                t0 = time.perf_counter()
                n = 2000
                for _ in range(n):
                    stub.Check(request, timeout=5)
                per = (time.perf_counter() - t0) / n
            print(f"grpc.health.v1 Check on one channel: {per * 1e6:.0f} us per call ({n} calls)")
        finally:
            server.terminate()
            server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
