"""``hgo-run``'s command line: the run specification's and the population's flags generated
from their declarations, the launcher's own, and the device constraints.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hgo_common import profiles
from hgo_common.errors import HGOError
from hgo_common.spec import Population, RunSpec, forms
from hgo_server import config
from hgo_server.config import ConfigError

from .config import POPULATION_DEFAULTS, RUN_DEFAULTS, SIM_ONLY, ClusterConfig, ClusterError, server_config
from .run import run_cluster

Launcher = Callable[..., "subprocess.Popen[bytes]"]


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
    own.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="pass ARG to hgo-server (repeatable, e.g. --server-arg=--heartbeat-ms=500)",
    )
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
