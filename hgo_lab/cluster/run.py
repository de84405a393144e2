"""One local cluster run to completion (:func:`run_cluster`): progress from the server's round
log, the result and its summary, the metric plot.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from hgo_common import roundlog

from .config import (
    ClusterConfig,
    ClusterError,
    pins_shards,
    server_argv,
    write_server_config,
    write_shard_tokens,
)
from .processes import (
    _check_workers,
    _kill_all,
    _tail,
    _wait_port,
    default_launcher,
    launch_workers,
    server_dim,
)

Launcher = Callable[..., "subprocess.Popen[bytes]"]


@dataclass
class ClusterResult:
    """What a finished run reports; ``records`` is the server's round log."""

    out: Path
    metric_name: str
    metric: float
    rounds: int
    wall_s: float
    rounds_per_s: float
    mean_prefix: dict[str, float]
    dim: int | None
    records: list[dict[str, Any]]
    worker_exit_codes: list[int | None]
    plot: Path | None
    model: Path | None = None  # the exported model (--export), loadable with hgo_common.models.load

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("records")
        d["out"] = str(self.out)
        d["plot"] = str(self.plot) if self.plot else None
        d["model"] = str(self.model) if self.model else None
        return d


class _Progress:
    """Plain-text progress: redrawn with \\r on a TTY, one line per evaluation otherwise."""

    def __init__(self, total: int, stream: IO[str], enabled: bool) -> None:
        self.total, self.stream, self.enabled = total, stream, enabled
        self.tty = enabled and stream.isatty()
        self.last_eval = -1

    def update(self, rec: dict[str, Any]) -> None:
        if not self.enabled:
            return
        k = int(rec["round"]) + 1
        metric = _metric_of(rec)
        if self.tty:
            width = 30
            filled = int(width * k / max(1, self.total))
            text = f"[{'#' * filled}{'.' * (width - filled)}] round {k}/{self.total} t={rec['t']:.1f}s"
            if metric is not None:
                text += f" {metric[0]}={metric[1]:.4f}"
            self.stream.write("\r" + text)
            self.stream.flush()
        elif metric is not None and k != self.last_eval:
            self.last_eval = k
            self.stream.write(f"round {k}/{self.total} t={rec['t']:.1f}s {metric[0]}={metric[1]:.4f}\n")
            self.stream.flush()

    def done(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _metric_of(rec: dict[str, Any]) -> tuple[str, float] | None:
    for key in ("accuracy", "loss"):
        if rec.get(key) is not None:
            return key, float(rec[key])
    return None


def mean_prefix_by_profile(records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Mean prefix length per profile over every sampled worker of every round.

    Byzantine workers are reported under ``"byzantine"``, not under their profile.
    """
    sums: dict[str, list[float]] = {}
    for rec in records:
        for w in rec.get("workers", []):
            key = "byzantine" if w.get("byzantine") else str(w.get("profile"))
            acc = sums.setdefault(key, [0.0, 0.0])
            acc[0] += float(w["prefix"])
            acc[1] += 1
    return {k: v[0] / v[1] for k, v in sorted(sums.items()) if v[1]}


def plot_metric(records: Sequence[dict[str, Any]], path: Path, title: str) -> Path | None:
    """PNG of the test metric against wall time (None when no round was evaluated, or
    matplotlib, the ``lab`` extra, is not installed)."""
    from hgo_lab import plots

    if not any(_metric_of(r) is not None for r in records) or not plots.available():
        return None
    run = plots.series_from_records(records, label="hgo-run")
    plots.plot_metric([run], path, title=title)
    return path


def run_cluster(
    cfg: ClusterConfig, *, start: Launcher | None = None, stream: IO[str] | None = None
) -> ClusterResult:
    """Run a local cluster to completion and return its result.

    Parameters
    ----------
    cfg : ClusterConfig
    start : callable, optional
        ``start(argv, *, name) -> Popen`` launching one process in its own process group
        (tests pass their ``procs.start``); default: ``default_launcher(cfg.out)``.
    stream : text stream, optional
        Where progress goes (default stderr).

    Raises
    ------
    ClusterError
        The server failed or the run exceeded ``cfg.timeout_s``.
    """
    cfg.validate()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    stream = stream or sys.stderr
    launch = start or default_launcher(out)
    port_file, log_file = out / "server.port", out / "round_log.jsonl"
    config_file = write_server_config(cfg, out / "server.toml")
    for stale in (port_file, log_file, *([cfg.export] if cfg.export is not None else [])):
        stale.unlink(missing_ok=True)
    started: list[subprocess.Popen[bytes]] = []
    workers: list[tuple[str, subprocess.Popen[bytes]]] = []
    pids: dict[str, int] = {}
    pid_file = out / "processes.json"

    def launch_one(argv: list[str], name: str) -> subprocess.Popen[bytes]:
        proc = launch(argv, name=name)
        started.append(proc)
        pids[name] = proc.pid
        pid_file.write_text(json.dumps(pids, indent=1) + "\n")  # for operators (and the cleanup test)
        return proc

    profs = cfg.worker_profiles()
    progress = _Progress(cfg.rounds, stream, cfg.progress)
    lab = None
    if cfg.limits is not None and cfg.limits.any():
        from hgo_lab import constraints

        lab = constraints.Lab()  # removed in the finally: cgroups, namespaces, qdiscs, relays
    token_files: list[Path] | None = None
    s_argv = server_argv(cfg, config_file, port_file, log_file)
    if pins_shards(cfg):
        tokens_file, token_files = write_shard_tokens(cfg, out)
        s_argv += ["--tokens-file", str(tokens_file)]
    t0 = time.monotonic()
    try:
        server = launch_one(s_argv, "server")
        server_log = out / "server.log"
        port = _wait_port(port_file, server, server_log, 120.0)
        dim = server_dim(port)  # None when the server requires a token (pinned shards)
        workers += launch_workers(cfg, range(cfg.workers), port, profs, out, launch_one, lab, token_files)
        records: list[dict[str, Any]] = []
        late_started = cfg.late == 0
        while True:
            if log_file.exists():
                new = roundlog.read(log_file)
                for rec in new[len(records) :]:
                    progress.update(rec)
                records = new
            if not late_started and records and int(records[-1]["round"]) + 1 >= cfg.late_round:
                late_ids = range(cfg.workers, cfg.workers + cfg.late)
                workers += launch_workers(cfg, late_ids, port, profs, out, launch_one, lab, token_files)
                late_started = True
            if server.poll() is not None:
                break
            _check_workers(workers, out, late_pending=not late_started)
            if time.monotonic() - t0 > cfg.timeout_s:
                raise ClusterError(f"the run exceeded {cfg.timeout_s} s; {server_log}:\n{_tail(server_log)}")
            time.sleep(0.1)
        progress.done()
        if server.returncode != 0:
            raise ClusterError(
                f"hgo-server exited with code {server.returncode}; {server_log}:\n{_tail(server_log)}"
            )
        records = roundlog.read(log_file) if log_file.exists() else []
        # Workers leave on Stop{done}; give them a moment, the finally kills stragglers.
        deadline = time.monotonic() + 10.0
        for _, w in workers:
            try:
                w.wait(timeout=max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        codes = [w.poll() for _, w in workers]
    finally:
        _kill_all(started)
        if lab is not None:
            lab.close()
    wall = time.monotonic() - t0
    evals = [m for r in records if (m := _metric_of(r)) is not None]
    metric_name, metric = evals[-1] if evals else ("accuracy", math.nan)
    t_last = float(records[-1]["t"]) if records else 0.0
    sp = cfg.spec
    title = f"{sp.algorithm} {sp.rule} on {sp.dataset}: {cfg.workers} workers, tau = {sp.tau}"
    result = ClusterResult(
        out=out,
        metric_name=metric_name,
        metric=metric,
        rounds=len(records),
        wall_s=wall,
        rounds_per_s=len(records) / t_last if t_last > 0 else math.nan,
        mean_prefix=mean_prefix_by_profile(records),
        dim=dim,
        records=records,
        worker_exit_codes=codes,
        plot=plot_metric(records, out / f"{metric_name}.png", title),
        model=cfg.export if cfg.export is not None and Path(cfg.export).is_file() else None,
    )
    (out / "summary.json").write_text(json.dumps(result.summary(), indent=2, default=str) + "\n")
    return result
