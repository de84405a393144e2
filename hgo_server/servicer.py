"""The gRPC transport of the parameter server: protobuf in, plain calls, protobuf out.

The servicer decodes each ``WorkerMessage``, calls the matching method of
:class:`hgo_server.server.Server`, and writes the ``ServerMessage`` form of whatever the
server put in the session's outbox. Domain errors become gRPC status codes in one
table, :data:`STATUS_CODES`; nothing here knows what a round is.

Also here: :func:`start_server`, the factory that binds (port 0 when asked: tests never
guess ports) and returns the running server and its port, with the channel options
that let big models and thousands of streams through (docs/design.md §8).

Serialize once: the ``Session`` method handler uses a response serializer that passes
``bytes`` through, and a round's :class:`~hgo_server.server.Task` caches its
serialized form, so w_k is encoded to float32 once and serialized to protobuf once
per round, whatever q is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
from google.protobuf.message import DecodeError

from hgo_common.net import mapping
from hgo_common.net.proto import hgo_pb2
from hgo_common.net.protocol import SERVICE, vector_fit_error

from . import auth, errors, health_service, messages
from .config import ConfigError, ServerConfig
from .logsafe import RateLimitedLog, escape
from .metrics import ServerMetrics
from .server import Server
from .sessions import SessionRecord, TokenBucket
from .setup import Setup

log = logging.getLogger("hgo.servicer")
_limited = RateLimitedLog(log, interval=10.0)

STOP_GRACE_S = 3.0
WRITE_GRACE_S = 2.0  # a write still pending when its session ends waits this long, then is dropped
RECEIVE_MARGIN = 4096
"""Bytes a worker message may carry beyond its chunk values: the envelope, round, offset,
session id, and the Join's name/profile or a Leave's reason (a few hundred bytes)."""
STATUS_CODES: dict[type[errors.ProtocolError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Aborted: grpc.StatusCode.ABORTED,  # replaced by a newer session (a worker reconnects)
}


def status_code(exc: errors.ProtocolError) -> grpc.StatusCode:
    """The gRPC status for a protocol error (the one mapping of the transport)."""
    for cls in type(exc).__mro__:
        if cls in STATUS_CODES:
            return STATUS_CODES[cls]
    return grpc.StatusCode.INVALID_ARGUMENT


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
    ]


# ---------------------------------------------------------------------------- encoding


def encode(msg: messages.Outgoing) -> bytes:
    """The serialized ``ServerMessage`` for one outbox entry (a Task is serialized once)."""
    if isinstance(msg, messages.End):
        raise TypeError("End is not a wire message")
    return mapping.server_bytes(msg)


def _consume(fut: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned write's outcome (its call is over; nothing is left to report)."""
    if not fut.cancelled():
        fut.exception()


def peer_host(context: Any) -> str:
    """The host part of ``context.peer()`` (``ipv4:127.0.0.1:5000`` -> ``ipv4:127.0.0.1``)."""
    try:
        peer = str(context.peer() or "")
    except Exception:
        return ""
    if peer.startswith(("ipv4:", "ipv6:")):
        host, _, _port = peer.rpartition(":")
        return host
    return peer


@dataclass(frozen=True)
class BadMessage:
    """Stands in for a worker message that could not be accepted as bytes (too big, not protobuf)."""

    error: errors.ProtocolError


# ---------------------------------------------------------------------------- servicer


