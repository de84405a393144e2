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

import argparse
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from hgo_common import profiles, roundlog
from hgo_common.errors import HGOError
from hgo_common.spec import Population, RunSpec, forms
from hgo_common.spec.build import Devices, devices
from hgo_common.spec.declare import lookup
from hgo_server import config
from hgo_server.config import ConfigError, ServerConfig

Launcher = Callable[..., "subprocess.Popen[bytes]"]


class ClusterError(HGOError, RuntimeError):
    """The cluster could not run to completion (the message names the process and its log)."""


# hgo-run's own defaults for the run specification and the population (``make demo``: a
# 64-512-10 MLP on digits, 10 workers, tau = 100 ms, lr = 1, 300 rounds). Declared here once:
# they feed the parser's help and :meth:`ClusterConfig.make`.
RUN_DEFAULTS: dict[str, Any] = {"model": "mlp", "hidden": (512,), "lr": 1.0, "rounds": 300, "tau": 100.0}
POPULATION_DEFAULTS: dict[str, Any] = {"attack": "foe", "byzantine_full": False}
# Population settings that only the simulator can honour (hgo-run has no flag for them).
SIM_ONLY = ("omniscient", "estimate_batches", "byzantine_full", "rate_model")


@dataclass
class ClusterConfig:
    """A local cluster run: the run specification, its population and the launcher's options.

    ``spec`` goes to ``hgo-server`` as its ``--config`` file (the spec itself, written by
    ``hgo_common.spec.forms``); ``population`` decides the worker processes (n, profiles or
    rates, batch size, budget policy, attackers). Build one from flat keyword arguments
    with :meth:`make` (the same names as the flags).
    """

    spec: RunSpec = field(default_factory=lambda: RunSpec(**RUN_DEFAULTS))
    population: Population = field(default_factory=lambda: Population(**POPULATION_DEFAULTS))
    attack_params: list[str] = field(default_factory=list)  # --attack-param KEY=VALUE, for the attackers
    out: Path = Path("runs/demo")
    profiles: list[str] | None = None  # explicit profile per worker (overrides the mix)
    late: int = 0  # extra workers that join once the server reached ``late_round``
    late_round: int = 0
    server_args: list[str] = field(default_factory=list)  # extra hgo-server flags, over the config
    worker_args: list[str] = field(default_factory=list)
    # The server's settings as one ServerConfig; None: the spec with this launcher's
    # min-workers and shards (:func:`server_config`).
    server: ServerConfig | None = None
    export: Path | None = None  # the trained model file (hgo-server --export); None: not written
    timeout_s: float = 900.0
    progress: bool = True
    # Device sessions per worker process (hgo-worker --fleet): 1 is one device per process,
    # as on real hardware; a lab emulating n = 100 devices on one machine packs them.
    per_process: int = 1
    # Real device constraints per profile (hgo_lab.constraints: CPU share, uplink, downlink,
    # latency); None or empty: every worker runs unconstrained on loopback.
    limits: Any = None

    @classmethod
    def make(cls, **kw: Any) -> ClusterConfig:
        """A config from flat keyword arguments: run-spec and population settings by their names
        (``workers`` and ``byzantine`` are old spellings of ``n`` and ``attackers``), the
        launcher's options by theirs. ``f`` defaults to ``attackers`` for a rule that claims
        robustness, else 0 (average tolerates nothing); None means "not set"."""
        spec_keys, pop_keys = lookup(RunSpec), lookup(Population)
        launcher = {f.name for f in dataclasses.fields(cls)} - {"spec", "population"}
        spec_kw: dict[str, Any] = dict(RUN_DEFAULTS)
        pop_kw: dict[str, Any] = dict(POPULATION_DEFAULTS)
        own: dict[str, Any] = {}
        for key, value in kw.items():
            if key in launcher:
                own[key] = value
            elif key in spec_keys:
                spec_kw[key] = value
            elif key in pop_keys or key == "byzantine":
                pop_kw["attackers" if key == "byzantine" else key] = value
            else:
                raise TypeError(f"ClusterConfig.make: unknown setting {key!r}")
        spec_kw = {k: v for k, v in spec_kw.items() if v is not None}
        pop_kw = {k: v for k, v in pop_kw.items() if v is not None}
        if "f" not in spec_kw:  # the rule tolerates the attackers it is run with, if it claims to
            from hgo_common import aggregators
            from hgo_common.spec.run import robust

            attackers = int(pop_kw.get("attackers", 0))
            try:
                claims = robust(aggregators.get(str(spec_kw.get("rule", "average"))), attackers)
            except ValueError:
                claims = True  # an unknown rule: the spec's own check names it
            spec_kw["f"] = attackers if claims else 0
        population = Population(**forms.coerce(Population, pop_kw))
        return cls(spec=RunSpec(**forms.coerce(RunSpec, spec_kw)), population=population, **own)

    # -- what the launcher reads of the population and the spec
    @property
    def workers(self) -> int:
        return self.population.n

    @property
    def byzantine(self) -> int:
        return self.population.attackers

    @property
    def rounds(self) -> int:
        return self.spec.rounds

    def validate(self) -> None:
        """Raise ValueError (SpecError) naming the first bad value."""
        pop = self.population.checked(late=self.late)
        self.spec.checked(n=pop.n)
        if not self.timeout_s > 0:
            raise ValueError(f"--timeout must be > 0 seconds, got {self.timeout_s}")
        if pop.attackers:
            from hgo_common import attacks

            try:
                attacks.get(str(pop.attack))  # built-in, package.module:Name or installed plug-in
            except ValueError as exc:
                raise ValueError(f"--attack {pop.attack!r}: {exc}") from None
            attacks.parse_params(self.attack_params)  # KEY=VALUE shape; the worker checks the keys
        if self.per_process < 1:
            raise ValueError(f"--sessions-per-process must be >= 1, got {self.per_process}")
        if self.limits is not None and self.limits.any() and self.per_process > 1:
            raise ValueError(
                f"--sessions-per-process {self.per_process} with device limits: a constrained device is one "
                "process (its own cgroup and network namespace); use --sessions-per-process 1"
            )
        if self.late < 0 or self.late_round < 0:
            raise ValueError(f"--late and --late-round must be >= 0, got {self.late}, {self.late_round}")
        if self.profiles is not None and len(self.profiles) != pop.n + self.late:
            raise ValueError(
                f"profiles lists {len(self.profiles)} values, expected one per worker ({pop.n + self.late})"
            )
        if self.profiles is None:
            self.worker_profiles()  # validates the mix
        else:
            bad = [p for p in self.profiles if p not in (*profiles.PROFILES, "custom")]
            if bad:
                raise ValueError(f"unknown profile {bad[0]!r}; expected one of {sorted(profiles.PROFILES)}")

    def worker_profiles(self) -> list[str]:
        """Profile of each worker (initial ones, then late ones)."""
        if self.profiles is not None:
            return list(self.profiles)
        mix: Any = self.population.mix
        if isinstance(mix, str) and mix not in profiles.MIXES:
            mix = profiles.parse_mix(mix)
        late = list(profiles.assign(self.late, mix)) if self.late else []
        return list(profiles.assign(self.population.n, mix)) + late

    def devices(self) -> Devices:
        """Who is who among the initial workers: the simulator's draw (``hgo_common.spec.devices``)."""
        names = self.worker_profiles()[: self.population.n]
        return devices(self.population, self.spec.seed, profile_names=names)

    def byzantine_indices(self) -> list[int]:
        """The Byzantine workers: the same draw among the n as the simulator's."""
        return [int(i) for i in np.flatnonzero(self.devices().byzantine)]


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


