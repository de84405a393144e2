"""The ``hgo.v1.HGO`` service: the Session stream and the Status call (docs/protocol.md).

The servicer is thin: it decodes each ``WorkerMessage`` (``hgo_server.codec``), calls the
matching method of :class:`hgo_server.server.Server`, and writes the ``ServerMessage``
form of whatever the server put in the session's outbox. Domain errors become gRPC status
codes in one table, :data:`STATUS_CODES`; nothing here knows what a round is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio

from hgo_common.net import mapping
from hgo_common.net.proto import hgo_pb2

from . import auth, errors, messages
from .codec import BadMessage, encode
from .guard import peer_host
from .logsafe import RateLimitedLog, escape
from .server import Server
from .sessions import SessionRecord, TokenBucket

log = logging.getLogger("hgo.servicer")
_limited = RateLimitedLog(log, interval=10.0)

WRITE_GRACE_S = 2.0  # a write still pending when its session ends waits this long, then is dropped
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


def _consume(fut: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned write's outcome (its call is over; nothing is left to report)."""
    if not fut.cancelled():
        fut.exception()


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
        peer = peer_host(context)
        try:
            identity = auth.session_identity(context)
            pending = core.pending_open(identity, peer)
        except auth.NoUsableName as exc:
            core.reject("bad-certificate")
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        except errors.ProtocolError as exc:
            await context.abort(status_code(exc), str(exc))
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
        finally:
            core.pending_close(pending)
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
            sess = core.join(join, identity, peer)
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
                elif isinstance(m, messages.EvalReport):
                    core.on_eval_report(sess, m)
                elif isinstance(m, messages.RoundReport):
                    core.on_round_report(sess, m)
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