class HGOServicer:
    """``hgo.v1.HGO``: the Session stream and the Status call."""

    def __init__(self, core: Server) -> None:
        self.core = core
        self.join_timeout_s = core.cfg.join_timeout / 1000.0

    async def Session(
        self,
        requests: AsyncIterator[hgo_pb2.WorkerMessage | BadMessage],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        core = self.core
        try:
            first = await asyncio.wait_for(anext(aiter(requests)), self.join_timeout_s)
        except StopAsyncIteration:
            return
        except TimeoutError:
            core.reject("join-timeout")
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"no Join within {self.join_timeout_s:g} s (--join-timeout)",
            )
        if isinstance(first, BadMessage):
            core.reject(first.error.reason)
            await context.abort(status_code(first.error), str(first.error))
        if first.WhichOneof("kind") != "join":
            core.reject("bad-first-message")
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the first message of a session must be a Join, got {first.WhichOneof('kind')!r}",
            )
        try:
            join = mapping.worker_from_proto(first)
            assert isinstance(join, messages.JoinRequest)  # the kind was checked above
            sess = core.join(join, auth.session_identity(context), peer_host(context))
        except errors.ProtocolError as exc:
            await context.abort(status_code(exc), str(exc))
        reader = asyncio.create_task(self._read(requests, sess))
        ended = asyncio.ensure_future(sess.ended.wait())
        error: errors.ProtocolError | None = None
        write: asyncio.Future[None] | None = None
        try:
            while True:
                msg = await sess.outbox.get()
                if isinstance(msg, messages.End):
                    error = msg.error
                    break
                if core.outdated(msg):
                    continue
                # bytes: the response serializer passes them through. A write completes only
                # when the peer reads; a session ended meanwhile (rejected, evicted, replaced)
                # must not leave its call parked on a peer that never reads.
                write = asyncio.ensure_future(context.write(encode(msg)))
                await asyncio.wait((write, ended), return_when=asyncio.FIRST_COMPLETED)
                if not write.done():
                    # ended meanwhile: give a peer that is reading a moment, so it gets the
                    # real status; one that is not (a stalled reader) loses its call
                    await asyncio.wait((write,), timeout=WRITE_GRACE_S)
                    if not write.done():
                        write.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await write
                    error = sess.end_error
                    break
                write.result()
                if isinstance(msg, messages.Stop):
                    break
        except asyncio.CancelledError:
            if core.stopping:
                return  # the server is stopping and gRPC cancels the streams still open: not an error
            raise
        finally:
            ended.cancel()
            reader.cancel()
            if write is not None and not write.done():  # the handler itself was cancelled
                write.cancel()
                write.add_done_callback(_consume)
            core.leave(sess, "stream ended")
        if error is not None:
            await context.abort(status_code(error), str(error))

    async def _read(
        self, requests: AsyncIterator[hgo_pb2.WorkerMessage | BadMessage], sess: SessionRecord
    ) -> None:
        core = self.core
        msgs = TokenBucket(core.session_msg_rate, core.session_msg_rate)
        data = TokenBucket(core.session_byte_rate, core.session_byte_rate)
        try:
            async for msg in requests:
                if isinstance(msg, BadMessage):
                    core.reject(msg.error.reason)
                    raise msg.error
                size = msg.ByteSize()
                sess.messages += 1
                sess.received_bytes += size
                # Over the session's rate: handle this message, then stop reading for as long
                # as the buckets need to refill. The peer's flood waits in HTTP/2 flow control.
                wait_msgs, wait_bytes = msgs.take(1.0), data.take(float(size))
                m = mapping.worker_from_proto(msg)
                if isinstance(m, messages.Chunk):
                    core.on_chunk(sess, m.round, m.offset, m.values, m.session_id)
                elif isinstance(m, messages.Beat):
                    core.on_heartbeat(sess)
                elif isinstance(m, messages.Leave):
                    core.leave(sess, f"leave: {escape(m.reason, 200)}")
                    return
                elif isinstance(m, messages.JoinRequest):
                    core.reject("duplicate-join")
                    raise errors.InvalidArgument("duplicate-join", "a session sends exactly one Join, first")
                else:
                    core.reject("empty-message")
                    raise errors.InvalidArgument("empty-message", "WorkerMessage with no kind set")
                wait = max(wait_msgs, wait_bytes)
                if wait > 0:
                    core.metrics.rate_limited.labels(
                        kind="messages" if wait_msgs >= wait_bytes else "bytes"
                    ).inc()
                    await asyncio.sleep(wait)
            core.leave(sess, "stream closed by worker")
        except errors.ProtocolError as exc:
            _limited.log(
                logging.INFO,
                exc.reason,
                "worker %d rejected (%s): %s",
                sess.worker_id,
                exc.reason,
                escape(exc),
            )
            core.leave(sess, exc.reason, exc)
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError:
            core.leave(sess, "stream error")
        except Exception:  # never let one bad stream take the server down
            log.exception("worker %d: unexpected error while reading its stream", sess.worker_id)
            core.leave(sess, "internal error")

    async def Status(
        self, request: hgo_pb2.StatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> hgo_pb2.StatusReply:
        return mapping.status_proto(self.core.status())


def _status_request(data: bytes) -> hgo_pb2.StatusRequest:
    # StatusRequest has no fields: its body is not parsed (nothing in it can matter).
    return hgo_pb2.StatusRequest()


def _handlers(servicer: HGOServicer, metrics: ServerMetrics, limit: int) -> grpc.GenericRpcHandler[Any, Any]:
    def deserialize(data: bytes) -> hgo_pb2.WorkerMessage | BadMessage:
        # Never raise here: gRPC would end the call with UNKNOWN and nothing counted.
        metrics.received_bytes.inc(len(data))
        # Size first, then syntax, then unknown fields: all fatal, all counted, before the
        # servicer classifies the message (late, not sampled, ...).
        if len(data) > limit:
            return BadMessage(
                errors.ResourceExhausted(
                    "oversized-message",
                    f"message larger than the receive limit ({len(data)} vs. {limit} bytes = "
                    "4 * max_chunk_values + margin)",
                )
            )
        try:
            msg = hgo_pb2.WorkerMessage.FromString(data)
        except DecodeError as exc:
            return BadMessage(errors.InvalidArgument("undecodable", f"not a hgo.v1.WorkerMessage: {exc}"))
        msg.DiscardUnknownFields()
        if msg.ByteSize() != len(data):
            # Unknown fields (padding) or a non-canonical encoding: no hgo.v1 client sends either.
            return BadMessage(
                errors.InvalidArgument(
                    "unknown-fields",
                    f"message carries {len(data) - msg.ByteSize()} bytes of unknown fields or non-canonical "
                    "encoding (hgo.v1 has none)",
                )
            )
        return msg

    def serialize(msg: bytes | hgo_pb2.ServerMessage) -> bytes:
        data = msg if isinstance(msg, bytes) else msg.SerializeToString()
        metrics.sent_bytes.inc(len(data))
        return data

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Session": grpc.stream_stream_rpc_method_handler(
                servicer.Session, request_deserializer=deserialize, response_serializer=serialize
            ),
            "Status": grpc.unary_unary_rpc_method_handler(
                servicer.Status,
                request_deserializer=_status_request,
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
        health.start()
        self._beats = asyncio.create_task(core.heartbeats())

    async def run(self) -> messages.Summary:
        """Train to the end (or until :meth:`request_stop`); Stop messages are queued.

        The final model goes to ``--export`` (also after a stop: the file says
        ``completed: false`` then).
        """
        summary = await self.core.run()
        await self.core.export_model(summary.rounds, completed=summary.completed)
        return summary

    def request_stop(self) -> None:
        self.core.request_stop()

    async def stop(self, grace: float = STOP_GRACE_S) -> None:
        """Stop serving: open streams get ``grace`` seconds to flush (their Stop message)."""
        self.core.request_stop()
        await self.health.shutdown()
        self._beats.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._beats
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
    core.metrics.set_run_info(cfg, model=core.spec.model)
    interceptors: list[grpc.aio.ServerInterceptor] = []  # type: ignore[type-arg]
    creds = None
    if cfg.token is not None or cfg.tokens_file is not None or cfg.tls_cert is not None:
        try:
            store = auth.TokenStore.from_options(cfg.token, cfg.tokens_file)
            if cfg.tls_cert is not None and cfg.tls_key is not None:
                creds = auth.server_credentials(cfg.tls_cert, cfg.tls_key, cfg.tls_ca)
        except (ValueError, OSError) as exc:
            raise ConfigError(str(exc)) from None
        if store is not None:
            interceptors.append(
                auth.AuthInterceptor(store, on_reject=core.reject, exempt=health_service.METHODS)
            )
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
    return RunningServer(core, gs, port, health), port