# ---------------------------------------------------------------------- processes


def _module_argv(console_name: str, module: str) -> list[str]:
    exe = Path(sys.executable).parent / console_name
    return [str(exe)] if exe.exists() else [sys.executable, "-m", module]


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


# ---------------------------------------------------------------------- the run


def server_config(cfg: ClusterConfig) -> ServerConfig:
    """The hgo-server settings of the run: ``cfg.server``, or the run specification itself
    with q resolved for the population.

    Training starts once every initial worker has joined (``--min-workers`` = workers),
    so the first rounds sample from the whole fleet, not from the fastest starters. Port,
    port file and round log are the launcher's (set on the command line).
    """
    if cfg.server is not None:
        return cfg.server
    n = cfg.population.n
    values = {**RunSpec.values_of(cfg.spec), "q": cfg.spec.q_for(n)}
    return config.resolve(ServerConfig(**values, min_workers=n, num_shards=n + cfg.late))


def server_argv(cfg: ClusterConfig, config_file: Path, port_file: Path, log_file: Path) -> list[str]:
    """hgo-server's command line: the run's settings in ``config_file`` (written by
    :func:`write_server_config`), the launcher's port and log, then ``cfg.server_args``."""
    return [
        *_module_argv("hgo-server", "hgo_server.cli"), "--config", str(config_file),
        "--port", "0", "--port-file", str(port_file), "--log", str(log_file),
        *(["--export", str(cfg.export)] if cfg.export is not None else []), *cfg.server_args,
    ]  # fmt: skip


