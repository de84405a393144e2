"""The worker session: connect, join, receive the spec and shard, serve rounds, reconnect.

Protocol (proto/hgo/v1/hgo.proto, docs/protocol.md "Wire protocol semantics"): one
long-lived bidirectional ``Session`` stream. The worker sends ``Join``; the server answers
``Welcome`` (session id, worker id, TrainingSpec) and, when asked, the shard as
``ShardPart``s; then it pushes a ``RoundTask`` per round the worker is sampled into. The
worker streams its gradient prefix back as ``GradientChunk``s (``hgo_common.local`` for the
values, hgo_worker.pacing for when they may go out) until ``RoundClosed`` arrives, which
cancels the round's work at once. Heartbeats flow both ways every ``heartbeat_ms``; a
server silent for 3 intervals is taken for dead.

Inside a session three tasks run: the *reader* (dispatches server messages), the
*writer* (the only coroutine that writes on the stream, fed by a small queue so that a
round's task can be cancelled at any point without tearing a write in half; chunks of
a round closed meanwhile are dropped), and the *heartbeat* task (sends heartbeats and
watches the server). Whichever ends first ends the session.

Failures
--------
``Stop{reason="done"}`` ends the worker with exit code 0 (after a ``Leave``). Any other
end of a session (server restart, ``Stop`` for shutdown, network error, silence) makes
the worker reconnect with exponential backoff and full jitter (delay drawn uniformly in
``[0, min(5 s, 0.1 s·2^attempt)]``) and join again as a fresh session, until it has been
disconnected for ``reconnect_timeout`` seconds (exit 1). A server that rejects the worker
for good (UNAUTHENTICATED, PERMISSION_DENIED, INVALID_ARGUMENT, UNIMPLEMENTED) ends it
with exit code 3. A worker that loads its own shard (``--shard i/n``) and cannot (files
missing from ``--data-dir``, a malformed file, a dataset it does not know) ends with exit
code 2: the failure is local, and neither retrying nor the server can fix it. So does a
worker that lacks the plug-in (or the ``hgo[torch]`` extra) providing the model the
server's spec names, or has another version of it: the log line names what to install.

What the worker receives is checked before it is used (issue 20, break 1): a model or
dataset the spec names is loaded only if it is built in or allowed by the operator
(``--allow-plugin``, ``hgo_common.catalog.resolve``), and every size and count is
checked before allocation (:mod:`hgo_worker.checks`). A refusal names what was refused
and ends the worker with exit code 2. A worker connecting without TLS to a host that
is not a loopback address says so once, loudly (:func:`plaintext_warning`).

The session logic handles the wire's domain messages (:mod:`hgo_common.net.messages`);
:class:`~hgo_common.net.mapping.SessionStream` converts to and from protobuf.

Modules: this one holds the worker identity (:class:`Worker`: connect, handshake,
reconnect); :mod:`hgo_worker.session` one welcomed session and the rounds it serves;
:mod:`hgo_worker.config` the command-line settings (:class:`WorkerConfig`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time

import grpc
import numpy as np

from hgo_common import catalog, local, plugins, rounds
from hgo_common.models import ModelProtocol
from hgo_common.net import credentials, protocol
from hgo_common.net import messages as msgs
from hgo_common.net.mapping import SessionStream

from . import checks, localdata
from .byzantine import parse_behaviour
from .compute import model_from_spec
from .config import (
    _WARNED_PLAINTEXT,  # noqa: F401  (the once-per-process set; tests reset it)
    WorkerConfig,
    is_loopback,
    parse_shard,
    plaintext_warning,
    resolve_rate,
    warn_plaintext_once,
)
from .metrics import WorkerMetrics
from .session import (
    LocalDataError,
    Rejected,
    SessionLost,
    WorkerSession,
    _kind,
    _read,
    _receive_shard,
)

log = logging.getLogger("hgo_worker")

CHANNEL_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.max_send_message_length", protocol.MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", protocol.MAX_MESSAGE_BYTES),
    # Transport keepalive under the application heartbeats: catches half-open TCP
    # connections while no round is running. Pings are spaced well above gRPC's
    # default server ping policy, and our heartbeats keep data flowing in between.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
]
BACKOFF_BASE_S = 0.1
BACKOFF_CAP_S = 5.0
FATAL_CODES = frozenset(
    {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)
EXIT_DONE, EXIT_GAVE_UP, EXIT_LOCAL_DATA, EXIT_REJECTED = 0, 1, 2, 3
EXIT_REFUSED = EXIT_LOCAL_DATA  # refuses what it was sent: fixed here (allow, install) or at the server


__all__ = [
    "EXIT_DONE",
    "EXIT_GAVE_UP",
    "EXIT_LOCAL_DATA",
    "EXIT_REFUSED",
    "EXIT_REJECTED",
    "LocalDataError",
    "Rejected",
    "SessionLost",
    "Worker",
    "WorkerConfig",
    "WorkerSession",
    "is_loopback",
    "parse_shard",
    "plaintext_warning",
    "resolve_rate",
    "warn_plaintext_once",
]


class Worker:
    """One worker identity: reconnects as many times as needed, one session at a time.

    Many ``Worker``s may share one event loop (bench/bench_network.py hosts dozens per
    process).
    """

    def __init__(self, cfg: WorkerConfig, *, metrics: WorkerMetrics | None = None) -> None:
        cfg.validate()
        self.cfg = cfg
        seed = cfg.seed if cfg.seed is not None else int.from_bytes(os.urandom(4), "little")
        self.seed = seed
        self._rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED]))
        self.rate = resolve_rate(cfg, self._rng)
        self.behaviour = parse_behaviour(cfg.byzantine, cfg.attack_params) if cfg.byzantine else None
        self.local_cfg = local.LocalConfig(self.rate, cfg.batch_size, cfg.budget_policy, cfg.rho)
        self.metrics = metrics or WorkerMetrics(cfg.profile)
        self.metrics.rate(self.rate)
        self.name = cfg.name or f"{socket.gethostname()}-{os.getpid()}"
        self.sessions = 0  # sessions welcomed so far (reconnects = sessions - 1)
        self.rounds_served = 0
        self._own_data: tuple[str, np.ndarray, np.ndarray] | None = None
        self.local_table = localdata.from_config(cfg)  # --data, read once: None without it
        # Optional instrumentation (bench/bench_network.py): when a list, the session
        # appends ("task", round, wall time) on each task and ("chunk", round, wall time)
        # when the round's first chunk is queued.
        self.trace: list[tuple[str, int, float]] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> int:
        """Serve until the server says done (0), reconnecting as needed; 1 gave up,
        2 cannot load its own shard, 3 rejected."""
        loop = asyncio.get_running_loop()
        down_since = loop.time()
        attempt = 0
        while True:
            welcomed_before = self.sessions
            try:
                await self._session()
                log.info("%s: training done, leaving", self.name)
                return EXIT_DONE
            except Rejected as exc:
                log.error("%s: rejected by the server: %s", self.name, exc)
                return EXIT_REJECTED
            except LocalDataError as exc:
                log.error("%s: %s", self.name, exc)
                return EXIT_LOCAL_DATA
            except checks.Refused as exc:
                log.error("%s: refusing what the server sent: %s", self.name, exc)
                return EXIT_REFUSED
            except (SessionLost, grpc.aio.AioRpcError, OSError, TimeoutError) as exc:
                log.info("%s: session ended: %s", self.name, _describe(exc))
            finally:
                self.metrics.connected(False)
            if self.sessions > welcomed_before:
                down_since, attempt = loop.time(), 0
            down = loop.time() - down_since
            if down >= self.cfg.reconnect_timeout:
                log.error(
                    "%s: no session with %s for %.1f s (--reconnect-timeout %.1f); giving up",
                    self.name,
                    self.cfg.server,
                    down,
                    self.cfg.reconnect_timeout,
                )
                return EXIT_GAVE_UP
            delay = float(self._rng.uniform(0.0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2.0**attempt)))
            delay = min(delay, self.cfg.reconnect_timeout - down)
            attempt += 1
            await asyncio.sleep(max(0.0, delay))

    def _channel(self) -> grpc.aio.Channel:
        cfg = self.cfg
        if cfg.tls_ca is None and cfg.tls_cert is None:
            warn_plaintext_once(cfg.server, tls=False)
            return grpc.aio.insecure_channel(cfg.server, options=CHANNEL_OPTIONS)
        creds = credentials.channel_credentials(cfg.tls_ca, cfg.tls_cert, cfg.tls_key)
        options: list[tuple[str, int | str]] = list(CHANNEL_OPTIONS)
        if cfg.tls_server_name:
            # Dialling an address (127.0.0.1:PORT, a container IP) that the certificate does
            # not name: check the certificate against this name instead, and send it as the
            # :authority (SNI and virtual hosting see the same name).
            options += [
                ("grpc.ssl_target_name_override", cfg.tls_server_name),
                ("grpc.default_authority", cfg.tls_server_name),
            ]
        return grpc.aio.secure_channel(cfg.server, creds, options=options)

    # ------------------------------------------------------------------ one session

    async def _session(self) -> None:
        """One session; returns on Stop{done}, raises SessionLost / Rejected otherwise."""
        metadata = credentials.bearer_metadata(self.cfg.token or None)
        channel = self._channel()
        call: SessionStream | None = None
        try:
            call = SessionStream(channel, metadata)
            try:
                state = await self._handshake(call)
            except plugins.PluginRefused as exc:  # local: only this worker's operator may allow it
                raise checks.Refused(f"TrainingSpec.{exc.kind}", exc.name, "", message=str(exc)) from exc
            except plugins.PluginMissing as exc:  # local: installing the plug-in fixes it
                raise LocalDataError(f"cannot train what the server asks: {exc}") from exc
            except ValueError as exc:  # a spec this worker cannot train, data it cannot load
                raise Rejected(f"cannot train what the server asks: {exc}") from exc
            self.sessions += 1
            if self.sessions > 1:
                self.metrics.reconnect()  # a success, not an attempt
            self.metrics.connected(True)
            await WorkerSession(self, call, *state).run()
        except grpc.aio.AioRpcError as exc:
            if (why := localdata.refusal(exc)) is not None:
                raise LocalDataError(why) from exc
            if exc.code() in FATAL_CODES:
                raise Rejected(_describe(exc)) from exc
            raise SessionLost(_describe(exc)) from exc
        finally:
            if call is not None:
                call.cancel()
            await channel.close(grace=None)

    async def _handshake(
        self, call: SessionStream
    ) -> tuple[msgs.Welcome, ModelProtocol, np.ndarray, np.ndarray]:
        cfg = self.cfg
        own_shard = parse_shard(cfg.shard)
        join = msgs.JoinRequest(
            protocol_version=protocol.PROTOCOL_VERSION,
            name=self.name,
            profile=cfg.profile,
            rate=self.rate,
            batch_size=cfg.batch_size,
            wants_shard=own_shard is None and self.local_table is None,
            byzantine=self.behaviour is not None,
            local_data=None if self.local_table is None else self.local_table.summary(),
        )
        await call.write(join)
        welcome = await _read(call)
        if isinstance(welcome, msgs.Stop):
            raise SessionLost(f"server stopped before welcoming us: {welcome.reason!r}")
        if not isinstance(welcome, msgs.Welcome):
            raise SessionLost(f"expected a Welcome, got {_kind(welcome)!r}")
        checks.check_welcome(welcome)  # sizes before anything is built from them
        spec = welcome.spec
        # Building a torch model (importing torch) and its first backward pass take seconds
        # on a loaded machine, more than the server's 3 silent heartbeat intervals: beat
        # while they run (on the welcomed stream, as the session will), and run them off
        # the loop so that the beats go out.
        keeper = _KeepAlive(call, welcome.heartbeat_ms / 1000.0)
        try:
            model = await asyncio.to_thread(model_from_spec, spec, self._allowed())
            if self.local_table is not None:
                X, y = self._own_files(spec, model)
            elif own_shard is None:
                X, y = await _receive_shard(call, spec, cfg.max_shard_mb)
            else:
                X, y = await asyncio.to_thread(self._load_own_shard, spec, *own_shard)
            # Warm up (first BLAS call, allocator) now rather than in the first round's budget.
            await asyncio.to_thread(
                model.gradient, np.zeros(model.dim), X[: cfg.batch_size], y[: cfg.batch_size]
            )
        finally:
            await keeper.stop()
        if self.behaviour is not None and spec.n_classes:
            y = self.behaviour.transform_labels(y, int(spec.n_classes), np.random.default_rng([self.seed, 7]))
        log.info(
            "%s: joined as worker %d (session %s…), %s d=%d, %d rows, rate %.4g, s=%d",
            self.name,
            welcome.worker_id,
            welcome.session_id[:8],
            spec.model,
            spec.dim,
            len(y),
            self.rate,
            cfg.batch_size,
        )
        return welcome, model, X, y

    def _own_files(self, spec: msgs.Spec, model: ModelProtocol) -> tuple[np.ndarray, np.ndarray]:
        """``--data``: the device's table fitted to the welcomed run, checked first (exit 2 if not)."""
        assert self.local_table is not None
        why = localdata.mismatch(self.local_table, spec, model)
        if why is not None:
            raise LocalDataError(why)
        return self.local_table.fitted(int(spec.n_features), str(model.task))

    def _allowed(self) -> frozenset[str]:
        """Plug-in names a spec may name here: ``--allow-plugin`` (built-ins need no listing)."""
        return frozenset(self.cfg.allow_plugins)

    def _load_own_shard(self, spec: msgs.Spec, i: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        if self._own_data is not None and self._own_data[0] == spec.dataset:
            return self._own_data[1], self._own_data[2]
        from hgo_common import datasets  # imports scikit-learn: only when loading data ourselves

        where = "no --data-dir" if self.cfg.data_dir is None else f"--data-dir {str(self.cfg.data_dir)!r}"
        try:
            # Before anything is read or imported: the dataset name came from the network.
            catalog.resolve(
                "dataset", spec.dataset, self._allowed(),
                distribution=spec.dataset_plugin, version=spec.dataset_plugin_version,
            )  # fmt: skip
            ds = datasets.load(spec.dataset, data_dir=self.cfg.data_dir, seed=int(spec.seed))
            parts = rounds.shard_split(ds.y_train, n, spec.partition or "iid", int(spec.seed))
        except plugins.PluginRefused as exc:
            why = f"--shard {i}/{n}: cannot load dataset {exc.name[:80]!r} ({where}): {exc}"
            raise checks.Refused("TrainingSpec.dataset", exc.name, "", message=why) from exc
        except (ValueError, OSError) as exc:
            raise LocalDataError(
                f"--shard {i}/{n}: cannot load dataset {spec.dataset!r} ({where}): {exc}"
            ) from exc
        X = np.ascontiguousarray(ds.X_train[parts[i]], dtype=np.float32)
        y = np.asarray(ds.y_train[parts[i]])
        self._own_data = (spec.dataset, X, y)
        return X, y


class _KeepAlive:
    """Heartbeats on ``call`` every ``interval_s`` until :meth:`stop` (none when 0): the
    handshake's slow steps must not look like a dead worker to the server."""

    def __init__(self, call: SessionStream, interval_s: float) -> None:
        self._call = call
        self._interval = interval_s
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="handshake-beats") if interval_s > 0 else None

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self._interval)
                return
            await self._call.write(msgs.Beat(unix_ns=time.time_ns()))

    async def stop(self) -> None:
        """End the beats after the one in flight, if any (never cancels a write midway)."""
        if self._task is None:
            return
        self._stop.set()
        with contextlib.suppress(Exception):  # a failed write shows again on the session's own
            await self._task


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    if isinstance(exc.__cause__, grpc.aio.AioRpcError):
        return _describe(exc.__cause__)
    return str(exc) or type(exc).__name__
