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
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from hgo_common import catalog, local, plugins, profiles, rounds, wire
from hgo_common.errors import HGOError
from hgo_common.models import ModelProtocol
from hgo_common.net import credentials, protocol
from hgo_common.net import messages as msgs
from hgo_common.net.mapping import SessionStream
from hgo_common.spec.run import Compute

from . import checks, evaluate, localdata
from .byzantine import parse_behaviour
from .compute import cached_order, model_from_spec
from .metrics import WorkerMetrics
from .pacing import RoundMeter, Schedule

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
SILENT_INTERVALS = 3
READER_GRACE_S = 1.0
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


class SessionLost(HGOError):
    """The session ended without ``Stop{done}``: reconnect."""


class Rejected(HGOError):
    """The server refused this worker for good: do not reconnect."""


class LocalDataError(HGOError):
    """``--shard i/n``: this worker cannot load its own shard. Local, so not retried.

    Not a ValueError on purpose: the handshake turns ValueErrors (a spec the worker
    cannot train) into :class:`Rejected`, which would blame the server.
    """


@dataclass
class WorkerConfig:
    """Everything ``hgo-worker`` is told on its command line (see hgo_worker.cli)."""

    server: str
    profile: str = "average"
    rate: float | None = None  # None: drawn from the profile; 0: unthrottled
    batch_size: int = 32
    byzantine: str | None = None
    attack_params: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    token: str | None = None
    shard: str = "auto"
    data_dir: Path | None = None
    metrics_port: int | None = None
    budget_policy: str = "fixed"
    rho: float = 0.5  # the hybrid budget policy's interpolation (0 = coordinates-first, 1 = data-first)
    name: str = ""
    reconnect_timeout: float = 60.0
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_server_name: str | None = None  # the name checked in the server's certificate
    # Plug-ins (models, datasets) a server's spec may name: compared as given, entry-point
    # names or package.module:Name references. Built-ins are always allowed.
    allow_plugins: tuple[str, ...] = ()
    max_shard_mb: int = checks.DEFAULT_MAX_SHARD_MB
    # --data: the device's own files (hgo_worker.localdata); the server sends no shard
    data: Path | None = None
    data_format: str = "auto"
    label_column: str | None = None
    scaling: str = "auto"

    def validate(self) -> None:
        """Raise ValueError naming the first bad value."""
        host, sep, port = self.server.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"--server must be HOST:PORT with a port in 1..65535, got {self.server!r}")
        if self.profile not in (*profiles.PROFILES, "custom"):
            raise ValueError(
                f"--profile must be one of {sorted(profiles.PROFILES)} or 'custom', got {self.profile!r}"
            )
        if self.profile == "custom" and self.rate is None:
            raise ValueError("--profile custom needs an explicit --rate")
        if self.rate is not None and (math.isnan(self.rate) or self.rate < 0):
            raise ValueError(f"--rate must be >= 0 (0 = unthrottled), got {self.rate}")
        Compute(self.batch_size, self.budget_policy, self.rho).checked()  # declared in hgo_common.spec
        if not self.reconnect_timeout >= 0:
            raise ValueError(f"--reconnect-timeout must be >= 0 seconds, got {self.reconnect_timeout}")
        parse_shard(self.shard)
        if self.metrics_port is not None and not 0 <= self.metrics_port < 65536:
            raise ValueError(f"--metrics-port must be in 0..65535, got {self.metrics_port}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together (mutual TLS)")
        if self.tls_server_name is not None:
            if self.tls_ca is None and self.tls_cert is None:
                raise ValueError("--tls-server-name needs TLS (--tls-ca, or --tls-cert/--tls-key)")
            name = self.tls_server_name
            if not name or any(c.isspace() for c in name) or ":" in name:
                raise ValueError(f"--tls-server-name must be a host name (no port, no spaces), got {name!r}")
        for name in self.allow_plugins:
            if not isinstance(name, str) or not name.strip() or any(c.isspace() for c in name):
                raise ValueError(f"--allow-plugin must be a plug-in name or module:Name, got {name!r}")
        if not 1 <= self.max_shard_mb <= 1 << 20:
            raise ValueError(f"--max-shard-mb must be in [1, {1 << 20}] MiB, got {self.max_shard_mb}")
        if self.byzantine is not None:
            parse_behaviour(self.byzantine, self.attack_params)
        if self.data is not None and self.shard != "auto":
            raise ValueError(f"--data (the device's own files) and --shard {self.shard} exclude each other")


