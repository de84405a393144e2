"""A raw protocol client for tests and benchmarks: speaks hgo.v1 over a real channel.

Unlike ``hgo_worker`` it computes nothing and obeys nothing: a test decides every message
it sends (hostile input), or lets :meth:`WireClient.respond` play a minimal honest worker
(answers heartbeats, streams a fixed gradient for every RoundTask) so that hundreds of
sessions fit in one process (churn, load).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
import numpy as np

from hgo_common import wire
from hgo_common.net.proto import hgo_pb2, hgo_pb2_grpc


def channel_options(max_mb: int = 64) -> list[tuple[str, int]]:
    n = max_mb * 1024 * 1024
    return [("grpc.max_receive_message_length", n), ("grpc.max_send_message_length", n)]


def join_message(
    *,
    name: str = "probe",
    profile: str = "average",
    rate: float = 0.0,
    batch_size: int = 1,
    wants_shard: bool = False,
    protocol_version: int = 1,
) -> hgo_pb2.WorkerMessage:
    return hgo_pb2.WorkerMessage(
        join=hgo_pb2.Join(
            protocol_version=protocol_version,
            name=name,
            profile=profile,
            rate=rate,
            batch_size=batch_size,
            wants_shard=wants_shard,
        )
    )


def chunk_message(round_: int, offset: int, values: bytes, session_id: str) -> hgo_pb2.WorkerMessage:
    return hgo_pb2.WorkerMessage(
        chunk=hgo_pb2.GradientChunk(round=round_, offset=offset, values=values, session_id=session_id)
    )


class WireClient:
    """One Session stream. Use :meth:`join` first, then either drive it by hand or :meth:`respond`.

    Parameters
    ----------
    stub : HGOStub
    metadata : sequence of (key, value)
        Call metadata (e.g. ``credentials.bearer_metadata(token)``).
    """

    def __init__(self, stub: hgo_pb2_grpc.HGOStub, metadata: Sequence[tuple[str, str]] = ()) -> None:
        self.call = stub.Session(metadata=tuple(metadata))
        self.welcome: hgo_pb2.Welcome | None = None
        self.session_id = ""
        self.tasks: list[hgo_pb2.RoundTask] = []
        self.closed_rounds: list[int] = []
        self.stop_reason: str | None = None
        self._lock = asyncio.Lock()
        self._responder: asyncio.Task[None] | None = None

    async def send(self, msg: hgo_pb2.WorkerMessage) -> None:
        async with self._lock:  # grpc.aio allows one write in flight per call
            await self.call.write(msg)

    async def read(self, timeout: float = 10.0) -> hgo_pb2.ServerMessage | None:
        """Next server message; None when the stream ended."""
        msg = await asyncio.wait_for(self.call.read(), timeout)
        if msg is grpc.aio.EOF:
            return None
        return msg  # type: ignore[no-any-return]

    async def join(self, timeout: float = 10.0, **join_fields: object) -> hgo_pb2.Welcome:
        await self.send(join_message(**join_fields))  # type: ignore[arg-type]
        while True:
            msg = await self.read(timeout)
            if msg is None:
                raise AssertionError(f"stream ended before Welcome: {await self.call.code()}")
            if msg.HasField("welcome"):
                self.welcome = msg.welcome
                self.session_id = msg.welcome.session_id
                return msg.welcome

    async def next_task(self, timeout: float = 20.0) -> hgo_pb2.RoundTask:
        """Skip messages until a RoundTask (answering heartbeats); AssertionError on stream end."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            msg = await self.read(max(0.01, end - loop.time()))
            if msg is None:
                raise AssertionError(f"stream ended while waiting for a task: {await self.call.code()}")
            kind = msg.WhichOneof("kind")
            if kind == "task":
                self.tasks.append(msg.task)
                return msg.task
            if kind == "heartbeat":
                await self.send(hgo_pb2.WorkerMessage(heartbeat=hgo_pb2.Heartbeat()))
            elif kind == "closed":
                self.closed_rounds.append(msg.closed.round)
            elif kind == "stop":
                self.stop_reason = msg.stop.reason

    async def wait_closed(self, round_: int, timeout: float = 20.0) -> None:
        """Read (recording tasks, answering heartbeats) until RoundClosed for ``round_``."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while round_ not in self.closed_rounds:
            msg = await self.read(max(0.01, end - loop.time()))
            if msg is None:
                raise AssertionError(f"stream ended while waiting for RoundClosed({round_})")
            kind = msg.WhichOneof("kind")
            if kind == "closed":
                self.closed_rounds.append(msg.closed.round)
            elif kind == "task":
                self.tasks.append(msg.task)
            elif kind == "heartbeat":
                await self.send(hgo_pb2.WorkerMessage(heartbeat=hgo_pb2.Heartbeat()))

    async def chunk(self, round_: int, offset: int, values: bytes, session_id: str | None = None) -> None:
        sid = self.session_id if session_id is None else session_id
        await self.send(chunk_message(round_, offset, values, sid))

    async def send_full(self, task: hgo_pb2.RoundTask, gradient: np.ndarray) -> None:
        """Stream ``gradient`` (shape (d,)) in chunks of at most spec.max_chunk_values."""
        assert self.welcome is not None
        step = int(self.welcome.spec.max_chunk_values) or gradient.size
        data = wire.encode(gradient)
        for off in range(0, gradient.size, step):
            await self.chunk(task.round, off, data[4 * off : 4 * min(gradient.size, off + step)])

    async def finish(self, timeout: float = 10.0) -> grpc.StatusCode:
        """Drain the stream until the server ends it; its status code."""
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.TimeoutError, asyncio.CancelledError):
            loop = asyncio.get_running_loop()
            end = loop.time() + timeout
            while await self.read(max(0.01, end - loop.time())) is not None:
                pass
        return await asyncio.wait_for(self.call.code(), timeout)  # type: ignore[no-any-return]

    def respond(
        self, gradient: Callable[[hgo_pb2.RoundTask], np.ndarray] | None = None, *, record: bool = True
    ) -> None:
        """Play an honest, unthrottled worker in the background until the stream ends.

        Every RoundTask is answered with ``gradient(task)`` (default: zeros of d) in
        max_chunk_values chunks; every server heartbeat with one of ours. ``record=False``
        keeps no history of tasks and closes (long runs that measure memory).
        """
        assert self.welcome is not None
        d = int(self.welcome.spec.dim)
        grad = gradient or (lambda task: np.zeros(d, dtype=np.float32))

        async def loop() -> None:
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError, grpc.aio.UsageError):
                while True:
                    msg = await self.call.read()
                    if msg is grpc.aio.EOF:
                        return
                    kind = msg.WhichOneof("kind")
                    if kind == "task":
                        if record:
                            self.tasks.append(msg.task)
                        await self.send_full(msg.task, grad(msg.task))
                    elif kind == "heartbeat":
                        await self.send(hgo_pb2.WorkerMessage(heartbeat=hgo_pb2.Heartbeat()))
                    elif kind == "closed" and record:
                        self.closed_rounds.append(msg.closed.round)
                    elif kind == "stop":
                        self.stop_reason = msg.stop.reason

        self._responder = asyncio.get_running_loop().create_task(loop())

    async def leave(self, reason: str = "bye") -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, grpc.aio.UsageError):
            await self.send(hgo_pb2.WorkerMessage(leave=hgo_pb2.Leave(reason=reason)))
            await self.call.done_writing()

    async def close(self) -> None:
        """Cancel the call (as a crashed worker's connection would end) and the responder."""
        self.call.cancel()
        if self._responder is not None:
            self._responder.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await self._responder


async def status(stub: hgo_pb2_grpc.HGOStub, metadata: Sequence[tuple[str, str]] = ()) -> hgo_pb2.StatusReply:
    return await stub.Status(hgo_pb2.StatusRequest(), metadata=tuple(metadata), timeout=10)  # type: ignore[no-any-return]


async def wait_for(
    predicate: Callable[[], object],
    timeout: float = 20.0,
    interval: float = 0.05,
    what: str = "condition",
    detail: Callable[[], object] | None = None,
) -> None:
    """Poll ``predicate`` (sync) until true; AssertionError naming ``what`` (and ``detail()``,
    the state to show) on timeout."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            extra = f": {detail()}" if detail is not None else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{extra}")
        await asyncio.sleep(interval)


# ----------------------------------------------------------------------------- in-process server


@dataclass
class Served:
    """An in-process hgo server on a real port, training in a background task."""

    running: Any
    port: int
    channel: grpc.aio.Channel
    stub: hgo_pb2_grpc.HGOStub
    run: asyncio.Task[Any]
    cfg: Any

    @property
    def core(self) -> Any:
        return self.running.core

    def counter(self, name: str, **labels: str) -> float:
        """A sample of the server's private Prometheus registry (0 when absent)."""
        value = self.core.metrics.registry.get_sample_value(name, labels)
        return float(value or 0.0)

    def rejected(self, reason: str) -> float:
        return self.counter("hgo_rejected_messages_total", reason=reason)

    def client(self, metadata: Sequence[tuple[str, str]] = ()) -> WireClient:
        return WireClient(self.stub, metadata)

    async def status(self, metadata: Sequence[tuple[str, str]] = ()) -> hgo_pb2.StatusReply:
        return await status(self.stub, metadata)


def server_config(**overrides: Any) -> Any:
    """A resolved ServerConfig for tests: tiny bundled data set, port 0, no evaluation."""
    from hgo_server.config import ServerConfig, resolve

    base: dict[str, Any] = {
        "port": 0,
        "bind": "127.0.0.1",
        "dataset": "breast-cancer",
        "eval_every": 0,
        "rounds": 1_000_000,
        "seed": 1,
    }
    base.update(overrides)
    return resolve(ServerConfig(**base))


@contextlib.asynccontextmanager
async def serving(*, channel_mb: int = 64, **overrides: Any) -> AsyncIterator[Served]:
    """Start an in-process server (``server_config(**overrides)``) and a channel to it."""
    from hgo_server.servicer import start_server

    cfg = server_config(**overrides)
    running, port = await start_server(cfg)
    run = asyncio.get_running_loop().create_task(running.run())
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=channel_options(channel_mb))
    try:
        yield Served(running, port, channel, hgo_pb2_grpc.HGOStub(channel), run, cfg)
    finally:
        await channel.close()
        # let the round loop finish (it may be evaluating) before the executor goes away
        running.request_stop()
        with contextlib.suppress(asyncio.CancelledError, asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(run), 15)
        await running.stop(0.5)
        if not run.done():
            run.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run
