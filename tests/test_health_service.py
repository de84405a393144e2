"""grpc.health.v1 on a real hgo-server (in-process, port 0): statuses follow the training state.

The same service the kubelet's native gRPC probes call (deploy/k8s/base/server.yaml):
liveness ``""``, readiness ``hgo.v1.HGO``. It answers without a bearer token even when the
server requires one; the HGO rpcs still do not.
"""

from __future__ import annotations

import asyncio

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hgo_common.net.proto import hgo_pb2, hgo_pb2_grpc
from hgo_server.config import from_mapping
from hgo_server.servicer import start_server

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _check(stub: health_pb2_grpc.HealthStub, service: str) -> int:
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return int(reply.status)


async def test_health_follows_the_training_state_without_a_token() -> None:
    cfg = from_mapping({"port": 0, "q": 1, "rounds": 1, "token": "health-test-token-0123456789"})
    running, port = await start_server(cfg)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            assert await _check(stub, "") == SERVING
            assert await _check(stub, "hgo.v1.HGO") == SERVING  # waiting for workers: accepting
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await _check(stub, "no.such.Service")
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            # the HGO rpcs still need the token
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await hgo_pb2_grpc.HGOStub(channel).Status(hgo_pb2.StatusRequest(), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED

            # a Watch stream sees the change when training is over
            watch = stub.Watch(health_pb2.HealthCheckRequest(service="hgo.v1.HGO"))
            first = await asyncio.wait_for(watch.read(), 5)
            assert first.status == SERVING
            running.core.state = "done"
            second = await asyncio.wait_for(watch.read(), 5)
            assert second.status == NOT_SERVING
            watch.cancel()
            assert await _check(stub, "hgo.v1.HGO") == NOT_SERVING  # readiness: no new workers
            assert await _check(stub, "") == SERVING  # liveness: still alive, about to exit

            await running.health.shutdown()  # what RunningServer.stop does first
            assert await _check(stub, "") == NOT_SERVING
            assert await _check(stub, "hgo.v1.HGO") == NOT_SERVING
    finally:
        await running.stop()
