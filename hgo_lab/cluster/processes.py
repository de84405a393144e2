"""Starting, watching and stopping the processes of a local cluster: each in its own process
group, started as a fresh interpreter (never a fork of a process with live gRPC state,
docs/design.md §8), killed by group on exit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .config import (
    ClusterConfig,
    ClusterError,
    _common_worker_argv,
    worker_argv,
    worker_groups,
    worker_session,
)

Launcher = Callable[..., "subprocess.Popen[bytes]"]


def default_launcher(workdir: Path) -> Launcher:
    """Start each process in its own session (process group), output to ``workdir/NAME.log``."""

    def start(
        argv: Sequence[str], *, name: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OPENBLAS_NUM_THREADS": "1"}
        if env:
            full_env.update(env)
        with open(workdir / f"{name}.log", "wb") as fh:
            return subprocess.Popen(
                list(argv), stdout=fh, stderr=subprocess.STDOUT, env=full_env, start_new_session=True
            )

    return start


def _kill_all(procs: Sequence[subprocess.Popen[bytes]], grace_s: float = 5.0) -> None:
    """SIGTERM every process group, wait up to ``grace_s``, then SIGKILL what is left."""
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.05, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGKILL)  # children of the group too, even if the leader exited
        except (ProcessLookupError, PermissionError):
            pass
        if p.poll() is None:
            p.wait(timeout=5)


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def server_dim(port: int, timeout_s: float = 10.0) -> int | None:
    """d of the model the server at 127.0.0.1:``port`` trains, from its ``Status`` reply
    (None when it does not answer, e.g. it requires a token)."""
    import grpc

    from hgo_common.net.proto import hgo_pb2, hgo_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = hgo_pb2_grpc.HGOStub(channel).Status(hgo_pb2.StatusRequest(), timeout=timeout_s)
        except grpc.RpcError:
            return None
    return int(reply.dim) or None


def _wait_port(port_file: Path, server: subprocess.Popen[bytes], log_path: Path, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if port_file.exists():
            text = port_file.read_text().strip()
            if text.isdigit():
                return int(text)
        if server.poll() is not None:
            raise ClusterError(
                f"hgo-server exited with code {server.returncode} before serving; "
                f"{log_path}:\n{_tail(log_path)}"
            )
        time.sleep(0.05)
    raise ClusterError(
        f"hgo-server did not write its port within {timeout_s} s; {log_path}:\n{_tail(log_path)}"
    )


#: hgo-worker exit codes that no waiting can fix: bad command line, rejected by the server.
_FATAL_WORKER_CODES = {2: "bad command line", 3: "rejected by the server"}


def _check_workers(
    workers: Sequence[tuple[str, subprocess.Popen[bytes]]], out: Path, *, late_pending: bool
) -> None:
    """Fail fast while the server still runs but the workers cannot train.

    A worker that exits 2 (bad flags, e.g. an unknown attack parameter) or 3 (bad token)
    would leave the server waiting for ``--min-workers`` until ``--timeout``; so would
    every worker having exited without the server's "done".
    """
    for name, w in workers:
        code = w.poll()
        if code in _FATAL_WORKER_CODES:
            log = out / f"{name}.log"
            raise ClusterError(
                f"{name} exited with code {code} ({_FATAL_WORKER_CODES[code]}); {log}:\n{_tail(log)}"
            )
    codes = [w.poll() for _, w in workers]
    # Exit 0 means the server said done: it is about to exit too, no error.
    if workers and not late_pending and None not in codes and 0 not in codes:
        log = out / f"{workers[0][0]}.log"
        raise ClusterError(
            f"every worker exited (codes {codes}) while the server still waits; {log}:\n{_tail(log)}"
        )


def launch_workers(
    cfg: ClusterConfig, ids: Sequence[int], port: int, profs: Sequence[str], out: Path,
    launch_one: Callable[[list[str], str], subprocess.Popen[bytes]], lab: Any = None,
    token_files: Sequence[Path] | None = None,
) -> list[tuple[str, subprocess.Popen[bytes]]]:  # fmt: skip
    """Start workers ``ids``: one process each, or ``--fleet`` processes of ``per_process``.

    With device limits (``cfg.limits``) and a ``hgo_lab.constraints.Lab``, each worker runs
    as a real constrained device (cgroup CPU quota, its own network namespace and shaped
    link) with the emulated throttle off: it releases what its CPU and link really deliver.
    ``token_files[i]``: worker i's ``--token-file`` (its identity pins its data shard).
    """
    started = []
    devices = cfg.devices()  # who is who: drawn once for every session below
    for group in worker_groups(cfg, ids):
        if cfg.per_process <= 1:
            i = group[0]
            name = f"worker-{i}"
            token = token_files[i] if token_files else None
            argv = worker_argv(cfg, i, port, profs[i], devices, token)
            limits = cfg.limits.limits(profs[i]) if cfg.limits is not None else None
            if lab is not None and limits is not None and limits.any:
                from hgo_lab import constraints

                argv = [*_without_rate(argv), "--throttle", "off"]
                argv = constraints.constrain_argv(lab, limits, argv, name=name)
            started.append((name, launch_one(argv, name)))
            continue
        from hgo_worker.fleet import write_fleet

        name = f"workers-{group[0]}-{group[-1]}"
        sessions = [worker_session(cfg, i, profs[i], devices) for i in group]
        fleet = write_fleet(out / f"{name}.fleet.json", sessions)
        argv = [*_common_worker_argv(cfg, port), "--fleet", str(fleet), *cfg.worker_args]
        started.append((name, launch_one(argv, name)))
    return started


def _without_rate(argv: list[str]) -> list[str]:
    """``argv`` less ``--rate X`` (a really constrained device has no emulated rate)."""
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a == "--rate":
            skip = True
        else:
            out.append(a)
    return out