def write_server_config(cfg: ClusterConfig, path: Path) -> Path:
    """Write the run's :func:`server_config` as an hgo-server ``--config`` TOML file."""
    path.write_text(config.to_toml(server_config(cfg)), encoding="utf-8")
    return path


def worker_session(cfg: ClusterConfig, i: int, profile: str) -> dict[str, Any]:
    """Worker i's own settings (an ``hgo-worker --fleet`` entry): name, profile, seed, rate, attack."""
    pop, fleet = cfg.population, cfg.devices()
    initial = i < pop.n  # late workers: their own seed and draw
    seed = fleet.seeds[i] if initial else cfg.spec.seed * 1000 + i
    sess: dict[str, Any] = {"name": f"w{i}-{profile}", "profile": profile, "seed": seed}
    if pop.rates is not None:
        sess["rate"] = float(pop.rates[i])
    elif initial:
        sess["rate"] = fleet.rates[i]
    if initial and bool(fleet.byzantine[i]):
        from hgo_common import attacks

        items = [f"{k}={v}" for k, v in pop.attack_params.items()] + list(cfg.attack_params)
        if pop.attack not in ("label-flip", "silent"):
            items = [f"n={cfg.workers + cfg.late}", f"f={cfg.byzantine}", *items]
        sess["attack"] = pop.attack
        sess["attack_params"] = attacks.parse_params(items)
    return sess


def worker_plugins(cfg: ClusterConfig) -> list[str]:
    """The plug-in model and dataset the run's spec names, which its workers must be allowed
    (``hgo-worker --allow-plugin``: a worker refuses a spec naming anything else)."""
    from hgo_common import datasets, plugins

    sc = server_config(cfg)
    model = sc.model or datasets.source(sc.dataset).default_model
    named = (("model", model), ("dataset", sc.dataset))
    return [name for kind, name in named if not plugins.is_builtin(kind, name)]


def _common_worker_argv(cfg: ClusterConfig, port: int) -> list[str]:
    return [
        *_module_argv("hgo-worker", "hgo_worker.cli"),
        "--server", f"127.0.0.1:{port}", "--batch-size", str(cfg.population.batch_size),
        "--budget-policy", cfg.population.budget_policy, "--rho", str(cfg.population.rho),
        "--reconnect-timeout", "30",
        *[arg for name in worker_plugins(cfg) for arg in ("--allow-plugin", name)],
    ]  # fmt: skip


def worker_argv(cfg: ClusterConfig, i: int, port: int, profile: str) -> list[str]:
    """One worker process for worker i (the default: one device per process)."""
    sess = worker_session(cfg, i, profile)
    argv = [*_common_worker_argv(cfg, port), "--profile", sess["profile"], "--seed", str(sess["seed"]),
            "--name", sess["name"]]  # fmt: skip
    if "rate" in sess:
        argv += ["--rate", str(sess["rate"])]
    if "attack" in sess:
        argv += ["--attack", sess["attack"]]
        for key, value in sess["attack_params"].items():
            argv += ["--attack-param", f"{key}={value}"]
    return argv + list(cfg.worker_args)


def worker_groups(cfg: ClusterConfig, ids: Sequence[int]) -> list[list[int]]:
    """Workers ``ids`` split into processes of at most ``cfg.per_process`` sessions each."""
    k = max(1, cfg.per_process)
    return [list(ids[a : a + k]) for a in range(0, len(ids), k)]


