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
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Protocol

import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from hgo_common.net.protocol import SERVICE

OVERALL = health.OVERALL_HEALTH
METHODS = ("/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch", "/grpc.health.v1.Health/List")
"""Full method names of the health service (exempt from bearer-token auth)."""
POLL_S = 0.5

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class _HasState(Protocol):
    state: str


def statuses(state: str) -> dict[str, int]:
    """The serving status of each service name for a server in ``state``."""
    accepting = state in ("waiting", "training")
    return {OVERALL: _SERVING, SERVICE: _SERVING if accepting else _NOT_SERVING}


class HealthService(health.aio.HealthServicer):  # type: ignore[misc,name-defined]
    """grpc.health.v1.Health reflecting ``core.state`` (see the module docstring)."""

    def __init__(self, core: _HasState) -> None:
        super().__init__()
        self._core = core
        self._shutdown = False
        self._task: asyncio.Task[None] | None = None

    async def refresh(self) -> None:
        if self._shutdown:
            return
        for service, status in statuses(self._core.state).items():
            if self._server_status.get(service) != status:
                await self.set(service, status)

    async def Check(self, request: health_pb2.HealthCheckRequest, context: Any) -> Any:
        await self.refresh()
        return await super().Check(request, context)

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
        await self.enter_graceful_shutdown()


def add_to_server(core: _HasState, server: grpc.aio.Server) -> HealthService:
    """Register the health service on ``server`` (call :meth:`HealthService.start` once serving)."""
    service = HealthService(core)
    health_pb2_grpc.add_HealthServicer_to_server(service, server)
    return service
