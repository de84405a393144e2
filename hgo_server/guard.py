"""Bounds on what a call may hold before it has proved anything (docs/reliability.md).

A gRPC call costs memory from the moment its headers arrive: its HTTP/2 stream, a task,
and whatever part of a request body gRPC buffers. Before authentication (and, for an
authenticated worker, before its Join) nothing limits how many a peer opens, so this
module counts them:

* :class:`CallLimits` — a server interceptor that admits at most ``total`` concurrent
  calls overall and ``per_peer`` per peer host, answering the rest RESOURCE_EXHAUSTED
  before their handler (or any request message) runs. Per connection, gRPC's own
  ``grpc.max_concurrent_streams`` applies (``hgo_server.servicer.channel_options``).
* :func:`around` — wraps a method handler so that an async context manager, given the
  call's context, runs around its behaviour: the gate of both this limiter and the
  token check of ``hgo_server.auth``. The context is needed for the peer's address,
  which ``grpc.HandlerCallDetails`` does not carry.
* :func:`trim_memory` — hands freed heap pages back to the kernel (glibc ``malloc_trim``):
  after thousands of calls end, their memory is free but stays in the process (RSS), as
  the red team saw (1,454 MB 30 s after an attack ended).

Handlers whose request is streamed run before any request message is read, so the gate
is decided from the metadata and the peer alone. For unary-request handlers gRPC reads
the request first; the server's own handlers are therefore all registered with
request streaming (``Status`` and the health service read their single request
themselves, with a deadline).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio

from .logsafe import RateLimitedLog, escape

log = logging.getLogger("hgo.server")
_limited = RateLimitedLog(log, interval=10.0)

Gate = Callable[[grpc.aio.ServicerContext[Any, Any]], contextlib.AbstractAsyncContextManager[None]]


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


def around(handler: grpc.RpcMethodHandler[Any, Any], gate: Gate) -> grpc.RpcMethodHandler[Any, Any]:
    """``handler`` with ``async with gate(context):`` around its behaviour (same kind, same codecs)."""
    field = ("stream_" if handler.request_streaming else "unary_") + (
        "stream" if handler.response_streaming else "unary"
    )
    behavior = getattr(handler, field)
    if behavior is None:
        return handler
    wrapped: Callable[..., Any]
    if inspect.isasyncgenfunction(behavior):

        async def gen(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            async with gate(context):
                async for item in behavior(request, context):
                    yield item

        wrapped = gen
    else:

        async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            async with gate(context):
                result = behavior(request, context)
                if inspect.isawaitable(result):
                    result = await result
                return result

        wrapped = call
    replaced: grpc.RpcMethodHandler[Any, Any] = handler._replace(**{field: wrapped})  # type: ignore[attr-defined]
    return replaced


class CallLimits(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """At most ``total`` concurrent calls, and ``per_peer`` per peer host; the rest RESOURCE_EXHAUSTED.

    Parameters
    ----------
    total, per_peer : int
        The caps (> 0).
    on_reject : callable, optional
        Called with ``"call-limit"`` for each refused call (the rejection counter).
    """

    def __init__(self, total: int, per_peer: int, on_reject: Callable[[str], None] | None = None) -> None:
        if total < 1 or per_peer < 1:
            raise ValueError(f"call limits must be >= 1, got total={total} per_peer={per_peer}")
        self.total = total
        self.per_peer = per_peer
        self.on_reject = on_reject
        self.active = 0
        self.peak = 0  # highest `active` since the last trim_memory (RunningServer)
        self.by_peer: dict[str, int] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        return around(streaming_request(handler), self._slot)

    @contextlib.asynccontextmanager
    async def _slot(self, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[None]:
        peer = peer_host(context)
        held = self.by_peer.get(peer, 0)
        if self.active >= self.total or held >= self.per_peer:
            which = f"{self.total} overall" if self.active >= self.total else f"{self.per_peer} per peer"
            _limited.log(logging.WARNING, "call-limit", "call refused from %s: %s concurrent calls held",
                         escape(peer), which)  # fmt: skip
            if self.on_reject is not None:
                self.on_reject("call-limit")
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"too many concurrent calls ({which}); retry later"
            )
        self.active += 1
        self.peak = max(self.peak, self.active)
        self.by_peer[peer] = held + 1
        try:
            yield
        finally:
            self.active -= 1
            left = self.by_peer.get(peer, 1) - 1
            if left > 0:
                self.by_peer[peer] = left
            else:
                self.by_peer.pop(peer, None)


_libc: Any = None


def trim_memory() -> bool:
    """Return free heap pages to the kernel (glibc ``malloc_trim(0)``); False where unavailable."""
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        try:
            _libc = ctypes.CDLL(name) if name else False
        except OSError:
            _libc = False
    if not _libc or not hasattr(_libc, "malloc_trim"):
        return False
    _libc.malloc_trim(0)
    return True


READ_TIMEOUT_S = 5.0
"""How long a call may take to deliver its single request once the handler asks for it."""


def streaming_request(
    handler: grpc.RpcMethodHandler[Any, Any], timeout: float = READ_TIMEOUT_S
) -> grpc.RpcMethodHandler[Any, Any]:
    """A unary-request ``handler`` as a request-streaming one that reads its one request itself.

    gRPC reads a unary request in full before the handler (or a gate around it) runs, with
    no deadline: a peer that sends headers and part of a body holds that memory for as long
    as it likes. Registered with request streaming, the call reaches the gates first, and
    the request is read only after them, within ``timeout`` seconds (DEADLINE_EXCEEDED).
    On the wire the two are the same: a client calling the method as unary sees no change.
    """
    if handler.request_streaming:
        return handler
    unary: Any = handler.unary_stream if handler.response_streaming else handler.unary_unary

    async def first(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await asyncio.wait_for(anext(aiter(requests)), timeout)
        except TimeoutError:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"no request within {timeout:g} s")
        except StopAsyncIteration:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the call carried no request message")

    if inspect.isasyncgenfunction(unary):

        async def gen(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            request = await first(requests, context)
            async for item in unary(request, context):
                yield item

        behavior: Callable[..., Any] = gen
    else:

        async def call(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            request = await first(requests, context)
            result = unary(request, context)
            if inspect.isawaitable(result):
                result = await result
            return result

        behavior = call
    de, ser = handler.request_deserializer, handler.response_serializer
    make: Any = grpc.stream_unary_rpc_method_handler
    if handler.response_streaming:
        make = grpc.stream_stream_rpc_method_handler
    made: grpc.RpcMethodHandler[Any, Any] = make(behavior, request_deserializer=de, response_serializer=ser)
    return made
