"""The gRPC server of the parameter server: channel options, limits and the factory.

:func:`start_server` builds the :class:`~hgo_server.server.Server`, binds (port 0 when
asked: tests never guess ports) and returns the running server and its port, with the
channel options that let big models and thousands of streams through (docs/design.md §8)
and the limits that bound what unauthenticated or idle peers can hold.

The layers, one module each: ``hgo_server.service`` (the ``hgo.v1.HGO`` handlers and the
one table of status codes, :data:`STATUS_CODES`), ``hgo_server.codec`` (protobuf in and
out), ``hgo_server.auth`` (tokens and TLS), ``hgo_server.health_service`` (grpc.health.v1).

Serialize once: the ``Session`` method handler uses a response serializer that passes
``bytes`` through, and a round's :class:`~hgo_server.messages.Task` caches its
serialized form, so w_k is encoded to float32 once and serialized to protobuf once
per round, whatever q is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from typing import Any

import grpc
import grpc.aio

from hgo_common.net.proto import hgo_pb2
from hgo_common.net.protocol import SERVICE, vector_fit_error

from . import auth, health_service, messages
from .codec import BadMessage, deserializer, encode, serializer, status_request
from .config import ConfigError, ServerConfig
from .guard import CallLimits, trim_memory
from .metrics import ServerMetrics
from .persistence import ExportError
from .server import Server
from .service import STATUS_CODES, HGOServicer, status_code
from .setup import Setup

__all__ = [
    "STATUS_CODES", "BadMessage", "HGOServicer", "RunningServer", "channel_options", "encode",
    "receive_limits", "start_server", "status_code",
]  # fmt: skip

log = logging.getLogger("hgo.servicer")

STOP_GRACE_S = 3.0
RECEIVE_MARGIN = 4096
"""Bytes a worker message may carry beyond its chunk values: the envelope, round, offset,
session id, and the Join's name/profile or a Leave's reason (a few hundred bytes)."""
MAX_CALLS = 20_000
"""Concurrent calls the server holds at once, all peers together (``guard.CallLimits``)."""
MAX_CALLS_PER_PEER = 10_000
"""Concurrent calls one peer address holds (many workers may share one address: NAT)."""
TRIM_EVERY_S = 10.0
"""How often freed memory is handed back to the kernel once many calls have ended."""


def receive_limits(cfg: ServerConfig) -> tuple[int, int]:
    """(limit the servicer enforces, limit gRPC enforces) on worker messages, in bytes.

    Sized to the protocol, not to ``--max-message-mb`` (the *send* limit, which must fit
    w_k): the largest legitimate worker message is a chunk of ``max_chunk_values``
    float32 values, so the limit is ``4 * max_chunk_values + RECEIVE_MARGIN`` (69,632
    bytes at the default 16,384 values).

    gRPC refuses a message over its own limit from the length prefix, before buffering
    it and before any handler sees it, and the handler cannot tell that from a client
    cancel. gRPC's limit is therefore twice the servicer's: messages between the two are
    refused with RESOURCE_EXHAUSTED *and* counted (reason ``oversized-message``); only
    messages over twice the limit are refused by gRPC alone.
    """
    limit = 4 * cfg.max_chunk_values + RECEIVE_MARGIN
    return limit, min(2 * limit, 2**31 - 1)


def channel_options(cfg: ServerConfig) -> list[tuple[str, Any]]:
    """Server channel options: message limits both ways, pending-call queue, keepalive, timeouts."""
    max_bytes = cfg.max_message_mb * 2**20
    idle_ms = int(cfg.idle_timeout)
    return [
        ("grpc.max_receive_message_length", receive_limits(cfg)[1]),
        ("grpc.max_send_message_length", max_bytes),
        # Connections that carry no call (idle TCP, a client that never opens a stream) are
        # closed after --idle-timeout; a TLS/HTTP2 handshake must finish within it too.
        ("grpc.max_connection_idle_ms", idle_ms),
        ("grpc.server_handshake_timeout_ms", idle_ms),
        # Half-open connections: the server pings, and drops a peer that does not answer.
        ("grpc.keepalive_time_ms", max(idle_ms, 10_000)),
        ("grpc.keepalive_timeout_ms", 5_000),
        # Thousands of streams opening at once overflow the default pending-call queue
        # and come back CANCELLED (docs/design.md §8); the dotted spelling is the one that works.
        ("grpc.server.max_pending_requests", 65536),
        ("grpc.server.max_pending_requests_hard_limit", 131072),
        # Workers may send keepalive pings on idle streams (between rounds).
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 5000),
        # Two servers on one port must fail loudly, not share it.
        ("grpc.so_reuseport", 0),
        # Streams one connection may carry at once (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS).
        # Workers in one process share one connection (gRPC's global subchannel pool), so
        # this follows the per-address session cap, not 1.
        ("grpc.max_concurrent_streams", max(64, int(cfg.max_sessions_per_peer or 1024)) + 16),
    ]


def _handlers(servicer: HGOServicer, metrics: ServerMetrics, limit: int) -> grpc.GenericRpcHandler[Any, Any]:
    deserialize, serialize = deserializer(metrics, limit), serializer(metrics)
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Session": grpc.stream_stream_rpc_method_handler(
                servicer.Session, request_deserializer=deserialize, response_serializer=serialize
            ),
            "Status": grpc.unary_unary_rpc_method_handler(
                servicer.Status,
                request_deserializer=status_request,
                response_serializer=hgo_pb2.StatusReply.SerializeToString,
            ),
        },
    )


# ---------------------------------------------------------------------------- factory


class RunningServer:
    """A bound, serving gRPC server around a :class:`~hgo_server.server.Server`."""

    def __init__(
        self, core: Server, grpc_server: grpc.aio.Server, port: int, health: health_service.HealthService
    ) -> None:
        self.core = core
        self.grpc_server = grpc_server
        self.port = port
        self.health = health
        self.limits: CallLimits | None = None
        self.export_error: str | None = None  # --export failed at the end (the CLI exits 1)
        self.auth: auth.AuthInterceptor | None = None
        health.start()
        self._beats = asyncio.create_task(core.heartbeats())
        self._trim = asyncio.create_task(self._trim_memory())

    async def _trim_memory(self) -> None:
        """After a burst of calls ends (an attack, a crowd reconnecting), hand the freed heap
        back to the kernel: otherwise RSS stays at its peak (the red team: 1,454 MB 30 s later)."""
        while True:
            await asyncio.sleep(TRIM_EVERY_S)
            lim = self.limits
            if lim is not None and lim.peak >= 256 and lim.active <= lim.peak // 2:
                await asyncio.to_thread(trim_memory)  # off the loop: it walks the heap
                lim.peak = lim.active

    async def run(self) -> messages.Summary:
        """Train to the end (or until :meth:`request_stop`); Stop messages are queued.

        The final model goes to ``--export`` (also after a stop: the file says
        ``completed: false`` then).
        """
        summary = await self.core.run()
        if summary.rounds == 0:
            log.info("no round was trained: nothing exported")
            return summary
        try:
            await self.core.export_model(summary.rounds, completed=summary.completed)
        except ExportError as exc:
            log.error("%s", exc)
            self.export_error = str(exc)
        return summary

    def request_stop(self) -> None:
        self.core.request_stop()

    def reload_tokens(self) -> int | None:
        """SIGHUP: read ``--tokens-file`` again. New tokens work at once; sessions of identities
        the file no longer holds, or whose every token was replaced (a stolen token rotated),
        end with PERMISSION_DENIED. A bad file is logged and the old tokens stay. Returns the
        number of sessions ended (None when nothing was reloaded)."""
        cfg, guard_auth = self.core.cfg, self.auth
        if cfg.tokens_file is None or guard_auth is None:
            log.warning("SIGHUP: no --tokens-file to reload; nothing changed")
            return None
        try:
            store = auth.TokenStore.from_options(cfg.token, cfg.tokens_file)
        except (ValueError, OSError) as exc:
            log.error("SIGHUP: %s; the previous tokens stay in force", exc)
            return None
        assert store is not None
        old = _tokens_by_identity(guard_auth.store)
        new = _tokens_by_identity(store)
        try:
            self.core.set_identities(store.identities(), store.shards, enforceable=self.core.f_enforceable)
        except ConfigError as exc:
            log.error("SIGHUP: %s; the previous tokens stay in force", exc)
            return None
        guard_auth.store = store
        gone = {ident for ident, toks in old.items() if not toks & new.get(ident, set())}
        ended = self.core.revoke(gone, "was removed from the tokens file (or all its tokens replaced)")
        log.info(
            "SIGHUP: tokens file %s reloaded: %d identities, %d revoked, %d sessions ended",
            cfg.tokens_file, len(new), len(gone), ended,
        )  # fmt: skip
        return ended

    async def stop(self, grace: float = STOP_GRACE_S) -> None:
        """Stop serving: open streams get ``grace`` seconds to flush (their Stop message)."""
        self.core.request_stop()
        await self.health.shutdown()
        for task in (self._beats, self._trim):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.grpc_server.stop(grace)
        self.core.close()


def _identities(core: Server, cfg: ServerConfig, store: auth.TokenStore | None) -> None:
    """Tell the core who can be told apart, and say loudly when f cannot be enforced.

    f is enforceable when every session has an identity of its own: mutual TLS (a
    certificate per worker), or a tokens file without the shared ``--token``.
    """
    mtls = cfg.tls_ca is not None
    per_worker = store is not None and bool(store.identities())
    shared = store is None or store.has_shared
    try:
        core.set_identities(
            store.identities() if store is not None else [],
            store.shards if store is not None else {},
            enforceable=mtls or (per_worker and not shared),
        )
    except ConfigError:
        core.close()
        raise
    if not core.f_enforceable:
        why = "no authentication" if store is None else "the shared --token"
        log.warning(
            "f IS NOT ENFORCEABLE: with %s every session counts as a worker, so one client can open "
            "many sessions and be more than f of the sampled rows (--f %d promises nothing); "
            "use --tokens-file (one token per worker) or mutual TLS (--tls-ca)", why, cfg.f,
        )  # fmt: skip


def _tokens_by_identity(store: auth.TokenStore) -> dict[str, set[bytes]]:
    out: dict[str, set[bytes]] = {}
    for ident, tok in store.entries:
        out.setdefault(ident, set()).add(tok)
    return out


def _address(bind: str, port: int) -> str:
    host = f"[{bind}]" if ":" in bind and not bind.startswith("[") else bind
    return f"{host}:{port}"


async def start_server(
    cfg: ServerConfig, *, metrics: ServerMetrics | None = None, setup: Setup | None = None
) -> tuple[RunningServer, int]:
    """Build the server, bind ``cfg.bind:cfg.port`` (0: a free port) and start serving.

    Training does not start until :meth:`RunningServer.run` is awaited.

    Returns
    -------
    server : RunningServer
    port : int
        The bound port (the chosen one when ``cfg.port`` is 0).
    """
    if metrics is None:
        metrics = ServerMetrics.for_config(cfg)  # round-duration buckets around this run's tau
    core = Server(cfg, metrics=metrics, setup=setup)
    try:
        core.check_export_path()
    except ConfigError:
        core.close()
        raise
    core.metrics.set_run_info(cfg, model=core.spec.model)
    limits = CallLimits(MAX_CALLS, MAX_CALLS_PER_PEER, on_reject=core.reject)
    interceptors: list[grpc.aio.ServerInterceptor] = [limits]  # type: ignore[type-arg]
    guard_auth: auth.AuthInterceptor | None = None
    creds = None
    if cfg.token is not None or cfg.tokens_file is not None or cfg.tls_cert is not None:
        try:
            store = auth.TokenStore.from_options(cfg.token, cfg.tokens_file)
            if cfg.tls_cert is not None and cfg.tls_key is not None:
                creds = auth.server_credentials(cfg.tls_cert, cfg.tls_key, cfg.tls_ca)
        except (ValueError, OSError) as exc:
            raise ConfigError(str(exc)) from None
        if store is not None:
            guard_auth = auth.AuthInterceptor(store, on_reject=core.reject, exempt=health_service.METHODS)
            interceptors.append(guard_auth)
    else:
        store = None
    _identities(core, cfg, store)
    limit = f"--max-message-mb {cfg.max_message_mb}"
    why = vector_fit_error(f"a RoundTask of d={core.d}", core.d, cfg.max_message_mb * 2**20, limit)
    if why is not None:
        core.close()
        raise ConfigError(f"{why}; raise --max-message-mb")
    gs = grpc.aio.server(interceptors=interceptors, options=channel_options(cfg))
    gs.add_generic_rpc_handlers((_handlers(HGOServicer(core), core.metrics, receive_limits(cfg)[0]),))
    health = health_service.add_to_server(core, gs)
    addr = _address(cfg.bind, cfg.port)
    try:
        port = gs.add_secure_port(addr, creds) if creds is not None else gs.add_insecure_port(addr)
    except RuntimeError as exc:
        core.close()
        raise ConfigError(f"--bind {cfg.bind} --port {cfg.port}: cannot listen on {addr} ({exc})") from None
    if not port:
        core.close()
        raise ConfigError(f"--bind {cfg.bind} --port {cfg.port}: cannot listen on {addr}")
    await gs.start()
    log.info(
        "serving on %s: d=%d model=%s dataset=%s tau=%s", _address(cfg.bind, port), core.d, core.spec.model,
        cfg.dataset, "inf" if math.isinf(cfg.tau_ms) else f"{cfg.tau_ms:g} ms",
    )  # fmt: skip
    running = RunningServer(core, gs, port, health)
    running.limits, running.auth = limits, guard_auth
    return running, port