def launch_workers(
    cfg: ClusterConfig, ids: Sequence[int], port: int, profs: Sequence[str], out: Path,
    launch_one: Callable[[list[str], str], subprocess.Popen[bytes]], lab: Any = None,
) -> list[tuple[str, subprocess.Popen[bytes]]]:  # fmt: skip
    """Start workers ``ids``: one process each, or ``--fleet`` processes of ``per_process``.

    With device limits (``cfg.limits``) and a ``hgo_lab.constraints.Lab``, each worker runs
    as a real constrained device (cgroup CPU quota, its own network namespace and shaped
    link) with the emulated throttle off: it releases what its CPU and link really deliver.
    """
    started = []
    for group in worker_groups(cfg, ids):
        if cfg.per_process <= 1:
            i = group[0]
            name = f"worker-{i}"
            argv = worker_argv(cfg, i, port, profs[i])
            limits = cfg.limits.limits(profs[i]) if cfg.limits is not None else None
            if lab is not None and limits is not None and limits.any:
                from hgo_lab import constraints

                argv = [*_without_rate(argv), "--throttle", "off"]
                argv = constraints.constrain_argv(lab, limits, argv, name=name)
            started.append((name, launch_one(argv, name)))
            continue
        from hgo_worker.fleet import write_fleet

        name = f"workers-{group[0]}-{group[-1]}"
        fleet = write_fleet(out / f"{name}.fleet.json", [worker_session(cfg, i, profs[i]) for i in group])
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
    t0 = time.monotonic()
    try:
        server = launch_one(server_argv(cfg, config_file, port_file, log_file), "server")
        server_log = out / "server.log"
        port = _wait_port(port_file, server, server_log, 120.0)
        dim = server_dim(port)
        workers += launch_workers(cfg, range(cfg.workers), port, profs, out, launch_one, lab)
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
                workers += launch_workers(cfg, late_ids, port, profs, out, launch_one, lab)
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


