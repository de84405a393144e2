"""The worker against a small fake HGO server (grpc.aio on port 0, in the test process).

The fake server speaks the real protocol (proto hgo.v1) but no round logic: the test
decides when to send tasks, RoundClosed and Stop, and the server records every chunk
with its arrival time, so pacing, contiguity, values, cancellation and reconnection are
checked against real gRPC traffic.
"""

from __future__ import annotations

import asyncio
import logging
import math
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from hgo_common import models, order, throttle, wire
from hgo_common.local import draw_batch, round_rng
from hgo_common.net.proto import hgo_pb2, hgo_pb2_grpc
from hgo_worker import pacing
from hgo_worker.client import Worker, WorkerConfig, parse_shard
from hgo_worker.metrics import WorkerMetrics
from tests.procs import ProcessGroup, console
from tests.wireclient import wait_for

P = 2000  # features: d = 2001 for logistic regression
N_ROWS = 300


def make_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N_ROWS, P)).astype(np.float32)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(np.float32)
    return X, y


def make_spec(max_chunk: int = 64) -> Any:
    return hgo_pb2.TrainingSpec(
        model="logistic",
        layer_sizes=[P, 1],
        dim=P + 1,
        order="flat",
        dataset="synthetic",
        n_features=P,
        n_classes=2,
        algorithm="hgo",
        max_chunk_values=max_chunk,
        seed=1,
        partition="iid",
        num_shards=1,
    )


@dataclass
class Chunk:
    round: int
    t_ms: float  # arrival time, ms after the server wrote the round's task
    offset: int
    values: np.ndarray


@dataclass
class FakeSession:
    context: Any
    join: Any
    worker_id: int
    session_id: str
    chunks: list[Chunk] = field(default_factory=list)
    task_sent: dict[int, float] = field(default_factory=dict)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    heartbeats: int = 0
    # one write at a time on the stream: the heartbeat task and the test both write, and
    # grpc.aio refuses overlapping writes (the overlap happened on a loaded machine)
    wlock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def write(self, msg: Any) -> None:
        async with self.wlock:
            await self.context.write(msg)

    async def task(self, rnd: int, w: np.ndarray, tau_ms: float, seed: int = 7) -> None:
        self.task_sent[rnd] = time.monotonic()
        msg = hgo_pb2.RoundTask(round=rnd, order_seed=seed, weights=wire.encode(w), tau_ms=tau_ms)
        await self.write(hgo_pb2.ServerMessage(task=msg))

    async def close_round(self, rnd: int) -> None:
        await self.write(hgo_pb2.ServerMessage(closed=hgo_pb2.RoundClosed(round=rnd)))

    async def stop(self, reason: str) -> None:
        await self.write(hgo_pb2.ServerMessage(stop=hgo_pb2.Stop(reason=reason)))

    def of_round(self, rnd: int) -> list[Chunk]:
        return [c for c in self.chunks if c.round == rnd]


class FakeHGO(hgo_pb2_grpc.HGOServicer):
    def __init__(self, X: np.ndarray, y: np.ndarray, spec: Any, heartbeat_ms: int = 200) -> None:
        self.X, self.y, self.spec, self.heartbeat_ms = X, y, spec, heartbeat_ms
        self.sessions: list[FakeSession] = []
        self.joined: asyncio.Queue[FakeSession] = asyncio.Queue()

    async def Session(self, request_iterator: Any, context: Any) -> None:
        first = await context.read()
        assert first.WhichOneof("kind") == "join", first
        sess = FakeSession(context, first.join, len(self.sessions), f"{len(self.sessions):032x}")
        self.sessions.append(sess)
        welcome = hgo_pb2.Welcome(
            session_id=sess.session_id,
            worker_id=sess.worker_id,
            spec=self.spec,
            heartbeat_ms=self.heartbeat_ms,
        )
        await context.write(hgo_pb2.ServerMessage(welcome=welcome))
        if first.join.wants_shard:
            step = 100  # several parts, to exercise reassembly
            for lo in range(0, len(self.y), step):
                hi = min(len(self.y), lo + step)
                part = hgo_pb2.ShardPart(
                    row_offset=lo,
                    rows=hi - lo,
                    cols=self.X.shape[1],
                    features=wire.encode(self.X[lo:hi]),
                    labels=wire.encode(self.y[lo:hi]),
                    last=hi == len(self.y),
                    total_rows=len(self.y),
                )
                await context.write(hgo_pb2.ServerMessage(shard=part))
        self.joined.put_nowait(sess)

        async def beat() -> None:
            while True:
                await asyncio.sleep(self.heartbeat_ms / 1000)
                hb = hgo_pb2.Heartbeat(unix_ns=time.time_ns())
                await sess.write(hgo_pb2.ServerMessage(heartbeat=hb))

        beats = asyncio.create_task(beat())
        try:
            while True:
                msg = await context.read()
                if msg is grpc.aio.EOF:
                    break
                kind = msg.WhichOneof("kind")
                if kind == "chunk":
                    c = msg.chunk
                    assert c.session_id == sess.session_id
                    t = (time.monotonic() - sess.task_sent[c.round]) * 1000.0
                    sess.chunks.append(Chunk(c.round, t, c.offset, wire.decode(c.values).copy()))
                elif kind == "heartbeat":
                    sess.heartbeats += 1
        finally:
            beats.cancel()
            sess.ended.set()


