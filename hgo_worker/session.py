"""One welcomed session of a worker: the reader, writer and heartbeat tasks, and each round
it serves (the protocol is described in :mod:`hgo_worker.client`).

The round's values come from ``hgo_common.local``; when they may go out, from
:mod:`hgo_worker.pacing`; federated evaluation from :mod:`hgo_worker.evaluate`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import math
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import grpc
import numpy as np

from hgo_common import local, wire
from hgo_common.errors import HGOError
from hgo_common.local import LocalConfig
from hgo_common.models import ModelProtocol
from hgo_common.net import messages as msgs
from hgo_common.net import protocol
from hgo_common.net.mapping import SessionStream

from . import checks, evaluate
from .compute import cached_order
from .metrics import WorkerMetrics
from .pacing import RoundMeter, Schedule

log = logging.getLogger("hgo_worker")

SILENT_INTERVALS = 3
READER_GRACE_S = 1.0
OFFLOAD_DIM = 1 << 18
"""From this d on, a round's CPU work (C_k's expansion, w_k's decoding, the gradient) runs
in the session's own worker thread, so that its event loop keeps reading and heartbeating.
At d = 1,702,794 (the cnn-cifar model) the first stratified expansion costs ~4 s of CPU and
a backward pass 0.1 s; on a machine at load 25 that silenced the loop past the server's 3
heartbeat intervals and all three workers were dropped in round 0. Below it (every numpy
model of the paper) the work stays on the loop as before: milliseconds, no thread hop."""
_T = TypeVar("_T")


class SessionLost(HGOError):
    """The session ended without ``Stop{done}``: reconnect."""


class Rejected(HGOError):
    """The server refused this worker for good: do not reconnect."""


class LocalDataError(HGOError):
    """``--shard i/n``: this worker cannot load its own shard. Local, so not retried.

    Not a ValueError on purpose: the handshake turns ValueErrors (a spec the worker
    cannot train) into :class:`Rejected`, which would blame the server.
    """


class SessionOwner(Protocol):
    """What a session reads of the worker identity that owns it (:class:`hgo_worker.client.Worker`)."""

    name: str
    seed: int
    local_cfg: LocalConfig
    behaviour: Any
    metrics: WorkerMetrics
    trace: list[tuple[str, int, float]] | None
    rounds_served: int


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


def _round_inputs(task: msgs.Task, spec: msgs.Spec) -> tuple[np.ndarray, np.ndarray]:
    """C_k and w_k (float64) of a task: a pass over d each."""
    c_k = cached_order(task.order_seed, spec.dim, spec.order or "flat", spec.groups)
    return c_k, wire.decode(task.weights, spec.dim).astype(np.float64)


class WorkerSession:
    """The three tasks of a welcomed session (reader, writer, heartbeat)."""

    cpu: concurrent.futures.ThreadPoolExecutor | None = None  # see __init__

    def __init__(
        self,
        worker: SessionOwner,
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
        # One thread, so a cancelled round's gradient finishes before the next one starts
        # (a torch model's parameters are shared state); None below OFFLOAD_DIM.
        if self.spec.dim >= OFFLOAD_DIM:
            self.cpu = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"{worker.name}-cpu")
            # Warm C_k's per-model pattern (seconds at d = 1.7 M) before the first task needs it.
            self.cpu.submit(cached_order, 0, self.spec.dim, self.spec.order or "flat", self.spec.groups)

    async def _on_cpu(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """``fn(*args, **kwargs)`` in the session's CPU thread when it has one, else right here."""
        if self.cpu is None:
            return fn(*args, **kwargs)
        return await self.loop.run_in_executor(self.cpu, functools.partial(fn, *args, **kwargs))

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
            if self.cpu is not None:
                self.cpu.shutdown(wait=False, cancel_futures=True)

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
            c_k, weights = await self._on_cpu(_round_inputs, task, spec)
            if task.evaluate:
                await self._evaluate(task.round, weights)
            rng = local.round_rng(w.seed, task.round, salt=self.welcome.worker_id)
            t_step = time.perf_counter()
            work = await self._on_cpu(
                local.local_step,
                self.model, weights, self.X, self.y, c_k, tau, w.local_cfg, rng, byzantine=w.behaviour,
            )  # fmt: skip
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
        self,
        rnd: int,
        sched: Schedule,
        source: local.RoundGradient | local.Precomputed,
        t0: float,
        meter: RoundMeter | None = None,
    ) -> None:
        """Compute in pieces and emit no more than the schedule allows, until done or cancelled."""
        metrics = self.w.metrics
        sid = self.welcome.session_id

        def elapsed() -> float:
            return (self.loop.time() - t0) * 1000.0

        async def compute_to(n: int) -> None:
            before, t_piece = source.computed, time.perf_counter()
            await self._on_cpu(source.ensure, n)
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
                    await compute_to(allowed)  # one piece: send it before computing more
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
                await compute_to(ahead)
                await asyncio.sleep(0)
            delay = wake - elapsed()
            if delay > 0:
                await asyncio.sleep(delay / 1000.0)
