"""``hgo-worker``: a throttled, streaming HGO worker process (docs/protocol.md "Worker CLI").

Example::

    hgo-worker --server 127.0.0.1:50051 --profile weak
    hgo-worker --server 127.0.0.1:50051 --rate 0 --attack foe --attack-param eps=10

Exit codes: 0 the server said training is done; 1 gave up reconnecting after
``--reconnect-timeout`` seconds; 2 bad command line, or ``--data PATH`` that cannot be
read or that the server refused at join (it does not fit the run's model: the message
names both values), or ``--shard i/n`` and the worker cannot load its own shard (files
missing from ``--data-dir``, a dataset error), or the
worker refuses what the server sent (a model or dataset that is neither built in nor
``--allow-plugin``, a size over its limits); 3 rejected by the server (bad token,
protocol violation).
"""

from __future__ import annotations

import os

# One BLAS thread per worker: several workers share the cores, and two OpenBLAS threads
# collapse as soon as another process is busy (docs/design.md §8). Must precede numpy's import.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import asyncio
import dataclasses
import logging
import math
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from hgo_common import attacks
from hgo_common.datasets import local
from hgo_common.net import credentials
from hgo_common.spec import forms
from hgo_common.spec.run import Compute

from . import checks, fleet, pacing
from .client import Worker, WorkerConfig


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--rate must be a number (0 = unthrottled), got {text!r}") from None
    if math.isnan(value) or value < 0:
        raise argparse.ArgumentTypeError(f"--rate must be >= 0 (0 = unthrottled), got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hgo-worker",
        description="HGO worker: joins a server, computes gradients in C_k order and streams the prefix "
        "its compute rate allows.",
    )
    p.add_argument("--server", required=True, help="server address HOST:PORT")
    p.add_argument(
        "--profile",
        default=None,
        help="hardware profile weak|average|powerful: the rate is drawn from its range (paper §6); "
        "default average, or custom when --rate is given",
    )
    p.add_argument(
        "--rate",
        type=_rate,
        default=None,
        help="compute rate lambda_i in partial derivatives per ms per data point (overrides the profile's "
        "draw; 0 = unthrottled; default: drawn from --profile)",
    )
    p.add_argument(
        "--throttle",
        choices=pacing.THROTTLE_MODES,
        default="on",
        help="on: release no faster than the rate lambda_i (emulated device); off: release each piece as "
        "soon as it is computed (a really constrained device, e.g. under a CPU quota) (default on)",
    )
    # --batch-size, --budget-policy, --rho: declared once with the population's (hgo_common.spec.Compute)
    forms.add_arguments(p, Compute)
    p.add_argument(
        "--attack",
        metavar="ATTACK",
        default=None,
        help=f"behave as a Byzantine worker with this attack: {', '.join(attacks.names())}, "
        "a package.module:Name reference or an installed plug-in (default: honest)",
    )
    p.add_argument(
        "--byzantine",
        dest="old_byzantine",
        metavar="ATTACK",
        default=None,
        help="old spelling of --attack (deprecated: 'byzantine' names a count in hgo-run)",
    )
    p.add_argument(
        "--attack-param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="attack parameter (repeatable); worker-level: full=1 (send all d at once), "
        "estimates=M, n=N, f=F",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of the rate draw and mini-batches, in [0, 2**32) (default: random)",
    )
    p.add_argument(
        "--token",
        default=None,
        help="bearer token (visible in ps; prefer --token-file or $HGO_TOKEN) (default: $HGO_TOKEN, "
        "else none)",
    )
    p.add_argument(
        "--token-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="read the bearer token from FILE (one line) instead of --token / $HGO_TOKEN",
    )
    p.add_argument(
        "--shard",
        default="auto",
        metavar="auto|i/n",
        help="auto (the server sends the shard) or i/n (load it here) (default auto)",
    )
    p.add_argument(
        "--data-dir", type=Path, default=None, metavar="DIR", help="dataset directory for --shard i/n"
    )
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        metavar="PATH",
        help="train on this device's own files (a file or a directory): the server sends no shard, only "
        "w_k and C_k, and checks at join that the data fits its model (default: the server's shard)",
    )
    p.add_argument(
        "--data-format",
        default="auto",
        metavar="FORMAT",
        help=f"format of --data: {', '.join(local.FORMATS)} (detected from the path), or a dataset plug-in "
        "(package.module:Name or an installed plug-in's name) whose reader reads PATH (default auto)",
    )
    p.add_argument(
        "--label-column",
        default=None,
        metavar="NAME|INDEX",
        help="--data csv: the label column, a header name or a 0-based index (negative from the end) "
        f"(default: the column named {'/'.join(local.LABEL_NAMES)}, else the last)",
    )
    p.add_argument(
        "--scaling",
        choices=local.SCALINGS,
        default="auto",
        help="--data features: auto (standardize tabular data on this device's rows; images stay in [0, 1]), "
        "standardize, or none (files already scaled alike on every device) (default auto)",
    )
    p.add_argument(
        "--metrics-port", type=int, default=None, help="serve Prometheus /metrics on this port (default: off)"
    )
    p.add_argument(
        "--metrics-bind",
        default="127.0.0.1",
        metavar="ADDR",
        help="address of the metrics endpoint (default 127.0.0.1: this host only; 0.0.0.0 lets other hosts "
        "scrape it)",
    )
    p.add_argument("--name", default="", help="a label for the server's logs (default host-pid)")
    p.add_argument(
        "--reconnect-timeout",
        type=float,
        default=60.0,
        help="give up after this many seconds without a session (default 60)",
    )
    p.add_argument(
        "--tls-ca",
        type=Path,
        default=None,
        metavar="FILE",
        help="CA certificate (PEM) to verify the server; enables TLS (default: plaintext)",
    )
    p.add_argument(
        "--tls-cert", type=Path, default=None, metavar="FILE", help="client certificate (mutual TLS)"
    )
    p.add_argument("--tls-key", type=Path, default=None, metavar="FILE", help="client key (mutual TLS)")
    p.add_argument(
        "--tls-server-name",
        default=None,
        metavar="NAME",
        help="host name to verify in the server's certificate when --server is an address the "
        "certificate does not name (e.g. --server 127.0.0.1:50051 --tls-server-name hgo-server); "
        "also sent as the :authority (default: the host of --server)",
    )
    p.add_argument(
        "--allow-plugin",
        action="append",
        default=[],
        metavar="NAME_OR_REF",
        help="a plug-in model or dataset the server's spec may name (repeatable): an installed "
        "plug-in's name or a package.module:Name reference, exactly as the server names it. Built-ins "
        "are always allowed; a spec naming anything else is refused (exit 2) before it is imported "
        "(default: none)",
    )
    p.add_argument(
        "--max-shard-mb",
        type=int,
        default=checks.DEFAULT_MAX_SHARD_MB,
        metavar="MIB",
        help="refuse a data shard from the server larger than this (features + labels as float32) "
        f"(default {checks.DEFAULT_MAX_SHARD_MB})",
    )
    p.add_argument(
        "--sessions",
        type=int,
        default=1,
        metavar="K",
        help="host K independent device sessions in this process (a lab emulating a fleet): seeds "
        "seed+j, names NAME-j, each its own rate draw, shard and throttle (default 1)",
    )
    p.add_argument(
        "--fleet",
        type=Path,
        default=None,
        metavar="FILE",
        help='JSON {"sessions": [{...}, ...]}: one device session per entry, each overriding this '
        "command line's settings (keys: " + ", ".join(fleet.FLEET_KEYS) + ")",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log every round")
    return p


def _check_files(args: argparse.Namespace) -> None:
    """Files and directories on the command line exist, before the first connection attempt.

    Without this a typo in ``--tls-ca`` would only show up as a failed session, retried
    until ``--reconnect-timeout``.
    """
    for flag, path in (("--tls-ca", args.tls_ca), ("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)):
        if path is None:
            continue
        if not path.is_file():
            what = "does not exist" if not path.exists() else "is not a regular file"
            raise ValueError(f"{flag}: {str(path)!r} {what}")
        try:
            with path.open("rb"):
                pass
        except OSError as exc:
            raise ValueError(f"{flag}: cannot read {str(path)!r} ({exc.strerror or exc})") from None
    if args.data_dir is not None and not args.data_dir.is_dir():
        raise ValueError(f"--data-dir: {str(args.data_dir)!r} is not a directory")
    if args.data is not None and not args.data.exists():
        raise ValueError(f"--data: {str(args.data)!r} does not exist")


def config_from_args(args: argparse.Namespace) -> WorkerConfig:
    """A validated WorkerConfig; ValueError names the offending value.

    No file-system checks here (container args validate on any host); ``main`` runs
    :func:`_check_files` too.
    """
    if args.seed is not None and not 0 <= args.seed < 2**32:
        raise ValueError(f"--seed must be in [0, 2**32), got {args.seed}")
    compute = Compute(**forms.coerce(Compute, forms.from_namespace(args, Compute))).checked()
    rate = pacing.throttle_rate(args.throttle, args.rate, compute.budget_policy)
    profile = args.profile or ("custom" if rate is not None else "average")
    if args.token is not None and args.token_file is not None:
        raise ValueError("--token and --token-file are two sources of one token; give one of them")
    if not args.metrics_bind.strip():
        raise ValueError(f"--metrics-bind must be a host or address, got {args.metrics_bind!r}")
    return WorkerConfig(
        server=args.server,
        profile=profile,
        rate=rate,
        batch_size=compute.batch_size,
        byzantine=_attack(args),
        attack_params=attacks.parse_params(args.attack_param),
        seed=args.seed,
        # --token-file is read by main (no file access here)
        token=args.token or (None if args.token_file else os.environ.get(credentials.TOKEN_ENV) or None),
        shard=args.shard,
        data_dir=args.data_dir,
        metrics_port=args.metrics_port,
        budget_policy=compute.budget_policy,
        rho=compute.rho,
        name=args.name,
        reconnect_timeout=args.reconnect_timeout,
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_server_name=args.tls_server_name,
        allow_plugins=tuple(args.allow_plugin),
        max_shard_mb=args.max_shard_mb,
        data=args.data,
        data_format=args.data_format,
        label_column=args.label_column,
        scaling=args.scaling,
    )


def _attack(args: argparse.Namespace) -> str | None:
    """--attack, or its old spelling --byzantine (said once on stderr)."""
    if args.old_byzantine is not None:
        if args.attack is not None and args.attack != args.old_byzantine:
            raise ValueError(
                f"--attack {args.attack!r} and --byzantine {args.old_byzantine!r} name two attacks; "
                "give --attack"
            )
        logging.getLogger("hgo_worker").warning("--byzantine is an old spelling of --attack; use --attack")
        return str(args.old_byzantine)
    return None if args.attack is None else str(args.attack)


async def _main(workers: Sequence[Worker]) -> int:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await fleet.run(workers)
    except asyncio.CancelledError:
        return 130


def configs_from_args(args: argparse.Namespace) -> list[WorkerConfig]:
    """The sessions this process hosts: one, ``--sessions K`` copies, or a ``--fleet`` file's."""
    base = config_from_args(args)
    if args.fleet is not None and args.sessions != 1:
        raise ValueError("--fleet and --sessions are exclusive (a fleet file lists its sessions)")
    if args.fleet is not None:
        return fleet.load_fleet(args.fleet, base)
    return fleet.replicate(base, args.sessions)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    try:
        cfgs = configs_from_args(args)
        _check_files(args)
        if args.token_file is not None:
            token = credentials.read_token(args.token_file)
            cfgs = [dataclasses.replace(c, token=token) for c in cfgs]
        metrics_port = cfgs[0].metrics_port
        workers = fleet.build(cfgs, metrics=metrics_port is not None)
    except ValueError as exc:
        parser.error(str(exc))
    if metrics_port is not None:
        try:
            if len(workers) == 1:
                port = workers[0].metrics.serve(metrics_port, addr=args.metrics_bind)
            else:
                port = fleet.serve_metrics(workers, metrics_port, addr=args.metrics_bind)
        except OSError as exc:
            parser.error(f"--metrics-port {metrics_port}: cannot serve metrics ({exc.strerror or exc})")
        logging.getLogger("hgo_worker").info("metrics on :%d/metrics", port)
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # uvloop is optional on platforms without it
        runner = asyncio.Runner()
    with runner:
        return runner.run(_main(workers))


if __name__ == "__main__":
    sys.exit(main())