def parse_shard(text: str) -> tuple[int, int] | None:
    """``"auto"`` -> None; ``"i/n"`` -> (i, n) with 0 <= i < n."""
    if text == "auto":
        return None
    i, sep, n = text.partition("/")
    if sep and i.isdigit() and n.isdigit() and 0 <= int(i) < int(n):
        return int(i), int(n)
    raise ValueError(f"--shard must be 'auto' or 'i/n' with 0 <= i < n, got {text!r}")


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1); names are not resolved."""
    host = host.strip().strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere


def plaintext_warning(server: str, tls: bool) -> str | None:
    """The warning a worker logs before connecting to ``server`` (HOST:PORT); None if none is due.

    Without TLS, anyone on the path between worker and server can read the token and
    the data and can stand in for the server; on loopback there is no such path.
    """
    host = server.rpartition(":")[0]
    if tls or is_loopback(host):
        return None
    return (
        f"PLAINTEXT: connecting to {server} without TLS: anyone on the network path can read the "
        "bearer token and the data shard, and can pose as the server (it can only name built-in or "
        "--allow-plugin models and datasets). Use --tls-ca FILE (docs/operations.md)"
    )


_WARNED_PLAINTEXT: set[str] = set()


def warn_plaintext_once(server: str, tls: bool) -> bool:
    """Log :func:`plaintext_warning` for ``server`` once per process (a fleet shares it); True if logged."""
    warning = plaintext_warning(server, tls)
    if warning is None or server in _WARNED_PLAINTEXT:
        return False
    _WARNED_PLAINTEXT.add(server)
    log.warning("%s", warning)
    return True


def resolve_rate(cfg: WorkerConfig, rng: np.random.Generator) -> float:
    """λ_i: ``--rate`` when given, else a draw from the profile's distribution."""
    if cfg.rate is not None:
        return float(cfg.rate)
    return float(profiles.draw_rate(cfg.profile, rng))


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
        model = model_from_spec(spec, self._allowed())
        if self.local_table is not None:
            X, y = self._own_files(spec, model)
        elif own_shard is None:
            X, y = await _receive_shard(call, spec, cfg.max_shard_mb)
        else:
            X, y = self._load_own_shard(spec, *own_shard)
        # Warm up (first BLAS call, allocator) now rather than in the first round's budget.
        model.gradient(np.zeros(model.dim), X[: cfg.batch_size], y[: cfg.batch_size])
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


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    if isinstance(exc.__cause__, grpc.aio.AioRpcError):
        return _describe(exc.__cause__)
    return str(exc) or type(exc).__name__


def _kind(msg: msgs.ServerMessage | msgs.Unknown) -> str:
    """The protocol name of a message's kind, for errors."""
    return msg.kind if isinstance(msg, msgs.Unknown) else type(msg).__name__


async def _read(call: SessionStream) -> msgs.ServerMessage | msgs.Unknown:
    msg = await call.read()
    if msg is None:
        raise SessionLost("the server closed the stream")
    return msg


async def _receive_shard(call: SessionStream, spec: msgs.Spec, max_mb: int) -> tuple[np.ndarray, np.ndarray]:
    """Assemble the ``ShardPart``s (in order, last one flagged) into (X, y), each part checked."""
    shard = checks.ShardAssembler(spec, max_mb * 2**20, f"--max-shard-mb {max_mb}")
    while True:
        msg = await _read(call)
        if isinstance(msg, msgs.Beat):
            continue
        if not isinstance(msg, msgs.ShardSlice):
            raise SessionLost(f"expected the shard, got {_kind(msg)!r}")
        if shard.add(msg):
            break
    X, y = shard.result()
    if len(y) == 0:
        raise SessionLost("the server sent an empty shard")
    return X, y


