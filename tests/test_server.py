"""hgo-server over real gRPC: a grpc.aio server on port 0 in-process, hand-written clients.

Each fake worker speaks hgo.v1 directly (no hgo_worker code), so these tests pin the
server side of the protocol: exact updates, late and illegal chunks, status codes,
the sgd baselines, heartbeats, shards; plus one test of the real `hgo-server` process
under SIGTERM. Model: logistic regression on breast-cancer (d = 31).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import numpy as np
import pytest

from hgo_common import datasets, order, rounds, wire
from hgo_common.net.proto import hgo_pb2, hgo_pb2_grpc
from hgo_common.roundlog import read as read_log
from hgo_server import config as server_config
from hgo_server.servicer import RunningServer, start_server
from hgo_server.setup import Setup, load_setup
from tests.procs import ProcessGroup, console, free_port

D = 31  # logistic regression on breast-cancer: 30 weights + 1 bias
# secret_seed = seed: these tests check the driver's streams against rounds.* from one seed
BASE = {
    "dataset": "breast-cancer", "model": "logistic", "eval_every": 0, "port": 0, "seed": 3, "secret_seed": 3,
}  # fmt: skip

_SETUPS: dict[tuple[Any, ...], Setup] = {}


def make_config(**kw: Any) -> server_config.ServerConfig:
    return server_config.from_mapping({**BASE, **kw})


def setup_for(cfg: server_config.ServerConfig) -> Setup:
    # Loading breast-cancer takes a moment; tests with the same data settings share it.
    key = (cfg.dataset, cfg.model, cfg.seed, cfg.num_shards, cfg.partition)
    if key not in _SETUPS:
        _SETUPS[key] = load_setup(cfg)
    return _SETUPS[key]


class FakeWorker:
    """A hand-written hgo.v1 client: one Session stream, explicit messages.

    A background task reads the stream into a queue (cancelling a pending
    ``call.read()`` would cancel the whole call), so waiting for a message kind
    can time out or be cancelled safely.
    """

    def __init__(self, port: int, token: str | None = None) -> None:
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        metadata = (("authorization", f"Bearer {token}"),) if token else None
        self.call = hgo_pb2_grpc.HGOStub(self.channel).Session(metadata=metadata)
        self.welcome: hgo_pb2.Welcome | None = None
        self.seen: list[hgo_pb2.ServerMessage] = []
        self.inbox: asyncio.Queue[hgo_pb2.ServerMessage | None] = asyncio.Queue()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> grpc.StatusCode:
        try:
            while (msg := await self.call.read()) is not grpc.aio.EOF:
                self.seen.append(msg)
                self.inbox.put_nowait(msg)
            return await self.call.code()
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        finally:
            self.inbox.put_nowait(None)

    @property
    def session_id(self) -> str:
        assert self.welcome is not None
        return self.welcome.session_id

    async def join(self, profile: str = "average", wants_shard: bool = False, **kw: Any) -> hgo_pb2.Welcome:
        join = hgo_pb2.Join(
            protocol_version=1, profile=profile, rate=0.0, batch_size=1, wants_shard=wants_shard
        )
        for key, value in kw.items():
            setattr(join, key, value)
        await self.call.write(hgo_pb2.WorkerMessage(join=join))
        msg = await self.next("welcome")
        self.welcome = msg.welcome
        return msg.welcome

    async def next(self, kind: str, timeout: float = 20.0) -> hgo_pb2.ServerMessage:
        """The next server message of ``kind`` (other kinds are skipped; all are in ``seen``)."""

        async def loop() -> hgo_pb2.ServerMessage:
            while True:
                msg = await self.inbox.get()
                if msg is None:
                    self.inbox.put_nowait(None)
                    raise EOFError(f"stream ended while waiting for {kind}")
                if msg.WhichOneof("kind") == kind:
                    return msg

        return await asyncio.wait_for(loop(), timeout)

    async def chunk(
        self, round_index: int, offset: int, values: np.ndarray, session_id: str | None = None
    ) -> None:
        sid = self.session_id if session_id is None else session_id
        msg = hgo_pb2.GradientChunk(
            round=round_index, offset=offset, values=wire.encode(values), session_id=sid
        )
        await self.call.write(hgo_pb2.WorkerMessage(chunk=msg))

    async def heartbeat(self) -> None:
        await self.call.write(hgo_pb2.WorkerMessage(heartbeat=hgo_pb2.Heartbeat(unix_ns=time.time_ns())))

    async def final_status(self, timeout: float = 10.0) -> grpc.StatusCode:
        """The status code the server ended the stream with."""
        return await asyncio.wait_for(asyncio.shield(self.reader), timeout)

    async def close(self) -> None:
        self.call.cancel()
        self.reader.cancel()
        await self.channel.close()


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[tuple[RunningServer, int]]]]:
    """serve(**config) -> (running server, port); everything is stopped after the test."""
    started: list[RunningServer] = []
    workers: list[FakeWorker] = []

    async def factory(**kw: Any) -> tuple[RunningServer, int]:
        kw.setdefault("log", str(tmp_path / "rounds.jsonl"))
        cfg = make_config(**kw)
        running, port = await start_server(cfg, setup=setup_for(cfg))
        started.append(running)
        return running, port

    factory.workers = workers  # type: ignore[attr-defined]
    yield factory
    for w in workers:
        await w.close()
    for running in started:
        await running.stop(grace=0.5)


async def connect(serve: Any, port: int, n: int, **join: Any) -> list[FakeWorker]:
    out = []
    for _ in range(n):
        w = FakeWorker(port)
        serve.workers.append(w)
        await w.join(**join)
        out.append(w)
    return out


def sample_value(running: RunningServer, name: str, labels: dict[str, str] | None = None) -> float:
    value = running.core.metrics.registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


async def wait_for(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


# ---------------------------------------------------------------------------- rounds


async def test_round_update_equals_close_round_on_the_same_inputs(serve: Any, tmp_path: Path) -> None:
    running, port = await serve(q=3, v=2, rule="median", tau="1500", rounds=1, min_workers=3, lr=0.5)
    workers = await connect(serve, port, 3)
    assert [w.welcome.worker_id for w in workers] == [0, 1, 2]
    spec = workers[0].welcome.spec
    assert (spec.dim, spec.model, spec.order, spec.algorithm, spec.max_chunk_values) == (
        D, "logistic", "flat", "hgo", 16384,
    )  # fmt: skip
    run = asyncio.create_task(running.run())
    tasks = [(await w.next("task")).task for w in workers]
    assert len({t.round for t in tasks}) == 1 and len({t.order_seed for t in tasks}) == 1
    w0 = running.core.setup.w0
    np.testing.assert_array_equal(wire.decode(tasks[0].weights), w0.astype(np.float32))
    rng = np.random.default_rng(7)
    prefixes = np.array([31, 20, 10])
    rows = rng.normal(size=(3, D)).astype(np.float32)
    for w, row, p in zip(workers, rows, prefixes, strict=True):
        # Two chunks per worker: the prefix must be assembled from contiguous pieces.
        half = p // 2
        await w.chunk(0, 0, row[:half])
        await w.chunk(0, int(half), row[half:p])
    for w in workers:
        assert (await w.next("closed")).closed.round == 0
    summary = await asyncio.wait_for(run, 20)
    assert summary.completed and summary.rounds == 1

    c_k = order.make_order(tasks[0].order_seed, D, "flat")
    cfg = rounds.RoundConfig(d=D, v=2, rule="median", f=0, lr=0.5)
    outcome = rounds.close_round(rows, prefixes, c_k, cfg)
    assert outcome.block == 20
    expected = w0 - 0.5 * outcome.update
    np.testing.assert_allclose(running.core.weights, expected, rtol=0, atol=1e-12)
    # Independently of close_round: median of 3 on [0, 10), of 2 (mean of the pair) on [10, 20).
    manual = np.zeros(D)
    manual[c_k[:10]] = np.median(rows[:, :10].astype(np.float64), axis=0)
    manual[c_k[10:20]] = rows[:2, 10:20].astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(running.core.weights, w0 - 0.5 * manual, atol=1e-6)

    for w in workers:
        assert (await w.next("stop")).stop.reason == "done"
    (rec,) = read_log(tmp_path / "rounds.jsonl")
    assert (rec["round"], rec["sampled"], rec["responded"], rec["block"], rec["quorum"]) == (
        0,
        3,
        3,
        20,
        True,
    )
    assert [x["prefix"] for x in rec["workers"]] == [31, 20, 10]
    assert rec["step_size"] == 0.5 and rec["tau_ms"] == 1500
    assert "accuracy" in rec and "loss" in rec  # the last round is always evaluated
    assert rec["round_ms"] >= 1400  # partial prefixes: the round waited for its deadline


async def test_randomized_rule_gets_the_rounds_generator(serve: Any) -> None:
    """bucketing+median: the server passes ``rounds.aggregation_rng(seed, k)`` to close_round,
    the generator the simulator passes too (not the rule's fixed default seed)."""
    running, port = await serve(
        q=5, v=2, rule="bucketing+median", tau="500ms", rounds=1, min_workers=5, lr=0.5
    )
    workers = await connect(serve, port, 5)
    run = asyncio.create_task(running.run())
    tasks = [(await w.next("task")).task for w in workers]
    w0 = running.core.setup.w0
    rows = np.random.default_rng(8).normal(size=(5, D)).astype(np.float32)
    prefixes = np.array([D, 25, 20, 12, 6])
    for w, row, p in zip(workers, rows, prefixes, strict=True):
        await w.chunk(0, 0, row[:p])
    summary = await asyncio.wait_for(run, 20)
    assert summary.completed and summary.rounds == 1
    c_k = order.make_order(tasks[0].order_seed, D, "flat")
    cfg = rounds.RoundConfig(d=D, v=2, rule="bucketing+median", f=0, lr=0.5)
    want = rounds.close_round(rows, prefixes, c_k, cfg, rounds.aggregation_rng(BASE["seed"], 0))
    np.testing.assert_allclose(running.core.weights, w0 - 0.5 * want.update, rtol=0, atol=1e-12)
    fixed = rounds.close_round(rows, prefixes, c_k, cfg)  # the rule's default seed: other buckets
    assert not np.allclose(running.core.weights, w0 - 0.5 * fixed.update)
    for w in workers:
        assert (await w.next("stop")).stop.reason == "done"


async def test_late_chunks_are_counted_and_ignored(serve: Any, tmp_path: Path) -> None:
    running, port = await serve(q=1, tau="300ms", rounds=2, min_workers=1)
    (w,) = await connect(serve, port, 1)
    run = asyncio.create_task(running.run())
    t0 = (await w.next("task")).task
    await w.chunk(0, 0, np.ones(5, dtype=np.float32))
    await w.next("closed")
    await w.next("task")  # round 1 is open now
    w_after_0 = running.core.weights
    await w.chunk(0, 5, np.full(5, 100.0, dtype=np.float32))  # late: round 0 is closed
    await wait_for(lambda: sample_value(running, "hgo_late_chunks_total") == 1)
    assert sample_value(running, "hgo_rejected_messages_total", {"reason": "late"}) == 1
    # Not fatal: the session goes on, and round 1 is unaffected by the late values.
    await w.chunk(1, 0, np.zeros(3, dtype=np.float32))
    await asyncio.wait_for(run, 20)
    recs = read_log(tmp_path / "rounds.jsonl")
    assert [r["workers"][0]["prefix"] for r in recs] == [5, 3]
    assert t0.order_seed == order.round_seed(BASE["seed"], 0)  # the simulator's C_k for round 0
    c0 = order.make_order(t0.order_seed, D, "flat")
    expected0 = running.core.setup.w0.copy()
    expected0[c0[:5]] -= 0.1 * 1.0
    np.testing.assert_allclose(w_after_0, expected0, atol=1e-12)
    # Round 1 moved nothing (zero gradient on 3 coordinates).
    np.testing.assert_allclose(running.core.weights, w_after_0, atol=1e-12)


async def test_unsampled_worker_chunk_is_rejected_and_model_unchanged(serve: Any) -> None:
    running, port = await serve(q=1, tau="400ms", rounds=1, min_workers=2)
    a, b = await connect(serve, port, 2)
    run = asyncio.create_task(running.run())
    sampled_task = await asyncio.wait_for(_first_task([a, b]), 10)
    sampled, other = (a, b) if sampled_task is a else (b, a)
    await other.chunk(0, 0, np.full(D, 9.0, dtype=np.float32))
    assert await other.final_status() == grpc.StatusCode.FAILED_PRECONDITION
    await asyncio.wait_for(run, 20)
    np.testing.assert_array_equal(running.core.weights, running.core.setup.w0)
    assert sample_value(running, "hgo_rejected_messages_total", {"reason": "not-sampled"}) == 1
    assert sample_value(running, "hgo_rounds_without_quorum_total") == 1
    assert (await sampled.next("stop")).stop.reason == "done"


async def _first_task(workers: list[FakeWorker]) -> FakeWorker:
    pending = {asyncio.create_task(w.next("task")): w for w in workers}
    done, rest = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    for t in rest:
        t.cancel()
    return pending[next(iter(done))]


@pytest.mark.parametrize(
    ("send", "code", "reason"),
    [
        (lambda w: w.chunk(0, 0, np.ones(3, np.float32), session_id="0" * 32),
         grpc.StatusCode.PERMISSION_DENIED, "session-id"),
        (lambda w: w.chunk(0, 4, np.ones(3, np.float32)), grpc.StatusCode.INVALID_ARGUMENT, "gap"),
        (lambda w: w.chunk(0, 30, np.ones(3, np.float32)), grpc.StatusCode.INVALID_ARGUMENT, "gap"),
        (lambda w: w.chunk(0, 0, np.ones(32, np.float32)), grpc.StatusCode.INVALID_ARGUMENT, "past-d"),
        (lambda w: w.chunk(0, 0, np.ones(40, np.float32)), grpc.StatusCode.RESOURCE_EXHAUSTED, "oversized"),
        (lambda w: w.call.write(hgo_pb2.WorkerMessage(chunk=hgo_pb2.GradientChunk(
            round=0, offset=0, values=b"\x00" * 7, session_id=w.session_id))),
         grpc.StatusCode.INVALID_ARGUMENT, "bad-length"),
        (lambda w: w.chunk(5, 0, np.ones(3, np.float32)), grpc.StatusCode.FAILED_PRECONDITION, "not-sampled"),
        (lambda w: w.call.write(hgo_pb2.WorkerMessage(join=hgo_pb2.Join(protocol_version=1))),
         grpc.StatusCode.INVALID_ARGUMENT, "duplicate-join"),
    ],
    ids=["other-session", "gap", "gap-far", "past-d", "oversized", "bad-length", "future-round",
         "second-join"],
)  # fmt: skip
async def test_fatal_rejection_ends_only_that_session(
    serve: Any, send: Any, code: grpc.StatusCode, reason: str
) -> None:
    running, port = await serve(q=2, tau="1s", rounds=1, min_workers=2, max_chunk_values=32)
    bad, good = await connect(serve, port, 2)
    run = asyncio.create_task(running.run())
    await bad.next("task")
    await good.next("task")
    await send(bad)
    assert await bad.final_status() == code
    assert sample_value(running, "hgo_rejected_messages_total", {"reason": reason}) == 1
    assert [s.worker_id for s in running.core.sessions.values()] == [good.welcome.worker_id]
    # The other worker's round goes on and counts.
    await good.chunk(0, 0, np.ones(D, np.float32))
    summary = await asyncio.wait_for(run, 20)
    assert summary.completed
    assert running.core.last_block == D  # v = 1 (default quorum of average with q=2), good sent all


async def test_non_finite_values_end_the_prefix(serve: Any, tmp_path: Path) -> None:
    # tau 20 s: the round must end by the early close, not by a deadline a stalled loop reached
    running, port = await serve(q=1, tau="20s", rounds=1, min_workers=1)
    (w,) = await connect(serve, port, 1)
    run = asyncio.create_task(running.run())
    await w.next("task")
    vals = np.arange(10, dtype=np.float32)
    vals[6] = np.inf
    await w.chunk(0, 0, vals)
    await w.chunk(0, 10, np.ones(D - 10, np.float32))  # ignored: the prefix ended at 6
    await asyncio.wait_for(run, 60)
    (rec,) = read_log(tmp_path / "rounds.jsonl")
    assert rec["workers"][0]["prefix"] == 6 and rec["block"] == 6
    assert rec["early_close"]  # the truncated worker is finished: closed early, not by tau
    assert np.isfinite(running.core.weights).all()
    # The second chunk is ignored as non-finite, or as late if the early close came first, or
    # never read when the one-round run ended first (a loaded machine reads it late).
    non_finite = sample_value(running, "hgo_rejected_messages_total", {"reason": "non-finite"})
    assert non_finite >= 1 and non_finite + sample_value(running, "hgo_late_chunks_total") <= 2


# ---------------------------------------------------------------------------- sgd baselines


async def test_sgd_finite_tau_discards_partial_gradients(serve: Any, tmp_path: Path) -> None:
    running, port = await serve(q=2, tau="500ms", rounds=2, min_workers=2, algorithm="sgd")
    a, b = await connect(serve, port, 2)
    run = asyncio.create_task(running.run())
    full = np.linspace(-1, 1, D).astype(np.float32)
    seeds = []
    for k in range(2):
        seeds.append((await a.next("task")).task.order_seed)
        await b.next("task")
        if k == 0:
            await a.chunk(0, 0, full)  # complete
        await b.chunk(k, 0, np.full(D - 1, 50.0, np.float32))  # partial: discarded
        await a.next("closed")
    await asyncio.wait_for(run, 20)
    recs = read_log(tmp_path / "rounds.jsonl")
    assert [r["block"] for r in recs] == [D, 0]
    assert [r["quorum"] for r in recs] == [True, False]
    assert [[x["prefix"] for x in r["workers"]] for r in recs] == [[D, D - 1], [0, D - 1]]
    expected = running.core.setup.w0.copy()
    expected[order.make_order(seeds[0], D, "flat")] -= 0.1 * full.astype(
        np.float64
    )  # values are in C_k order
    np.testing.assert_allclose(running.core.weights, expected, atol=1e-12)


async def test_sgd_infinite_tau_waits_for_the_slowest_worker(serve: Any, tmp_path: Path) -> None:
    running, port = await serve(q=2, tau="inf", rounds=1, min_workers=2, algorithm="sgd", sgd_timeout="20s")
    a, b = await connect(serve, port, 2)
    run = asyncio.create_task(running.run())
    await a.next("task")
    await b.next("task")
    await a.chunk(0, 0, np.ones(D, np.float32))
    delay = 0.6
    await asyncio.sleep(delay)
    await b.heartbeat()
    await b.chunk(0, 0, np.full(D, 3.0, np.float32))
    await asyncio.wait_for(run, 20)
    (rec,) = read_log(tmp_path / "rounds.jsonl")
    assert rec["tau_ms"] is None and rec["block"] == D and rec["responded"] == 2
    assert rec["round_ms"] >= delay * 1000
    assert rec["early_close"]  # closed by the last chunk, not by the hard timeout
    np.testing.assert_allclose(running.core.weights, running.core.setup.w0 - 0.1 * 2.0, atol=1e-12)


async def test_sgd_timeout_bounds_a_dead_worker(serve: Any, tmp_path: Path) -> None:
    running, port = await serve(q=2, tau="inf", rounds=1, min_workers=2, algorithm="sgd", sgd_timeout="400ms")
    a, _silent = await connect(serve, port, 2)
    run = asyncio.create_task(running.run())
    await a.next("task")
    await a.chunk(0, 0, np.ones(D, np.float32))
    await asyncio.wait_for(run, 20)  # the other worker never answers
    (rec,) = read_log(tmp_path / "rounds.jsonl")
    assert rec["block"] == D and [x["prefix"] for x in rec["workers"]] == [D, 0]
    assert rec["round_ms"] >= 390


# ---------------------------------------------------------------------------- sessions


async def test_join_validation(serve: Any) -> None:
    running, port = await serve(q=1, rounds=1)
    bad_joins = [
        {"protocol_version": 2},
        {"profile": "quantum"},
        {"rate": math.nan},
        {"rate": -1.0},
        {"batch_size": 0},
    ]
    for fields in bad_joins:
        w = FakeWorker(port)
        serve.workers.append(w)
        join = hgo_pb2.Join(protocol_version=1, profile="weak", rate=1.0, batch_size=4)
        for key, value in fields.items():
            setattr(join, key, value)
        await w.call.write(hgo_pb2.WorkerMessage(join=join))
        assert await w.final_status() == grpc.StatusCode.INVALID_ARGUMENT, fields
    first_not_join = FakeWorker(port)
    serve.workers.append(first_not_join)
    await first_not_join.heartbeat()
    assert await first_not_join.final_status() == grpc.StatusCode.INVALID_ARGUMENT
    assert sample_value(running, "hgo_rejected_messages_total", {"reason": "bad-join"}) == len(bad_joins)
    assert sample_value(running, "hgo_rejected_messages_total", {"reason": "bad-first-message"}) == 1
    assert running.core.sessions == {}


async def test_undecodable_and_oversized_messages_are_counted(serve: Any) -> None:
    running, port = await serve(q=1, rounds=1, max_chunk_values=1024)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        raw = ch.stream_stream(
            "/hgo.v1.HGO/Session", request_serializer=lambda b: b, response_deserializer=bytes
        )
        garbage = raw()
        await garbage.write(b"\xff\xff\xff\xff\x0f")  # not a protobuf message
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await garbage.read()
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        big = raw()
        # receive limit 4 * 1024 + 4096 bytes (sized to the protocol, issue 10): 10,000 is over
        join = hgo_pb2.WorkerMessage(join=hgo_pb2.Join(protocol_version=1, name="x" * 10_000))
        await big.write(join.SerializeToString())
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await big.read()
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "larger than the receive limit" in str(info.value.details())
    assert sample_value(running, "hgo_rejected_messages_total", {"reason": "undecodable"}) == 1
    assert sample_value(running, "hgo_rejected_messages_total", {"reason": "oversized-message"}) == 1
    assert running.core.sessions == {}


async def test_shards_are_sent_in_parts_and_match_the_partition(serve: Any) -> None:
    running, port = await serve(q=2, rounds=1, num_shards=3, min_workers=2)
    ds = running.core.setup.dataset
    shards = datasets.partition(ds.y_train, 3, "iid", np.random.default_rng(BASE["seed"]))
    for expect_index in (0, 1, 2, 0):  # round-robin once every shard is held
        w = FakeWorker(port)
        serve.workers.append(w)
        welcome = await w.join(wants_shard=True)
        assert welcome.shard_index == expect_index and len(welcome.session_id) == 32
        parts = [(await w.next("shard")).shard]
        while not parts[-1].last:
            parts.append((await w.next("shard")).shard)
        X = np.concatenate([wire.decode(p.features).reshape(p.rows, p.cols) for p in parts])
        y = np.concatenate([wire.decode(p.labels) for p in parts])
        idx = shards[expect_index]
        np.testing.assert_array_equal(X, ds.X_train[idx].astype(np.float32))
        np.testing.assert_array_equal(y, ds.y_train[idx].astype(np.float32))
        assert parts[-1].total_rows == len(idx)


async def test_small_shard_parts_stay_under_the_limit() -> None:
    from hgo_server.setup import shard_slices

    X = np.arange(1000 * 7, dtype=np.float32).reshape(1000, 7)
    y = np.arange(1000, dtype=np.float32)
    parts = shard_slices(X, y, part_bytes=4096)
    assert all(len(p.features) + len(p.labels) <= 4096 for p in parts)
    assert [p.row_offset for p in parts] == list(range(0, 1000, 128))
    assert sum(p.rows for p in parts) == 1000 and parts[-1].last and not parts[0].last


async def test_silent_session_is_dropped_after_three_heartbeats(serve: Any) -> None:
    running, port = await serve(q=1, rounds=1, heartbeat_ms=50, min_workers=5)
    (w,) = await connect(serve, port, 1)
    assert len(running.core.sessions) == 1
    t0 = time.monotonic()
    assert await w.final_status() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - t0 >= 0.1
    assert any(m.WhichOneof("kind") == "heartbeat" for m in w.seen)
    assert running.core.sessions == {}
    assert sample_value(running, "hgo_active_sessions", {"profile": "average"}) == 0


async def test_status_reports_the_run(serve: Any) -> None:
    running, port = await serve(q=2, rounds=1, rule="median", min_workers=2)
    await connect(serve, port, 1, profile="weak")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        reply = await hgo_pb2_grpc.HGOStub(ch).Status(hgo_pb2.StatusRequest())
    assert (reply.state, reply.active_sessions, reply.dim, reply.rule, reply.algorithm) == (
        "waiting", 1, D, "median", "hgo",
    )  # fmt: skip
    assert reply.metric_name == "accuracy" and math.isnan(reply.last_metric)
    assert sample_value(running, "hgo_active_sessions", {"profile": "weak"}) == 1


async def test_stop_request_closes_the_round_and_sends_stop(serve: Any) -> None:
    running, port = await serve(q=1, tau="30s", rounds=5, min_workers=1)
    (w,) = await connect(serve, port, 1)
    run = asyncio.create_task(running.run())
    await w.next("task")
    await w.chunk(0, 0, np.ones(4, np.float32))
    running.request_stop()
    summary = await asyncio.wait_for(run, 10)
    assert not summary.completed and summary.rounds == 1
    assert (await w.next("stop")).stop.reason == "shutdown"
    assert not math.isnan(summary.metric)


# ---------------------------------------------------------------------------- the real process


def test_process_sigterm_exits_0_and_workers_get_stop(procs: ProcessGroup, tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    log_file = tmp_path / "rounds.jsonl"
    metrics_port = free_port()
    proc = procs.start(
        [*console("hgo-server"), "--port", "0", "--port-file", str(port_file), "--dataset", "breast-cancer",
         "--q", "1", "--min-workers", "1", "--tau", "50ms", "--rounds", "100000", "--log", str(log_file),
         "--metrics-port", str(metrics_port)],
        name="server",
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not port_file.exists():
        assert proc.poll() is None, procs.log(proc)
        assert time.monotonic() < deadline, procs.log(proc)
        time.sleep(0.05)
    port = int(port_file.read_text())
    assert f"hgo-server listening on 127.0.0.1:{port}" in procs.log(proc)

    async def worker() -> str:
        w = FakeWorker(port)
        try:
            await w.join()
            for _ in range(3):
                await w.next("task")
                await w.heartbeat()
            scrape = await asyncio.to_thread(
                lambda: urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read()
            )
            assert b"hgo_rounds_total" in scrape and b'hgo_active_sessions{profile="average"} 1.0' in scrape
            proc.send_signal(signal.SIGTERM)
            return (await w.next("stop")).stop.reason
        finally:
            await w.close()

    assert asyncio.run(worker()) == "shutdown"
    assert procs.wait(proc, 30) == 0, procs.log(proc)
    out = procs.log(proc)
    assert "hgo-server stopped: rounds=" in out and "accuracy=" in out
    assert len(read_log(log_file)) >= 2


async def test_checkpoint_and_resume(serve: Any, tmp_path: Path) -> None:
    ck = str(tmp_path / "ck")
    running, port = await serve(
        q=1, tau="50ms", rounds=3, min_workers=1, checkpoint_dir=ck, checkpoint_every=2
    )
    (w,) = await connect(serve, port, 1)
    run = asyncio.create_task(running.run())
    for k in range(3):
        await w.next("task")
        await w.chunk(k, 0, np.full(D, 0.5 + k, np.float32))
    await asyncio.wait_for(run, 20)
    trained = running.core.weights
    assert not np.array_equal(trained, running.core.setup.w0)
    assert sorted(p.name for p in Path(ck).iterdir())  # rounds 2 and 3 were saved
    again, _ = await serve(q=1, tau="50ms", rounds=5, min_workers=1, checkpoint_dir=ck, resume=True)
    assert again.core.start_round == 3 and again.core.round == 3
    np.testing.assert_array_equal(again.core.weights, trained)


async def test_token_required_when_configured(serve: Any) -> None:
    running, port = await serve(q=1, rounds=1, token="s3cret-token")
    for token in (None, "wrong"):
        w = FakeWorker(port, token=token)
        serve.workers.append(w)
        # The server may refuse the call (from its metadata) before this write goes out,
        # in which case the write itself raises: the status is what counts.
        with contextlib.suppress(grpc.aio.AioRpcError):
            await w.call.write(hgo_pb2.WorkerMessage(join=hgo_pb2.Join(protocol_version=1, profile="weak")))
        assert await w.final_status() == grpc.StatusCode.UNAUTHENTICATED
    assert sample_value(running, "hgo_rejected_messages_total", {"reason": "unauthenticated"}) == 2
    assert running.core.sessions == {}
    ok = FakeWorker(port, token="s3cret-token")
    serve.workers.append(ok)
    welcome = await ok.join()
    assert welcome.worker_id == 0 and len(running.core.sessions) == 1


async def test_mutual_tls_and_token_through_start_server(serve: Any, tmp_path: Path) -> None:
    pytest.importorskip("cryptography")
    from hgo_common.net import credentials
    from tests.tlsgen import make_pki

    pki = make_pki(tmp_path / "pki")
    running, port = await serve(
        q=1, rounds=1, token="tls-token", tls_cert=str(pki.server_cert), tls_key=str(pki.server_key),
        tls_ca=str(pki.ca_cert),
    )  # fmt: skip
    creds = credentials.channel_credentials(pki.ca_cert, pki.client_cert, pki.client_key)
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds) as ch:
        reply = await hgo_pb2_grpc.HGOStub(ch).Status(
            hgo_pb2.StatusRequest(), metadata=(("authorization", "Bearer tls-token"),)
        )
        assert reply.dim == D
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await hgo_pb2_grpc.HGOStub(ch).Status(hgo_pb2.StatusRequest())
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert sample_value(running, "hgo_rejected_messages_total", {"reason": "unauthenticated"}) == 1
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as plain:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await hgo_pb2_grpc.HGOStub(plain).Status(hgo_pb2.StatusRequest(), timeout=5)
        assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


async def test_port_in_use_is_a_config_error(serve: Any) -> None:
    _running, port = await serve(q=1, rounds=1)
    with pytest.raises(server_config.ConfigError, match=f"--port {port}: cannot listen"):
        await serve(q=1, rounds=1, port=port)


# ---------------------------------------------------------------------------- review: hot path


async def test_a_reader_that_never_drains_keeps_a_bounded_outbox(monkeypatch: pytest.MonkeyPatch) -> None:
    """A session whose stream is never written out (a slow or stalled reader that still
    sends heartbeats) must not make the server hold one RoundTask (4d bytes of w_k, plus
    its serialized copy) per round, nor one RoundClosed/heartbeat per round, forever."""
    from hgo_server.messages import Closed, JoinRequest, Task
    from hgo_server.server import Server

    # evict_after=0: this is about the outbox of a reader kept on; by default such a session
    # is evicted after --evict-after silent sampled rounds (issue 10, test_adversarial)
    cfg = make_config(q=1, tau="1ms", rounds=150, min_workers=1, heartbeat_ms=10, evict_after=0)
    core = Server(cfg, setup=setup_for(cfg))
    sess = core.join(JoinRequest(protocol_version=1))
    real_sweep = core.sweep

    def heard_sweep(batch: Any = None) -> None:
        # the worker side still sends heartbeats: heard before every sweep (a task beating
        # every 5 ms lost the race to the 30 ms limit when a loaded machine stalled the loop)
        core.on_heartbeat(sess)
        real_sweep(batch)

    monkeypatch.setattr(core, "sweep", heard_sweep)
    beats = asyncio.create_task(core.heartbeats())
    try:
        summary = await asyncio.wait_for(core.run(), 60)
    finally:
        beats.cancel()
        core.close()
    assert summary.completed and summary.rounds == 150
    queued = []
    while not sess.outbox.empty():
        queued.append(sess.outbox.get_nowait())
    tasks = [m for m in queued if isinstance(m, Task)]
    closed = [m for m in queued if isinstance(m, Closed)]
    assert len(queued) <= 8, [type(m).__name__ for m in queued]
    # What is left is what a late reader needs: the newest task, then its RoundClosed.
    assert [t.round for t in tasks] == [149] and [c.round for c in closed] == [149]
    assert queued.index(tasks[0]) < queued.index(closed[0])


async def test_round_timings_count_from_the_broadcast(
    serve: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """close_ms is the deadline interval (tasks queued -> close), round_ms broadcast -> update,
    and the round's set-up before the broadcast (sampling, encoding w_k) is reported apart
    as prepare_ms instead of silently lengthening them."""
    from hgo_common.driver import RoundDriver

    real = RoundDriver.begin

    def slow_sample(self: RoundDriver, k: int, n: int, ids: Any = None) -> Any:
        time.sleep(0.8)  # a stand-in for an expensive round set-up
        return real(self, k, n, ids)

    monkeypatch.setattr(RoundDriver, "begin", slow_sample)
    running, port = await serve(q=1, tau="400ms", rounds=1, min_workers=1)
    (w,) = await connect(serve, port, 1)
    run = asyncio.create_task(running.run())
    await w.next("task")
    await w.chunk(0, 0, np.ones(3, np.float32))  # a partial prefix: the round waits for tau
    await asyncio.wait_for(run, 20)
    (rec,) = read_log(tmp_path / "rounds.jsonl")
    # the deadline counts from the broadcast (from before the set-up it would fire at once);
    # the upper bounds only catch a hang: a loaded machine may fire the timer late
    assert 395 <= rec["close_ms"] < 400 + 5000
    assert rec["close_ms"] <= rec["round_ms"] < rec["close_ms"] + 790  # not the set-up time
    assert rec["prepare_ms"] >= 790
    assert rec["workers"][0]["prefix"] == 3


async def test_the_coordinate_order_is_expanded_off_the_event_loop(
    serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """C_k is needed only at the close (workers get its seed): the server expands it in
    its aggregation thread, never on the event loop before the broadcast."""
    import threading

    from hgo_common import driver as driver_mod

    threads: list[str] = []
    real = order.make_order

    def spy(*args: Any, **kw: Any) -> np.ndarray:
        threads.append(threading.current_thread().name)
        return real(*args, **kw)

    monkeypatch.setattr(driver_mod.order, "make_order", spy)
    running, port = await serve(q=1, tau="100ms", rounds=2, min_workers=1)
    (w,) = await connect(serve, port, 1)
    run = asyncio.create_task(running.run())
    for k in range(2):
        await w.next("task")
        await w.chunk(k, 0, np.ones(D, np.float32))
    await asyncio.wait_for(run, 20)
    assert len(threads) == 2 and all(t.startswith("hgo-agg") for t in threads), threads


async def test_a_session_that_dies_mid_round_keeps_its_delivered_prefix(serve: Any, tmp_path: Path) -> None:
    running, port = await serve(q=2, v=2, tau="3s", rounds=1, min_workers=2, lr=1.0)
    a, b = await connect(serve, port, 2)
    run = asyncio.create_task(running.run())
    seed = (await a.next("task")).task.order_seed
    await b.next("task")
    rows = np.random.default_rng(4).normal(size=(2, D)).astype(np.float32)
    await a.chunk(0, 0, rows[0])
    await b.chunk(0, 0, rows[1, :12])
    await wait_for(lambda: running.core.collector.prefixes.tolist() == [D, 12])
    await b.close()  # the worker dies mid-round (stream cancelled)
    await asyncio.wait_for(run, 20)
    (rec,) = read_log(tmp_path / "rounds.jsonl")
    assert [x["prefix"] for x in rec["workers"]] == [D, 12] and rec["block"] == 12
    assert rec["early_close"]  # both slots finished (one full, one gone): early close
    c_k = order.make_order(seed, D, "flat")
    expected = running.core.setup.w0.copy()
    expected[c_k[:12]] -= rows[:, :12].astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(running.core.weights, expected, atol=1e-6)


async def test_a_chunk_for_a_round_sampled_long_ago_is_late_not_fatal() -> None:
    """The session remembers its last 64 sampled rounds; a chunk for an older round it
    *was* sampled into (a worker far behind) is late and ignored, as the contract says,
    not a FAILED_PRECONDITION that ends the session. A round before it joined stays fatal."""
    from hgo_server.errors import FailedPrecondition
    from hgo_server.messages import JoinRequest
    from hgo_server.server import Server

    cfg = make_config(q=1, tau="1ms", rounds=70, min_workers=1)
    core = Server(cfg, setup=setup_for(cfg))
    sess = core.join(JoinRequest(protocol_version=1))
    summary = await asyncio.wait_for(core.run(), 60)
    core.close()
    assert summary.rounds == 70 and 0 not in sess.sampled_rounds  # q=1: sampled in every round
    values = wire.encode(np.ones(3, np.float32))
    core.on_chunk(sess, 0, 0, values, sess.session_id)  # round 0: sampled, long closed
    assert core.metrics.registry.get_sample_value("hgo_late_chunks_total") == 1
    late = core.join(JoinRequest(protocol_version=1))
    with pytest.raises(FailedPrecondition):
        core.on_chunk(late, 3, 0, values, late.session_id)  # before it joined


async def test_sampling_is_uniform_and_reproducible_from_the_seed() -> None:
    from hgo_server.messages import JoinRequest
    from hgo_server.server import Server

    def picks(seed: int) -> np.ndarray:
        cfg = make_config(q=2, min_workers=6, seed=seed, secret_seed=seed)  # the sampling stream's seed
        core = Server(cfg, setup=setup_for(make_config(q=2, min_workers=6)))
        for _ in range(6):
            core.join(JoinRequest(protocol_version=1))
        out = np.array([[s.worker_id for s in core._broadcast(k)[1]] for k in range(3000)])
        core.close()
        return out

    a, b, c = picks(3), picks(3), picks(4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert (a[:, 0] < a[:, 1]).all()  # q distinct sessions, in worker-id order
    counts = np.bincount(a.ravel(), minlength=6)
    # Each worker is sampled with probability q/n = 1/3: 1000 of 3000, sd ~ 26.
    assert np.all(np.abs(counts - 1000) < 130), counts


async def test_prefixes_are_those_held_when_the_deadline_fires(tmp_path: Path) -> None:
    """Sessions keep streaming past the deadline. The round must use exactly the prefixes
    the server held when its deadline timer fired: no chunk handled after that instant
    may count (asyncio.wait_for resumed the round several loop iterations later, and the
    chunks of every stream handled meanwhile used to count)."""
    from hgo_server.messages import JoinRequest, Task
    from hgo_server.server import Server

    n, tau_s, n_rounds = 12, 0.02, 8
    cfg = make_config(q=n, v=1, tau="20ms", rounds=n_rounds, min_workers=n, max_chunk_values=1,
                      model="mlp", hidden=[200], log=str(tmp_path / "r.jsonl"))  # fmt: skip
    core = Server(cfg, setup=load_setup(cfg))  # d = 6,602: more than the streams send in tau
    d = core.d
    loop = asyncio.get_running_loop()
    at_deadline: dict[int, list[int]] = {}
    real_call_later = loop.call_later

    def spy(delay: float, cb: Any, *args: Any, **kw: Any) -> Any:
        if abs(delay - tau_s) > 1e-9:
            return real_call_later(delay, cb, *args, **kw)
        k = core.round

        def fired(*a: Any) -> Any:
            out = cb(*a)
            at_deadline[k] = core.collector.prefixes.tolist()  # what the timer left behind
            return out

        return real_call_later(delay, fired, *args, **kw)

    sessions = [core.join(JoinRequest(protocol_version=1)) for _ in range(n)]

    async def stream(sess: Any) -> None:  # one value per loop iteration, never finished
        while True:
            msg = await sess.outbox.get()
            if isinstance(msg, Task):
                for off in range(d - 1):
                    if core.round != msg.round:
                        break
                    core.on_chunk(sess, msg.round, off, wire.encode(np.ones(1, np.float32)), sess.session_id)
                    await asyncio.sleep(0)

    feeders = [asyncio.create_task(stream(s)) for s in sessions]
    loop.call_later = spy  # type: ignore[method-assign]
    try:
        await asyncio.wait_for(core.run(), 60)
    finally:
        loop.call_later = real_call_later  # type: ignore[method-assign]
        for f in feeders:
            f.cancel()
        core.close()
    recs = read_log(tmp_path / "r.jsonl")
    assert sorted(at_deadline) == list(range(n_rounds))  # every round closed by its timer
    assert core.metrics.registry.get_sample_value("hgo_late_chunks_total") > 0  # they kept streaming
    for rec in recs:
        assert [x["prefix"] for x in rec["workers"]] == at_deadline[rec["round"]]
        assert not rec["early_close"]


async def test_heartbeats_go_out_in_batches_spread_over_the_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    """Many sessions: each heartbeat slice beats at most HEARTBEAT_BATCH sessions (so one loop
    turn never wakes every stream writer at once); every live session is still beaten every
    interval, a session that left is skipped, and a silent one is still dropped."""
    from hgo_server import admission
    from hgo_server.messages import Beat, End, JoinRequest
    from hgo_server.server import Server

    monkeypatch.setattr(admission, "HEARTBEAT_BATCH", 2)
    cfg = make_config(q=1, tau="1s", rounds=1, min_workers=1, heartbeat_ms=60)
    core = Server(cfg, setup=setup_for(cfg))
    sessions = [core.join(JoinRequest(protocol_version=1)) for _ in range(5)]
    for s in sessions:  # drop the Welcome and shard messages
        while not s.outbox.empty():
            s.outbox.get_nowait()
    live, gone, silent = sessions[:3], sessions[3], sessions[4]
    core.leave(gone)
    sweeps: list[list[str]] = []
    real_sweep = core.sweep

    def counting_sweep(batch: Any = None) -> None:
        sweeps.append([x.session_id for x in (batch if batch is not None else core.sessions.values())])
        for s in live:  # they keep sending: heard before every sweep, whatever the loop's delays
            core.on_heartbeat(s)
        real_sweep(batch)

    monkeypatch.setattr(core, "sweep", counting_sweep)
    beats = asyncio.create_task(core.heartbeats())
    try:
        # several intervals: every live session beaten 3 times, the silent one dropped after 3
        await wait_for(
            lambda: (
                silent.session_id not in core.sessions
                and all(sum(s.session_id in b for b in sweeps) >= 3 for s in live)
            ),
            timeout=30,
        )
    finally:
        beats.cancel()
        core.close()
    assert sweeps and max(len(b) for b in sweeps) <= 2
    for s in live:
        assert sum(s.session_id in b for b in sweeps) >= 3, sweeps
        assert any(isinstance(m, Beat) for m in _drain(s.outbox))
    assert all(gone.session_id not in b for b in sweeps)
    assert gone.session_id not in core.sessions and silent.session_id not in core.sessions
    assert isinstance(_drain(silent.outbox)[-1], End)  # dropped for its silence


def _drain(q: Any) -> list[Any]:
    out = []
    while not q.empty():
        out.append(q.get_nowait())
    return out


async def test_training_freezes_the_heap_until_close() -> None:
    """Run: once the workers have joined, what is alive is moved out of later garbage
    collections (gc.freeze, so full collections do not stall the loop with thousands of
    sessions); close() gives it back (gc.unfreeze), so nothing stays frozen after a run."""
    import gc

    from hgo_server.messages import JoinRequest
    from hgo_server.server import Server

    cfg = make_config(q=1, tau="5ms", rounds=3, min_workers=1)
    core = Server(cfg, setup=setup_for(cfg))
    before = gc.get_freeze_count()
    core.join(JoinRequest(protocol_version=1))
    try:
        summary = await asyncio.wait_for(core.run(), 60)
        assert summary.completed and summary.rounds == 3
        assert gc.get_freeze_count() > before
    finally:
        core.close()
    assert gc.get_freeze_count() == 0
    core.close()  # idempotent
    assert gc.get_freeze_count() == 0
