"""``hgo-run``: a one-command local HGO cluster (server + N worker processes on loopback).

It starts ``hgo-server`` (``--port 0 --port-file``) and N ``hgo-worker`` processes, each in
its own process group (``subprocess`` spawns fresh interpreters: no fork of a process with
live gRPC state, docs/design.md §8). Hardware profiles come from ``profiles.assign(n, mix)``
(weak, average, powerful; paper §6), ``--attackers F`` of the workers (drawn as the simulator does,
the profiles) run ``--attack``. It shows progress from the server's round log, then
prints a summary (final accuracy or loss, rounds per second, mean prefix per profile) and
writes ``round_log.jsonl``, ``summary.json``, ``processes.json`` (name -> pid), the
processes' logs and a PNG of the test metric against time into ``--out``. Every process
it started is killed (process group, SIGTERM then SIGKILL) on exit, error or Ctrl-C.

The default run (``make demo`` = ``hgo-run --out runs/demo``) trains a 64-512-10 MLP
(d = 38,410) on scikit-learn's digits with 10 workers (3 weak, 4 average, 3 powerful),
τ = 100 ms, s = 32, lr = 1, 300 rounds: by the throttle a weak worker (λ ≈ 500) releases
≈ 1,560 coordinates per round (4 % of d), an average one (λ ≈ 10,000) ≈ 31,000 (81 %), a
powerful one (λ ≈ 50,000) all of them after ≈ 25 ms; the block is the 5th longest
prefix. On a loaded machine the real prefixes are lower (workers wake late, docs/design.md §3).
See docs/worker-and-cluster.md for measured figures.

Python API (used by the experiment runner, ``--mode net``)::

    from hgo_lab.cluster import ClusterConfig, run_cluster
    result = run_cluster(ClusterConfig(workers=10, rounds=200, out=Path("runs/x")))
    result.metric, result.rounds_per_s, result.mean_prefix
"""

from __future__ import annotations

from .cli import build_parser, check_server_settings, main
from .config import (
    POPULATION_DEFAULTS,
    RUN_DEFAULTS,
    SIM_ONLY,
    ClusterConfig,
    ClusterError,
    server_argv,
    server_config,
    worker_argv,
    worker_groups,
    worker_plugins,
    worker_session,
    write_server_config,
)
from .processes import Launcher, default_launcher, launch_workers, server_dim
from .run import ClusterResult, mean_prefix_by_profile, plot_metric, run_cluster

__all__ = [
    "POPULATION_DEFAULTS", "RUN_DEFAULTS", "SIM_ONLY", "ClusterConfig", "ClusterError", "ClusterResult",
    "Launcher", "build_parser", "check_server_settings", "default_launcher", "launch_workers", "main",
    "mean_prefix_by_profile", "plot_metric", "run_cluster", "server_argv", "server_config", "server_dim",
    "worker_argv", "worker_groups", "worker_plugins", "worker_session", "write_server_config",
]  # fmt: skip