class WorkerSession:
    """The three tasks of a welcomed session (reader, writer, heartbeat)."""

    def __init__(
        self,
        worker: Worker,
        call: SessionStream,
        welcome: msgs.Welcome,
        model: ModelProtocol,
        X: np.ndarray,
        y: np.ndarray,
    ) -> None:
        self.w = worker
        self.call = call
        self.welcome = welcome
        self.spec = welcome.spec
        self.model = model
        # Federated evaluation: the validation share is held out here, before any round.
        self.X, self.y, self.val = evaluate.split_validation(X, y, welcome.eval_fraction, worker.seed)
        self.heartbeat_s = welcome.heartbeat_ms / 1000.0
        self.loop = asyncio.get_running_loop()
        self.last_recv = self.loop.time()
        self.out: asyncio.Queue[msgs.WorkerMessage] = asyncio.Queue(maxsize=8)
        # Rounds only grow within a session (a restarted server means a new session), so
        # two counters replace ever-growing sets of served and closed rounds.
        self.last_served = -1
        self.last_closed = -1
        self.current: tuple[int, asyncio.Task[None]] | None = None

    async def run(self) -> None:
        tasks = [
            asyncio.create_task(self._reader(), name="reader"),
            asyncio.create_task(self._writer(), name="writer"),
        ]
        if self.heartbeat_s > 0:
            tasks.append(asyncio.create_task(self._heartbeat(), name="heartbeat"))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            reader = tasks[0]
            if reader not in done:
                # The writer or the watchdog failed first. When the server ends the call
                # right after its Stop{done}, our next write fails before the reader has
                # dispatched that Stop: give the reader a moment to deliver it.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(reader), READER_GRACE_S)
            if not (reader.done() and not reader.cancelled() and reader.exception() is None):
                for t in (reader, *tasks[1:]):
                    if t.done() and not t.cancelled() and t.exception() is not None:
                        raise t.exception()  # type: ignore[misc]
                raise SessionLost("the session ended")
            # The reader returned: Stop{done}. Say goodbye, then end our half of the stream.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.out.join(), timeout=1.0)
            try:
                await self.call.write(msgs.Leave(reason="done"))
                await self.call.done_writing()
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
                pass  # the server may already have ended the call; leaving is best effort
        finally:
            self._cancel_round()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _reader(self) -> None:
        while True:
            msg = await _read(self.call)
            now = self.loop.time()
            self.last_recv = now
            if isinstance(msg, msgs.Task):
                self._on_task(msg, now)
            elif isinstance(msg, msgs.Closed):
                # RoundClosed{k} closes every round <= k: the server coalesces the closes
                # queued for a slow reader into the newest one (hgo_server.server.Outbox).
                self.last_closed = max(self.last_closed, msg.round)
                if self.current is not None and self.current[0] <= self.last_closed:
                    self._cancel_round()
            elif isinstance(msg, msgs.Stop):
                if msg.reason == "done":
                    self._cancel_round()
                    return
                raise SessionLost(f"server stopped the session: {msg.reason!r}")
            # heartbeats only refresh last_recv; a late Welcome/ShardPart is ignored

    async def _writer(self) -> None:
        while True:
            msg = await self.out.get()
            try:
                if isinstance(msg, msgs.Chunk) and msg.round <= self.last_closed:
                    continue  # the round closed while the chunk waited: it would only be late
                await self.call.write(msg)
            finally:
                self.out.task_done()

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            silent = self.loop.time() - self.last_recv
            if silent > SILENT_INTERVALS * self.heartbeat_s:
                raise SessionLost(f"server silent for {silent:.1f} s")
            await self.out.put(msgs.Beat(unix_ns=time.time_ns()))

    # ------------------------------------------------------------------ rounds

    def _cancel_round(self) -> None:
        if self.current is not None:
            self.current[1].cancel()
            self.current = None

    def _on_task(self, task: msgs.Task, received: float) -> None:
        if task.round <= self.last_served or task.round <= self.last_closed:
            return  # a duplicate of a round this session already served, or one already closed
        try:
            checks.check_task(task, self.spec.dim)
        except checks.Refused as exc:  # this round only: the session and the next rounds go on
            log.error("%s: round %d skipped: %s", self.w.name, task.round, exc)
            return
        if self.w.trace is not None:
            self.w.trace.append(("task", int(task.round), time.time()))
        self.last_served = task.round
        self._cancel_round()  # a new round means the previous one is closed on the server
        if self.w.behaviour is not None and self.w.behaviour.kind == "silent":
            return
        t = asyncio.create_task(self._serve_round(task, received), name=f"round-{task.round}")
        t.add_done_callback(self._round_done)
        self.current = (task.round, t)

    def _round_done(self, t: asyncio.Task[None]) -> None:
        if not t.cancelled() and t.exception() is not None:
            # A bug or bad data, not a network problem: say it loudly, keep serving.
            log.error("%s: %s failed", self.w.name, t.get_name(), exc_info=t.exception())

    async def _serve_round(self, task: msgs.Task, t0: float) -> None:
        """Round ``task.round``: the core's local step, released no faster than the throttle."""
        spec, w = self.spec, self.w
        meter: RoundMeter | None = None
        try:
            tau = task.tau_ms if task.tau_ms > 0 else math.inf
            d = spec.dim
            c_k = cached_order(task.order_seed, d, spec.order or "flat", spec.groups)
            weights = wire.decode(task.weights, d).astype(np.float64)
            if task.evaluate:
                await self._evaluate(task.round, weights)
            rng = local.round_rng(w.seed, task.round, salt=self.welcome.worker_id)
            t_step = time.perf_counter()
            work = local.local_step(
                self.model, weights, self.X, self.y, c_k, tau, w.local_cfg, rng, byzantine=w.behaviour
            )
            meter = RoundMeter(work.batch_size)
            meter.on_compute(work.source.computed, evaluate.timed_ms(t_step))
            chunk = spec.max_chunk_values or protocol.DEFAULT_MAX_CHUNK_VALUES
            sched = Schedule(work.rate, work.batch_size, d, tau, chunk, work.limit)
            await self._release(task.round, sched, work.source, t0, meter)
        finally:
            w.rounds_served += 1
            w.metrics.round_served()
            if meter is not None:  # also when RoundClosed cancelled the round: what it did so far
                with contextlib.suppress(asyncio.QueueFull):
                    self.out.put_nowait(evaluate.round_report(meter, task.round, self.welcome.session_id))

    async def _evaluate(self, rnd: int, weights: np.ndarray) -> None:
        """Federated evaluation of the task's weights on the validation split (Byzantine: a lie)."""
        report = evaluate.eval_report(
            self.model, weights, self.val, rnd, self.welcome.session_id, lying=self.w.behaviour is not None
        )
        if report is not None:
            await self.out.put(report)

    async def _release(
        self, rnd: int, sched: Schedule, source: local.RoundGradient | local.Precomputed, t0: float,
        meter: RoundMeter | None = None,
    ) -> None:
        """Compute in pieces and emit no more than the schedule allows, until done or cancelled."""
        metrics = self.w.metrics
        sid = self.welcome.session_id

        def elapsed() -> float:
            return (self.loop.time() - t0) * 1000.0

        def compute_to(n: int) -> None:
            before, t_piece = source.computed, time.perf_counter()
            source.ensure(n)
            metrics.computed(source.computed - before)
            if meter is not None:
                meter.on_compute(source.computed - before, evaluate.timed_ms(t_piece))

        sent = 0
        first_ms = -1.0
        while True:
            now = elapsed()
            # Woken after the local deadline (a loaded machine): still send what was
            # released *by* the deadline — the server's timer may be late too — never more.
            allowed = sched.allowed(min(now, sched.tau_ms))
            if allowed > sent:
                if source.computed < allowed:
                    compute_to(allowed)  # one piece: send it before computing more
                upto = min(allowed, source.computed)
                for a, b in sched.chunks(sent, upto):
                    await self.out.put(msgs.Chunk(rnd, a, wire.encode(source.values[a:b]), sid))
                if first_ms < 0 and upto > sent:
                    first_ms = elapsed()
                    if self.w.trace is not None:
                        self.w.trace.append(("chunk", rnd, time.time()))
                metrics.sent(upto - sent)
                if meter is not None:
                    meter.on_release(upto, elapsed())
                sent = upto
                if source.computed < allowed:
                    await asyncio.sleep(0)
                    continue
            wake = sched.next_wake_ms(sent, elapsed())
            if wake is None:
                log.debug(
                    "round %d: sent %d of %d by %.1f ms (first chunk at %.1f ms; expected %d)",
                    rnd,
                    sent,
                    sched.d,
                    elapsed(),
                    first_ms,
                    sched.expected(),
                )
                return
            # Compute ahead of the release (allowed: the throttle limits release, not compute).
            ahead = sched.allowed(wake)
            while source.computed < ahead and elapsed() < wake:
                compute_to(ahead)
                await asyncio.sleep(0)
            delay = wake - elapsed()
            if delay > 0:
                await asyncio.sleep(delay / 1000.0)