# ---------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    """hgo-run's parser: the run specification's and the population's flags (generated from their
    declarations, with hgo-run's defaults), then the launcher's own."""
    d = ClusterConfig()
    p = argparse.ArgumentParser(
        prog="hgo-run",
        description="Run an HGO server and N worker processes on this machine, show progress, "
        "write the round log and a plot.",
    )
    spec = p.add_argument_group("the run (the same settings as hgo-server and hgo-experiment)")
    forms.add_arguments(spec, RunSpec, defaults={**RUN_DEFAULTS, "f": None},
                        help_defaults={"f": "--attackers", "q": "every worker"})  # fmt: skip
    pop = p.add_argument_group("the workers")
    forms.add_arguments(pop, Population, exclude=SIM_ONLY, defaults=POPULATION_DEFAULTS)
    own = p.add_argument_group("the launcher")
    own.add_argument("--attack-param", action="append", default=[], metavar="KEY=VALUE",
                     help="attack parameter for the Byzantine workers (repeatable), e.g. eps=10")  # fmt: skip
    own.add_argument("--sessions-per-process", type=int, default=d.per_process, metavar="K",
                     help="host K worker sessions per hgo-worker process (--fleet), to emulate a large "
                     "fleet on few cores (default 1: one process per worker)")  # fmt: skip
    own.add_argument("--late", type=int, default=0, help="extra workers joining during training (default 0)")
    own.add_argument("--late-round", type=int, default=0,
                     help="round after which the late workers start (default 0)")  # fmt: skip
    own.add_argument("--out", type=Path, default=d.out, metavar="DIR",
                     help="output directory, created if missing; a previous run's round_log.jsonl, "
                     "summary.json, plot and logs in it are replaced (default runs/demo)")  # fmt: skip
    own.add_argument("--export", nargs="?", const="", default=None, metavar="FILE",
                     help="write the trained model (.npz; hgo_common.models.load reads it) to FILE, "
                     "or to OUT/model.npz when FILE is omitted (default: not written)")  # fmt: skip
    own.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                     help="pass ARG to hgo-server (repeatable, e.g. --server-arg=--heartbeat-ms=500)")
    own.add_argument("--extra-server-args", default="", metavar="ARGS",
                     help="space-separated arguments for hgo-server (default none)")  # fmt: skip
    own.add_argument(
        "--worker-arg", action="append", default=[], metavar="ARG", help="pass ARG to every worker"
    )
    own.add_argument("--timeout", type=float, default=d.timeout_s,
                     help=f"give up (and stop every process) after this many seconds "
                     f"(default {d.timeout_s:g})")  # fmt: skip
    own.add_argument("--no-progress", action="store_true", help="do not print progress lines")
    from hgo_lab import constraints

    devices_group = p.add_argument_group(
        "real device constraints (root; docs/worker-and-cluster.md 'Real constraints'); a constrained "
        "worker runs with --throttle off"
    )
    constraints.add_run_flags(devices_group)  # type: ignore[arg-type]
    return p


def check_server_settings(cfg: ClusterConfig) -> None:
    """Validate, in this process, the hgo-server settings the run would use.

    A typo (``--rule mediam``, ``--server-arg=--tau=5h``) then fails before any process
    starts, with the server's own message; raises :class:`hgo_server.config.ConfigError`
    (or SystemExit from argparse for an unknown ``--server-arg`` flag).
    """
    srv = server_config(cfg)
    if cfg.server_args:
        config.parse_args(cfg.server_args, base=srv)


def _limit_table(a: argparse.Namespace) -> Any:
    """The device limits of hgo-run's flags (None when none is given)."""
    from hgo_lab import constraints

    values = {k: getattr(a, k) for k in constraints.LIMIT_KEYS}
    if not any(values.values()):
        return None
    table = constraints.LimitTable.from_flags(values, list(profiles.PROFILES))
    for prof in profiles.PROFILES:
        constraints.check_support(table.limits(prof))  # refuse now, naming what the host lacks
    return table


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    flat = {**forms.from_namespace(a, RunSpec), **forms.from_namespace(a, Population)}
    try:
        cfg = ClusterConfig.make(
            **flat, attack_params=a.attack_param, out=a.out, late=a.late, late_round=a.late_round,
            server_args=[*a.server_arg, *a.extra_server_args.split()], worker_args=a.worker_arg,
            timeout_s=a.timeout, progress=not a.no_progress, per_process=a.sessions_per_process,
            export=None if a.export is None else (Path(a.export) if a.export else a.out / "model.npz"),
            limits=_limit_table(a),
        )  # fmt: skip
        cfg.validate()
    except (ValueError, HGOError) as exc:  # a bad setting, or a device limit this host cannot give
        parser.error(str(exc))
    try:
        cfg.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        parser.error(f"--out {str(cfg.out)!r}: cannot create the directory ({exc.strerror or exc})")
    try:
        check_server_settings(cfg)
    except ConfigError as exc:
        parser.error(f"server setting: {exc}")
    except SystemExit as exc:  # argparse already printed hgo-server's own message (a bad --server-arg)
        return int(exc.code or 2)
    # SIGTERM (e.g. from a CI runner) unwinds like Ctrl-C, so the finally kills every child.
    signal.signal(signal.SIGTERM, _interrupt)
    profs = cfg.worker_profiles()
    counts = {p: profs[: cfg.workers].count(p) for p in dict.fromkeys(profs)}
    sp, pop = cfg.spec, cfg.population
    byz = f"; {pop.attackers} of them Byzantine, attack {pop.attack}" if pop.attackers else ""
    print(
        f"hgo-run: {cfg.workers} workers ({', '.join(f'{n} {p}' for p, n in counts.items())}{byz}), "
        f"{sp.algorithm}/{sp.rule}, tau = {sp.tau}, {sp.rounds} rounds, {sp.dataset} -> {cfg.out}",
        flush=True,
    )
    try:
        res = run_cluster(cfg)
    except KeyboardInterrupt:
        print("hgo-run: interrupted; every process stopped", file=sys.stderr)
        return 130
    except (ClusterError, ValueError) as exc:
        print(f"hgo-run: error: {exc}", file=sys.stderr)
        return 1
    prefix = ", ".join(f"{k} {v:.0f}" for k, v in res.mean_prefix.items())
    print(
        f"hgo-run: done in {res.wall_s:.1f} s: {res.rounds} rounds, {res.rounds_per_s:.1f} rounds/s, "
        f"test {res.metric_name} {res.metric:.4f}",
    )
    print(f"hgo-run: mean prefix by profile (d={res.dim}): {prefix}")
    plot = f", {res.plot.name}" if res.plot else ""
    print(f"hgo-run: wrote {res.out}/round_log.jsonl, summary.json{plot}")
    if res.model is not None:
        print(f"hgo-run: wrote the trained model {res.model} (hgo_common.models.load reads it)")
    bad = [i for i, c in enumerate(res.worker_exit_codes) if c not in (0, None)]
    if bad:
        print(f"hgo-run: warning: workers {bad} exited with codes {[res.worker_exit_codes[i] for i in bad]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
