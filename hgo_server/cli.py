"""``hgo-server``: the command line of the HGO parameter server (docs/server.md).

Prints ``hgo-server listening on HOST:PORT`` (flushed) once serving, one summary line
at the end, and exits 0 after training, or ``--stop-exit-code`` (default 0) after a
SIGTERM/SIGINT that ended training early (stop sampling, close the open round,
checkpoint if configured, tell the workers Stop). Bad settings exit 2
with a message naming the value.
"""

from __future__ import annotations

import os

# Two OpenBLAS threads collapse when another process is busy (docs/design.md §8); must be
# set before numpy is imported anywhere in this process.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import asyncio
import logging
import math
import signal
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from .config import ConfigError, ServerConfig, check_paths, load_token, parse_args


def _run(coro: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop
    except ImportError:  # uvloop is optional (not on Windows)
        return asyncio.run(coro)
    result: int = uvloop.run(coro)
    return result


async def amain(cfg: ServerConfig) -> int:
    """Serve and train with ``cfg``; returns the exit status."""
    from prometheus_client import REGISTRY

    from .metrics import ServerMetrics
    from .servicer import start_server

    metrics = ServerMetrics.for_config(cfg, REGISTRY)
    if cfg.metrics_port is not None:
        addr = cfg.metrics_bind or cfg.bind
        try:
            metrics.serve(cfg.metrics_port, addr)
        except OSError as exc:
            raise ConfigError(
                f"--metrics-bind {addr} --metrics-port {cfg.metrics_port}: cannot serve metrics "
                f"({exc.strerror or exc})"
            ) from None
    running, port = await start_server(cfg, metrics=metrics)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        # stop sampling, close the open round, checkpoint (--checkpoint-dir), Stop the workers
        loop.add_signal_handler(sig, running.request_stop)
    # Reload --tokens-file (revoke removed identities); SIGHUP's default would kill the
    # server without a checkpoint or a Stop.
    loop.add_signal_handler(signal.SIGHUP, running.reload_tokens)
    try:
        print(f"hgo-server listening on {cfg.bind}:{port}", flush=True)
        if cfg.port_file:
            tmp = Path(cfg.port_file + ".tmp")
            try:
                tmp.write_text(f"{port}\n")
                tmp.replace(cfg.port_file)  # atomic: a reader never sees a half-written port
            except OSError as exc:
                why = exc.strerror or exc
                raise ConfigError(f"--port-file {cfg.port_file!r}: cannot write ({why})") from None
        summary = await running.run()
    finally:
        await running.stop()
    if summary.rounds == 0:  # stopped before training: an untrained model's score is no result
        result = "(no round trained)"
    elif not running.core.setup.evaluates:
        result = "(no server evaluation: --dataset none without --test-data)"
    else:
        metric = "nan" if math.isnan(summary.metric) else f"{summary.metric:.4f}"
        result = f"{summary.metric_name}={metric}"
    print(
        f"hgo-server {'done' if summary.completed else 'stopped'}: rounds={summary.rounds} "
        f"{result} wall={summary.wall_s:.1f}s",
        flush=True,
    )
    if running.export_error is not None:
        print(f"hgo-server: error: {running.export_error}", file=sys.stderr, flush=True)
        return 1
    return 0 if summary.completed else cfg.stop_exit_code


NOFILE_WARN = 4096
"""Below this open-file limit the server warns at start (1,100 idle connections locked honest
workers out at 1,024: docs/reliability.md)."""


def raise_nofile(target: int | None = None) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to ``target`` (default: the hard limit) where allowed.

    Every connection costs a file descriptor; 1,024 (a common default) lets a thousand idle
    connections lock honest workers out. Returns the effective (soft, hard) limits.
    """
    try:
        import resource
    except ImportError:  # not on this platform
        return (-1, -1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if target is None else target
    if hard != resource.RLIM_INFINITY:
        want = min(want, hard)
    if want > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError) as exc:
            logging.getLogger("hgo.server").warning("cannot raise RLIMIT_NOFILE to %d: %s", want, exc)
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=os.environ.get("HGO_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        cfg = parse_args(argv)
        check_paths(cfg)
        cfg = load_token(cfg)
        if cfg.export is None and cfg.checkpoint_dir is None:
            logging.getLogger("hgo.server").warning(
                "the trained model will not be saved: pass --export FILE (or --checkpoint-dir DIR)"
            )
        soft, hard = raise_nofile(cfg.nofile)
        logging.getLogger("hgo.server").info("open-file limit (RLIMIT_NOFILE): %d (hard %d)", soft, hard)
        if 0 <= soft < NOFILE_WARN:
            logging.getLogger("hgo.server").warning(
                "the open-file limit is %d: about that many connections (idle ones included) fill it, "
                "and then honest workers cannot join; raise the hard limit (ulimit -Hn, LimitNOFILE=, "
                "docker --ulimit nofile=) to at least %d", soft, NOFILE_WARN,
            )  # fmt: skip
        return _run(amain(cfg))
    except ConfigError as exc:
        print(f"hgo-server: error: {exc}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
