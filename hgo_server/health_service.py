"""The standard gRPC health service (``grpc.health.v1.Health``) of the parameter server.

Kubernetes' native gRPC probes (``grpc: {port: 50051}``), ``grpc_health_probe`` and load
balancers speak this protocol (https://github.com/grpc/grpc/blob/master/doc/health-checking.md);
the servicer is grpcio-health-checking's asyncio reference implementation, kept in step
with the training state of :class:`~hgo_server.server.Server`:

=================  ==========================================  ============================
service name       SERVING while                               NOT_SERVING when
=================  ==========================================  ============================
``""`` (overall)   the process serves gRPC (waiting, training,  the server is shutting down
                   done but not yet stopped)                    (:meth:`HealthService.shutdown`)
``hgo.v1.HGO``     it accepts workers: waiting or training     training is done or stopping
=================  ==========================================  ============================

So a liveness probe asks ``""`` and a readiness probe ``hgo.v1.HGO``: a finished server
stops receiving new workers but is not killed while it flushes its Stop messages and exits.

Health calls need no bearer token (the auth interceptor exempts :data:`METHODS`): a
kubelet cannot send one, and the answer reveals nothing beyond "alive". ``Check`` reads
the state at call time; ``Watch`` streams follow it within :data:`POLL_S`.

Because they need no token, what health calls may hold is bounded here and in
``hgo_server.guard``: the request is read within ``guard.READ_TIMEOUT_S`` after the call
starts, and at most :data:`MAX_WATCHERS` ``Watch`` streams are open at once, at most
:data:`WATCHERS_PER_PEER` per peer address (RESOURCE_EXHAUSTED beyond).

This is our own servicer, not grpcio-health-checking's ``HealthServicer``: that one keeps
one condition variable per service name and deletes it when *any* of its watchers ends,
so once one watcher (say, an unauthenticated peer) cancels its ``Watch``, the others wait
on a condition nobody notifies and never receive NOT_SERVING (``grpc_health/v1/_async.py``,
``Watch``'s ``finally``). Here one condition serves every watcher and is never replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, Protocol

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hgo_common.net.protocol import SERVICE

from .guard import peer_host

OVERALL = ""
METHODS = ("/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch", "/grpc.health.v1.Health/List")
"""Full method names of the health service (exempt from bearer-token auth)."""
POLL_S = 0.5
MAX_WATCHERS = 64
WATCHERS_PER_PEER = 4

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class _HasState(Protocol):
    state: str


def statuses(state: str) -> dict[str, int]:
    """The serving status of each service name for a server in ``state``."""
    accepting = state in ("waiting", "training")
    return {OVERALL: _SERVING, SERVICE: _SERVING if accepting else _NOT_SERVING}


class HealthService(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    """grpc.health.v1.Health reflecting ``core.state`` (see the module docstring)."""

    def __init__(self, core: _HasState) -> None:
        self._core = core
        self._shutdown = False
        self._status: dict[str, int] = {}
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self.watchers = 0
        self._by_peer: dict[str, int] = {}

    def _current(self) -> dict[str, int]:
        if self._shutdown:
            return {OVERALL: _NOT_SERVING, SERVICE: _NOT_SERVING}
        return statuses(self._core.state)

    async def refresh(self) -> None:
        """Re-read the state; wake every watcher when a status changed."""
        now = self._current()
        if now != self._status:
            self._status = now
            async with self._changed:
                self._changed.notify_all()

    async def Check(self, request: health_pb2.HealthCheckRequest, context: Any) -> Any:
        await self.refresh()
        status = self._status.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service[:100]!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:
        async with self._watcher(context):
            last: int | None = None
            while True:
                await self.refresh()
                status = self._status.get(request.service, _UNKNOWN)
                if status != last:
                    await context.write(health_pb2.HealthCheckResponse(status=status))
                    last = status
                async with self._changed:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), POLL_S)

    @contextlib.asynccontextmanager
    async def _watcher(self, context: Any) -> AsyncIterator[None]:
        peer = peer_host(context)
        held = self._by_peer.get(peer, 0)
        if self.watchers >= MAX_WATCHERS or held >= WATCHERS_PER_PEER:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many Watch streams (at most {MAX_WATCHERS}, {WATCHERS_PER_PEER} per address)",
            )
        self.watchers += 1
        self._by_peer[peer] = held + 1
        try:
            yield
        finally:
            self.watchers -= 1
            left = self._by_peer.get(peer, 1) - 1
            if left > 0:
                self._by_peer[peer] = left
            else:
                self._by_peer.pop(peer, None)

    def start(self) -> None:
        """Follow the state in the background (for ``Watch`` streams)."""
        self._task = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(POLL_S)

    async def shutdown(self) -> None:
        """Every service NOT_SERVING from now on (the server is stopping)."""
        self._shutdown = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.refresh()


def add_to_server(core: _HasState, server: grpc.aio.Server) -> HealthService:
    """Register the health service on ``server`` (call :meth:`HealthService.start` once serving)."""
    service = HealthService(core)
    health_pb2_grpc.add_HealthServicer_to_server(service, server)
    return service