async def start_fake(fake: FakeHGO, port: int = 0) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    hgo_pb2_grpc.add_HGOServicer_to_server(fake, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, bound


def expected_values(
    sess: FakeSession, seed: int, rnd: int, w: np.ndarray, X: np.ndarray, y: np.ndarray, order_seed: int = 7
) -> np.ndarray:
    """The gradient the worker must send in C_k order (same batch draw as the worker)."""
    model = models.create("logistic", n_features=P)
    idx = draw_batch(len(y), 10, round_rng(seed, rnd, salt=sess.worker_id))
    c_k = order.make_order(order_seed, P + 1, "flat")
    return model.gradient(w.astype(np.float32).astype(np.float64), X[idx], y[idx])[c_k]


async def settle(sess: FakeSession, rnd: int, *, quiet: float = 0.4, timeout: float = 20.0) -> list[Chunk]:
    """The round's chunks once they stopped coming (a loaded machine may start the worker late)."""
    t0 = time.monotonic()
    seen, since = -1, time.monotonic()
    while time.monotonic() - t0 < timeout:
        n = len(sess.of_round(rnd))
        if n != seen:
            seen, since = n, time.monotonic()
        elif n > 0 and time.monotonic() - since >= quiet:
            break
        await asyncio.sleep(0.05)
    return sess.of_round(rnd)


def check_contiguous(chunks: list[Chunk], max_chunk: int) -> int:
    pos = 0
    for c in chunks:
        assert c.offset == pos, f"chunk at offset {c.offset}, expected {pos}"
        assert 1 <= len(c.values) <= max_chunk
        pos += len(c.values)
    return pos


# ------------------------------------------------------------------ pure schedule


def test_schedule_never_allows_more_than_the_throttle() -> None:
    s = pacing.Schedule(rate=50.0, batch_size=10, d=2001, tau_ms=200.0, max_chunk=64)
    for t in np.linspace(0, 300, 301):
        assert s.allowed(t) == min(2001, throttle.released(t, 50.0, 10, 2001))
    assert s.expected() == throttle.expected_prefix(50.0, 200.0, 10, 2001) == 1000
    # Wakes are in the future, end at the deadline, and include the flush before it.
    wakes, t, sent = [], 0.0, 0
    while (nxt := s.next_wake_ms(sent, t)) is not None:
        assert nxt >= t
        wakes.append(nxt)
        sent, t = s.allowed(nxt), nxt + 1e-9
    assert wakes[-1] <= 200.0
    assert any(abs(w - (200.0 - s.margin_ms)) < 1e-6 for w in wakes)
    assert s.chunks(10, 140) == [(10, 74), (74, 138), (138, 140)]


def test_schedule_unthrottled_and_capped() -> None:
    s = pacing.Schedule(rate=0.0, batch_size=32, d=500, tau_ms=math.inf, max_chunk=128, cap=300)
    assert s.allowed(0.0) == 300 and s.next_wake_ms(0, 0.0) == 0.0
    assert s.next_wake_ms(300, 0.0) is None
    with pytest.raises(ValueError, match="cap must be in"):
        pacing.Schedule(rate=1.0, batch_size=1, d=10, tau_ms=5.0, max_chunk=4, cap=11)


def test_config_validation_names_values() -> None:
    with pytest.raises(ValueError, match="'nohost'"):
        WorkerConfig(server="nohost").validate()
    with pytest.raises(ValueError, match="'turbo'"):
        WorkerConfig(server="h:1", profile="turbo").validate()
    with pytest.raises(ValueError, match="-3"):
        WorkerConfig(server="h:1", rate=-3.0).validate()
    with pytest.raises(ValueError, match="'3/3'"):
        parse_shard("3/3")
    assert parse_shard("2/5") == (2, 5) and parse_shard("auto") is None
    with pytest.raises(ValueError, match="bogus"):
        WorkerConfig(server="h:1", byzantine="bogus").validate()


# ------------------------------------------------------------------ against the fake server


@pytest.fixture
async def fake() -> Any:
    X, y = make_data()
    f = FakeHGO(X, y, make_spec())
    server, port = await start_fake(f)
    f.port = port  # type: ignore[attr-defined]
    f.server = server  # type: ignore[attr-defined]
    yield f
    await server.stop(None)


async def _start_worker(
    port: int, metrics: WorkerMetrics | None = None, **kw: Any
) -> tuple[Worker, asyncio.Task[int]]:
    cfg = WorkerConfig(server=f"127.0.0.1:{port}", batch_size=10, seed=3, reconnect_timeout=10.0, **kw)
    worker = Worker(cfg, metrics=metrics)
    return worker, asyncio.create_task(worker.run())


async def test_pacing_contiguity_and_values(fake: Any) -> None:
    # 0.5 coordinates per ms: 1500 of d = 2001 by the deadline (3 s, so that a worker a
    # loaded machine wakes late still releases most of its prefix before the deadline)
    rate, tau = 5.0, 3000.0
    worker, run = await _start_worker(fake.port, rate=rate, profile="custom")
    sess = await asyncio.wait_for(fake.joined.get(), 10)
    assert sess.join.rate == rate and sess.join.batch_size == 10 and sess.join.wants_shard
    w = np.random.default_rng(1).normal(scale=0.01, size=P + 1)
    await sess.task(0, w, tau)
    chunks = await settle(sess, 0)
    prefix = check_contiguous(chunks, 64)
    # Never ahead of the throttle: the worker's clock starts when it receives the task,
    # after the server's, so lateness can only lower the released count.
    for c in chunks:
        assert c.offset + len(c.values) <= throttle.released(c.t_ms, rate, 10, P + 1), (c.t_ms, c.offset)
    # Nothing released past the local deadline: the prefix stops at released(tau) = 1500,
    # however late the chunks arrive (a worker woken after its deadline still sends what was
    # released by it, never more: hgo_worker.client WorkerSession._release); a real prefix.
    assert 0.5 * 1500 <= prefix <= 1500 == throttle.released(tau, rate, 10, P + 1)
    got = np.concatenate([c.values for c in chunks])
    want = expected_values(sess, worker.seed, 0, w, fake.X, fake.y)[:prefix]
    np.testing.assert_allclose(got, want.astype(np.float32), rtol=1e-4, atol=1e-6)
    await sess.stop("done")
    assert await asyncio.wait_for(run, 10) == 0


async def test_stops_on_round_closed_and_ignores_served_rounds(fake: Any) -> None:
    # 0.2 coordinates per ms: d = 2001 would take 10 s (the deadline); a chunk every 320 ms
    worker, run = await _start_worker(fake.port, rate=2.0, profile="custom")
    sess = await asyncio.wait_for(fake.joined.get(), 10)
    w = np.zeros(P + 1)
    await sess.task(5, w, 10_000.0)
    # until the worker is streaming (it may start late on a loaded machine)
    await wait_for(lambda: len(sess.of_round(5)) >= 2, timeout=60, what="the worker streaming round 5")
    await sess.close_round(5)
    t_closed = (time.monotonic() - sess.task_sent[5]) * 1000
    # The stream stops: no chunk for 1.5 s (the throttle would allow one every 320 ms),
    # chunks in flight at the close may still land first. A worker that ignored the close
    # would stream until its deadline, to about d.
    chunks = await settle(sess, 5, quiet=1.5, timeout=60.0)
    assert chunks, "the worker sent nothing"
    # ended within seconds of the close (a loaded machine delays it), far below d
    prefix = check_contiguous(chunks, 64)
    assert prefix <= throttle.released(t_closed + 3000, 2.0, 10, P + 1) < (P + 1) // 2, (prefix, t_closed)
    # A duplicate task for a round this session already served is ignored.
    await sess.task(5, w, 10_000.0)
    await asyncio.sleep(0.3)
    assert len(sess.of_round(5)) == len(chunks)
    assert sess.heartbeats >= 1  # heartbeat_ms = 200
    await sess.stop("done")
    assert await asyncio.wait_for(run, 10) == 0
    assert worker.sessions == 1


async def test_unthrottled_sends_everything_in_max_size_chunks(fake: Any) -> None:
    worker, run = await _start_worker(fake.port, rate=0.0, profile="custom")
    sess = await asyncio.wait_for(fake.joined.get(), 10)
    w = np.random.default_rng(2).normal(scale=0.01, size=P + 1)
    await sess.task(1, w, 60.0)
    chunks = await settle(sess, 1)
    assert check_contiguous(chunks, 64) == P + 1
    assert sum(len(c.values) == 64 for c in chunks) >= (P + 1) // 64
    want = expected_values(sess, worker.seed, 1, w, fake.X, fake.y)
    np.testing.assert_allclose(np.concatenate([c.values for c in chunks]), want, rtol=1e-4, atol=1e-6)
    await sess.stop("done")
    assert await asyncio.wait_for(run, 10) == 0


async def test_reconnects_after_server_restart() -> None:
    X, y = make_data()
    fake = FakeHGO(X, y, make_spec())
    server, port = await start_fake(fake)
    metrics = WorkerMetrics("custom", enabled=True)
    worker, run = await _start_worker(port, metrics=metrics, rate=0.0, profile="custom")

    def reconnects() -> float | None:
        return metrics.registry.get_sample_value("hgo_worker_reconnects_total", {"profile": "custom"})

    first = await asyncio.wait_for(fake.joined.get(), 10)
    assert reconnects() == 0
    await first.stop("server shutting down")  # not "done": the worker must come back
    await server.stop(None)
    await asyncio.sleep(1.5)  # several failed attempts (backoff from 0.1 s): none is a reconnect
    assert not run.done()
    assert reconnects() == 0
    fake2 = FakeHGO(X, y, make_spec())
    server2, port2 = await start_fake(fake2, port)
    try:
        assert port2 == port
        second = await asyncio.wait_for(fake2.joined.get(), 15)
        # the worker counts the session once it has its shard
        await wait_for(lambda: worker.sessions == 2, timeout=60, what="the second session counted")
        assert reconnects() == 1  # one session re-established, however many attempts it took
        await second.task(0, np.zeros(P + 1), 100.0)
        assert check_contiguous(await settle(second, 0), 64) == P + 1
        await second.stop("done")
        assert await asyncio.wait_for(run, 10) == 0
    finally:
        await server2.stop(None)


async def test_gives_up_after_reconnect_timeout() -> None:
    from tests.procs import free_port

    cfg = WorkerConfig(server=f"127.0.0.1:{free_port()}", rate=0.0, profile="custom", reconnect_timeout=1.0)
    t0 = time.monotonic()
    assert await asyncio.wait_for(Worker(cfg).run(), 15) == 1
    assert time.monotonic() - t0 >= 1.0


async def test_byzantine_full_prefix_and_silent(fake: Any) -> None:
    byz, run_b = await _start_worker(
        fake.port, rate=10.0, profile="custom", byzantine="sign-flip", attack_params={"full": 1}, name="byz"
    )
    silent, run_s = await _start_worker(
        fake.port, rate=0.0, profile="custom", byzantine="silent", name="silent"
    )
    sessions = {}
    for _ in range(2):
        s = await asyncio.wait_for(fake.joined.get(), 10)
        sessions[s.join.name] = s
    assert all(s.join.byzantine for s in sessions.values())
    w = np.random.default_rng(3).normal(scale=0.01, size=P + 1)
    for s in sessions.values():
        await s.task(0, w, 100.0)
    sb, ss = sessions[byz.name], sessions[silent.name]
    await settle(sb, 0)
    # full=1: all d at once although its throttle (1 coordinate per ms) allows 100 by tau.
    assert check_contiguous(sb.of_round(0), 64) == P + 1
    sent = np.concatenate([c.values for c in sb.of_round(0)])
    honest = expected_values(sb, byz.seed, 0, w, fake.X, fake.y)
    assert np.dot(sent, honest) < 0  # sign-flip of (an estimate of) the honest gradient
    assert ss.of_round(0) == []
    for s in sessions.values():
        await s.stop("done")
    assert await asyncio.wait_for(run_b, 10) == 0
    assert await asyncio.wait_for(run_s, 10) == 0


def test_cli_exits_zero_on_stop_done(procs: ProcessGroup) -> None:
    """The real hgo-worker process against a fake server running in a helper thread's loop."""
    import threading

    ready: dict[str, Any] = {}
    stop_evt = threading.Event()

    def serve() -> None:
        async def main() -> None:
            X, y = make_data()
            fake = FakeHGO(X, y, make_spec())
            server, port = await start_fake(fake)
            ready["port"] = port
            sess = await asyncio.wait_for(fake.joined.get(), 30)
            ready["join"] = sess.join
            await sess.task(0, np.zeros(P + 1), 50.0)
            ready["prefix"] = check_contiguous(await settle(sess, 0, timeout=60.0), 64)
            await sess.stop("done")
            await asyncio.wait_for(sess.ended.wait(), 10)
            while not stop_evt.is_set():
                await asyncio.sleep(0.05)
            await server.stop(None)

        asyncio.run(main())

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    try:
        for _ in range(100):
            if "port" in ready:
                break
            time.sleep(0.05)
        proc = procs.start(
            [
                *console("hgo-worker"),
                "--server",
                f"127.0.0.1:{ready['port']}",
                "--profile",
                "weak",
                "--batch-size",
                "10",
                "--seed",
                "4",
                "--name",
                "cli-worker",
            ],
            name="worker",
        )
        assert procs.wait(proc, 60) == 0, procs.log(proc)
        assert ready["join"].profile == "weak" and ready["join"].name == "cli-worker"
        assert ready["join"].rate > 0
        # weak: lambda ~ 500 per ms per point -> about 50 coordinates per ms at s = 10.
        assert 0 < ready["prefix"] <= throttle.released(350.0, ready["join"].rate, 10, P + 1)
    finally:
        stop_evt.set()
        th.join(10)


def test_cli_rejects_bad_flags_with_named_values() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "hgo_worker.cli", "--server", "127.0.0.1:1", "--shard", "7/2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "'7/2'" in out.stderr
    out = subprocess.run(
        [sys.executable, "-m", "hgo_worker.cli", "--server", "127.0.0.1:1", "--rate", "fast"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "'fast'" in out.stderr


async def test_budget_policy_sets_batch_and_prefix(fake: Any) -> None:
    from hgo_common import budget

    rate, tau = 50.0, 300.0
    plan = budget.plan("coordinates-first", rate=rate, tau_ms=tau, d=P + 1, batch_size=10, max_batch=N_ROWS)
    # coordinates-first shrinks the mini-batch until the whole gradient fits the budget
    assert plan.batch_size < 10 and plan.coords == P + 1
    _, run = await _start_worker(fake.port, rate=rate, profile="custom", budget_policy="coordinates-first")
    sess = await asyncio.wait_for(fake.joined.get(), 10)
    await sess.task(0, np.zeros(P + 1), tau)
    chunks = await settle(sess, 0)
    prefix = check_contiguous(chunks, 64)
    assert 0.5 * plan.coords <= prefix <= plan.coords
    for c in chunks:
        assert c.offset + len(c.values) <= throttle.released(c.t_ms, rate, plan.batch_size, P + 1)
    await sess.stop("done")
    assert await asyncio.wait_for(run, 10) == 0


async def test_metrics_follow_the_contract(fake: Any) -> None:
    import urllib.request

    from hgo_worker.metrics import WorkerMetrics

    metrics = WorkerMetrics("custom", enabled=True)
    port = metrics.serve(0, addr="127.0.0.1")
    cfg = WorkerConfig(server=f"127.0.0.1:{fake.port}", rate=0.0, profile="custom", batch_size=10, seed=1)
    run = asyncio.create_task(Worker(cfg, metrics=metrics).run())
    sess = await asyncio.wait_for(fake.joined.get(), 10)
    await sess.task(0, np.zeros(P + 1), 100.0)
    await settle(sess, 0)
    body = await asyncio.to_thread(
        lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    )
    values = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in body.splitlines()
        if line.startswith(("hgo_", "process_"))
    }
    lab = '{profile="custom"}'
    assert values[f"hgo_worker_coordinates_sent_total{lab}"] == P + 1
    assert values[f"hgo_worker_coordinates_computed_total{lab}"] >= P + 1
    assert values[f"hgo_worker_rounds_total{lab}"] == 1
    assert values[f"hgo_worker_connected{lab}"] == 1
    assert values[f"hgo_worker_rate_per_second{lab}"] == 0
    assert values["process_resident_memory_bytes"] > 0 and "process_cpu_seconds_total" in values
    assert f"hgo_worker_reconnects_total{lab}" in values
    await sess.stop("done")
    assert await asyncio.wait_for(run, 10) == 0


async def test_own_shard_loads_the_same_split_as_the_server() -> None:
    """--shard i/n: the worker rebuilds its shard from the spec (dataset, partition, seed) itself."""
    from hgo_common import datasets

    spec = hgo_pb2.TrainingSpec(
        model="logistic", layer_sizes=[64, 1], dim=65, order="flat", dataset="digits-binary", n_features=64,
        n_classes=2, algorithm="hgo", max_chunk_values=64, seed=1, partition="iid", num_shards=4,
    )  # fmt: skip
    fake = FakeHGO(np.zeros((1, 64), np.float32), np.zeros(1, np.float32), spec)
    server, port = await start_fake(fake)
    try:
        worker, run = await _start_worker(port, rate=0.0, profile="custom", shard="2/4")
        sess = await asyncio.wait_for(fake.joined.get(), 30)
        assert not sess.join.wants_shard
        w = np.random.default_rng(5).normal(scale=0.1, size=65)
        await sess.task(3, w, 100.0)
        got = np.concatenate([c.values for c in await settle(sess, 3)])
        ds = datasets.load("digits-binary", seed=1)
        rows = datasets.partition(ds.y_train, 4, "iid", np.random.default_rng(1))[2]
        X, y = ds.X_train[rows], ds.y_train[rows]
        idx = draw_batch(len(y), 10, round_rng(worker.seed, 3, salt=sess.worker_id))
        want = models.create("logistic", n_features=64).gradient(w.astype(np.float32).astype(np.float64),
                                                                  X[idx], y[idx])  # fmt: skip
        np.testing.assert_allclose(got, want[order.make_order(7, 65, "flat")], rtol=1e-4, atol=1e-6)
        await sess.stop("done")
        assert await asyncio.wait_for(run, 10) == 0
    finally:
        await server.stop(None)


async def test_round_closed_for_a_later_round_stops_the_current_one(fake: Any) -> None:
    """The server coalesces the RoundClosed messages queued for a slow reader into the
    newest one (hgo_server.server.Outbox): RoundClosed{k} must end the work of any round
    <= k at once (not at its local deadline), and a task for a closed round is not served."""
    worker, run = await _start_worker(fake.port, rate=1.0, profile="custom")  # d takes 20 s
    sess = await asyncio.wait_for(fake.joined.get(), 10)
    w = np.zeros(P + 1)
    await sess.task(5, w, 20_000.0)
    await wait_for(lambda: sess.of_round(5), timeout=15, what="the worker streaming round 5")
    assert worker.rounds_served == 0  # round 5 runs until its 20 s deadline or a close
    await sess.close_round(7)  # rounds 5 and 6 are over too
    # served by the close, well before the round's 20 s local deadline
    await wait_for(lambda: worker.rounds_served == 1, timeout=15, what="round 5 to end on RoundClosed{7}")
    assert time.monotonic() - sess.task_sent[5] < 19.0
    await sess.task(6, w, 20_000.0)  # a task that reached the worker after its round's close
    await asyncio.sleep(0.5)
    assert sess.of_round(6) == [] and worker.rounds_served == 1
    await sess.stop("done")
    assert await asyncio.wait_for(run, 10) == 0


async def test_mlp_gradient_in_stratified_order_on_a_fresh_batch_each_round() -> None:
    """What a real worker sends for an MLP, recomputed: round k's values at offset t are
    d/dw[C_k[t]] of the mean loss on the mini-batch round_rng(seed, k, worker_id) draws,
    at the float32 w_k of the task, with C_k the *stratified* order of the spec's groups."""
    p, hidden, classes, n = 12, 7, 3, 200
    rng = np.random.default_rng(11)
    X = rng.normal(size=(n, p)).astype(np.float32)
    y = rng.integers(0, classes, size=n).astype(np.float32)
    model = models.create("mlp", n_features=p, n_classes=classes, hidden=(hidden,))
    spec = hgo_pb2.TrainingSpec(
        model="mlp", layer_sizes=[p, hidden, classes], dim=model.dim, order="stratified",
        groups=list(model.groups), dataset="synthetic", n_features=p, n_classes=classes,
        algorithm="hgo", max_chunk_values=16, seed=1, partition="iid", num_shards=1,
    )  # fmt: skip
    fake = FakeHGO(X, y, spec)
    server, port = await start_fake(fake)
    try:
        worker, run = await _start_worker(port, rate=0.0, profile="custom")
        sess = await asyncio.wait_for(fake.joined.get(), 10)
        batches = []
        for k, seed in ((4, 21), (5, 22)):
            w = rng.normal(scale=0.3, size=model.dim)
            await sess.task(k, w, 200.0, seed=seed)
            got = np.concatenate([c.values for c in await settle(sess, k)])
            assert check_contiguous(sess.of_round(k), 16) == model.dim
            idx = draw_batch(n, 10, round_rng(worker.seed, k, salt=sess.worker_id))
            batches.append(set(idx.tolist()))
            c_k = order.make_order(seed, model.dim, "stratified", model.groups)
            assert not np.array_equal(c_k, order.make_order(seed, model.dim, "flat"))
            w32 = w.astype(np.float32).astype(np.float64)
            want = model.gradient(w32, X[idx], y[idx].astype(np.int64))[c_k]
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
            # Independent of the model's own backprop: finite differences at a few positions.
            for t in (0, 1, model.dim // 2, model.dim - 1):
                e = np.zeros(model.dim)
                e[c_k[t]] = 1e-5
                fd = (model.loss(w32 + e, X[idx], y[idx]) - model.loss(w32 - e, X[idx], y[idx])) / 2e-5
                assert abs(got[t] - fd) <= 1e-3 * max(1.0, abs(fd)), (t, got[t], fd)
        assert batches[0] != batches[1] and all(len(b) == 10 for b in batches)  # a fresh batch per round
        await sess.stop("done")
        assert await asyncio.wait_for(run, 10) == 0
    finally:
        await server.stop(None)


async def test_throttled_byzantine_sends_the_attack_on_exactly_its_prefix(fake: Any) -> None:
    """sign-flip without full=1: the worker's own throttle sets the prefix k (1500 of 2001
    here) and the value at offset t is the attack's value for coordinate C_k[t]: minus the
    mean of 5 gradient estimates on mini-batches drawn from the round's generator."""
    rate, tau = 50.0, 300.0
    byz, run = await _start_worker(fake.port, rate=rate, profile="custom", byzantine="sign-flip")
    sess = await asyncio.wait_for(fake.joined.get(), 10)
    w = np.random.default_rng(8).normal(scale=0.01, size=P + 1)
    await sess.task(2, w, tau)
    chunks = await settle(sess, 2)
    k = throttle.expected_prefix(rate, tau, 10, P + 1)
    assert check_contiguous(chunks, 64) == k == 1500
    for c in chunks:
        assert c.offset + len(c.values) <= throttle.released(c.t_ms, rate, 10, P + 1)
    got = np.concatenate([c.values for c in chunks])
    model = models.create("logistic", n_features=P)
    rng = round_rng(byz.seed, 2, salt=sess.worker_id)
    c_k = order.make_order(7, P + 1, "flat")
    w32 = w.astype(np.float32).astype(np.float64)
    honest = np.stack(
        [
            model.gradient(w32, fake.X[i], fake.y[i])[c_k[:k]]
            for i in (draw_batch(N_ROWS, 10, rng) for _ in range(5))
        ]
    )
    np.testing.assert_allclose(got, -honest.mean(axis=0), rtol=1e-4, atol=1e-6)
    await sess.stop("done")
    assert await asyncio.wait_for(run, 10) == 0


async def test_label_flip_worker_trains_on_flipped_labels(fake: Any) -> None:
    worker, run = await _start_worker(fake.port, rate=0.0, profile="custom", byzantine="label-flip")
    sess = await asyncio.wait_for(fake.joined.get(), 10)
    assert sess.join.byzantine
    w = np.random.default_rng(9).normal(scale=0.01, size=P + 1)
    await sess.task(0, w, 100.0)
    got = np.concatenate([c.values for c in await settle(sess, 0)])
    flipped = fake.y.copy()
    flipped = 1.0 - flipped  # binary: y -> n_classes - 1 - y
    honest = expected_values(sess, worker.seed, 0, w, fake.X, fake.y)
    want = expected_values(sess, worker.seed, 0, w, fake.X, flipped)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert not np.allclose(got, honest, rtol=1e-2, atol=1e-4)
    await sess.stop("done")
    assert await asyncio.wait_for(run, 10) == 0


async def test_nan_worker_gets_an_empty_prefix_on_the_real_server(tmp_path: Any) -> None:
    """A real worker with --byzantine nan against the real server (in-process, port 0):
    the non-finite policy cuts its prefix to 0, the honest worker's gradient is the update."""
    from hgo_server import config as server_config
    from hgo_server.servicer import start_server

    cfg = server_config.from_mapping(
        {"port": 0, "dataset": "breast-cancer", "model": "logistic", "q": 2, "v": 1, "tau": "2s",
         "rounds": 1, "min_workers": 2, "seed": 3, "eval_every": 0, "log": str(tmp_path / "r.jsonl")}
    )  # fmt: skip
    running, port = await start_server(cfg)
    runs = []
    try:
        for name, byz in (("honest", None), ("nan", "nan")):
            cfg_w = WorkerConfig(
                server=f"127.0.0.1:{port}", batch_size=8, seed=5, rate=0.0, profile="custom",
                byzantine=byz, name=name, reconnect_timeout=5.0,
            )  # fmt: skip
            runs.append(asyncio.create_task(Worker(cfg_w).run()))
            # join in a known order: worker ids 0 (honest), 1 (nan)
            await wait_for(lambda: len(running.core.sessions) == len(runs), timeout=60, what="the next join")
        summary = await asyncio.wait_for(running.run(), 30)
        assert summary.completed
        assert [await asyncio.wait_for(r, 10) for r in runs] == [0, 0]
        rejected = running.core.metrics.registry.get_sample_value(
            "hgo_rejected_messages_total", {"reason": "non-finite"}
        )
        assert rejected is not None and rejected >= 1
        from hgo_common.roundlog import read as read_log

        (rec,) = read_log(tmp_path / "r.jsonl")
        d = running.core.d
        got = [(x["id"], x["prefix"], x["byzantine"]) for x in rec["workers"]]
        assert got == [(0, d, False), (1, 0, True)]
        assert running.core.last_block == d  # v = 1: the honest full gradient
        assert np.isfinite(running.core.weights).all()
        assert not np.allclose(running.core.weights, running.core.setup.w0)
    finally:
        for r in runs:
            r.cancel()
        await running.stop(grace=0.5)


async def test_release_by_the_workers_own_clock_never_exceeds_the_throttle() -> None:
    """The throttle checked without transport slack: every chunk handed to the writer at
    time t (worker clock, from the task's arrival) ends at or below
    throttle.released(t, rate, s, d); and by the deadline the whole expected prefix is out."""
    from types import SimpleNamespace

    from hgo_common.local import RoundGradient
    from hgo_worker.client import WorkerSession
    from hgo_worker.metrics import WorkerMetrics

    loop = asyncio.get_running_loop()
    X, y = make_data()
    model = models.create("logistic", n_features=P)
    c_k = order.make_order(7, P + 1, "flat")
    rate, s, tau = 40.0, 10, 250.0  # 4 coordinates per ms: 1000 of 2001 by tau
    sched = pacing.Schedule(rate, s, P + 1, tau, 64)
    sent: list[tuple[float, int, int]] = []
    t0 = loop.time()

    class Out:
        async def put(self, msg: Any) -> None:
            t = (loop.time() - t0) * 1000.0
            sent.append((t, msg.offset, msg.offset + len(msg.values) // 4))  # a net.messages.Chunk

    sess = object.__new__(WorkerSession)
    sess.w = SimpleNamespace(metrics=WorkerMetrics("custom"), trace=None)  # type: ignore[assignment]
    sess.welcome = SimpleNamespace(session_id="s" * 32)
    sess.loop = loop  # type: ignore[misc]
    sess.out = Out()  # type: ignore[assignment]
    source = RoundGradient(model, np.zeros(P + 1), X[:s], y[:s], c_k, sched.limit)
    await sess._release(0, sched, source, t0)
    assert sent and sent[0][1] == 0
    for (_, a, _), (_, _, prev_end) in zip(sent[1:], sent, strict=False):
        assert a == prev_end  # contiguous
    for t, _, end in sent:
        assert end <= throttle.released(t, rate, s, P + 1), (t, end)
    assert sent[-1][2] == throttle.expected_prefix(rate, tau, s, P + 1) == 1000


@pytest.mark.parametrize(
    ("dataset", "with_dir", "problem"),
    [
        ("mnist", True, "no data file found"),  # --data-dir lacks the files
        ("mnist", False, "pass data_dir"),  # a file dataset and no --data-dir at all
        ("imagenet", True, "unknown dataset"),  # a dataset this worker does not know
    ],
)
async def test_own_shard_that_cannot_load_exits_2_naming_dataset_and_dir(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, dataset: str, with_dir: bool, problem: str
) -> None:
    """--shard i/n and the shard cannot be loaded here: a local failure (exit 2, once, with
    the dataset, the data dir and the problem), not "rejected by the server" (exit 3)."""
    log = logging.getLogger("hgo_worker")  # hgo_worker.client's logger
    spec = hgo_pb2.TrainingSpec(
        model="logistic", layer_sizes=[784, 1], dim=785, order="flat", dataset=dataset, n_features=784,
        n_classes=2, algorithm="hgo", max_chunk_values=64, seed=1, partition="iid", num_shards=2,
    )  # fmt: skip
    fake = FakeHGO(np.zeros((1, 784), np.float32), np.zeros(1, np.float32), spec)
    server, port = await start_fake(fake)
    empty = tmp_path / "empty-data"
    empty.mkdir()
    try:
        caplog.set_level(logging.INFO, logger="hgo_worker")
        extra: dict[str, Any] = {"data_dir": empty} if with_dir else {}
        _, run = await _start_worker(port, rate=0.0, profile="custom", shard="1/2", **extra)
        assert await asyncio.wait_for(run, 30) == 2
        assert len(fake.sessions) == 1  # not retried
        # the worker's own errors: grpc's poller of an earlier test's closed loop may log an
        # asyncio error here when a loaded machine runs it late
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR and r.name == log.name]
        assert len(errors) == 1, errors
        msg = errors[0]
        assert "rejected" not in msg
        assert f"--shard 1/2: cannot load dataset {dataset!r}" in msg and problem in msg, msg
        assert (str(empty) in msg) if with_dir else ("no --data-dir" in msg), msg
    finally:
        await server.stop(None)
