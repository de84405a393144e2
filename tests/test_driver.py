"""One round driver: the networked server and the simulator run the same rounds.

The identity test serves a real hgo-server (grpc.aio on port 0) to scripted wire
clients, and runs the simulator with the same seed and the same scripted deliveries:
w_k must agree bit for bit and the round-log records must be identical except for the
fields of the clock (wall vs virtual).
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hgo_common import driver, local, order, rounds, wire
from hgo_common.driver import RoundDriver, RunSettings, Timing, WorkerEntry
from hgo_common.net.proto import hgo_pb2, hgo_pb2_grpc
from hgo_common.roundlog import read as read_log
from hgo_lab.simulator import RoundBuffer, SimConfig, Simulation
from hgo_server import config as server_config
from hgo_server.servicer import start_server
from tests.wireclient import WireClient, channel_options, chunk_message

CLOCK_FIELDS = {"t", "round_ms", "close_ms", "prepare_ms", "early_close", "aggregate_ms"}
# What only a deployment has: whether f is enforceable (this test's server runs without
# auth; a simulated worker is always an identity of its own), and per worker its identity,
# what it declared in its Join and what the server measured on its stream (issue 10); and
# the server's secret seed on its first record (issue 20: the simulator has no secret).
DEPLOYMENT_FIELDS = {"f_enforceable", "secret_seed", "rates"}
WORKER_DEPLOYMENT_FIELDS = {"identity", "declared", "bytes", "chunks", "observed_rate", "delivered_ms"}


def _comparable(record: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in record.items() if k not in CLOCK_FIELDS | DEPLOYMENT_FIELDS}
    skip = WORKER_DEPLOYMENT_FIELDS
    out["workers"] = [{k: v for k, v in w.items() if k not in skip} for w in out["workers"]]
    return out


N, Q, V, ROUNDS, SEED = 5, 4, 2, 6, 11


def scripted(k: int, worker: int, w32: np.ndarray, c_k: np.ndarray) -> np.ndarray:
    """What worker ``worker`` delivers in round k: a prefix of C_k whose length depends on
    (k, worker), and values that depend on w_k (as a gradient does) and on (k, worker)."""
    d = c_k.size
    lengths = (d, d // 2, d // 3, 7, 0, d - 1)
    p = lengths[(k + 2 * worker) % len(lengths)]
    noise = np.random.default_rng([SEED, k, worker]).normal(size=p).astype(np.float32)
    return (np.float32(0.5) * w32[c_k[:p]] + noise).astype(np.float32)


class ScriptedSimulation(Simulation):
    """The simulator with the scripted deliveries in place of ``local.local_step``."""

    def fill_round(
        self, sampled: np.ndarray, c_k: np.ndarray, plan: Any = None
    ) -> tuple[RoundBuffer, list[float]]:
        self.close_ms, self.delivered_ms = self.cfg.tau_ms, np.full(sampled.size, self.cfg.tau_ms)
        buf = RoundBuffer(sampled.size, self.d, self.k)
        w32 = self.driver.w.astype(np.float32)
        for row, i in enumerate(sampled):
            buf.put(row, scripted(self.k, int(i), w32, c_k))
        return buf, [0.0] * sampled.size


def sim_config(**kw: Any) -> SimConfig:
    base: dict[str, Any] = dict(
        model="logistic", dataset="breast-cancer", n=N, q=Q, v=V, rule="median", f=0, tau=300.0,
        rounds=ROUNDS, eval_every=2, seed=SEED, lr=0.3, order="flat", mix="default",
    )  # fmt: skip
    base.update(kw)
    return SimConfig(**base)


async def _scripted_worker(client: WireClient, d: int, spec_order: str) -> None:
    """Answer every RoundTask with the scripted prefix (one chunk), until Stop."""
    while True:
        msg = await client.read(timeout=30)
        if msg is None:
            return
        kind = msg.WhichOneof("kind")
        if kind == "heartbeat":
            await client.send(hgo_pb2.WorkerMessage(heartbeat=hgo_pb2.Heartbeat()))
        elif kind == "stop":
            return
        elif kind == "task":
            task = msg.task
            w32 = wire.decode(task.weights, d)
            c_k = order.make_order(task.order_seed, d, spec_order)
            assert client.welcome is not None
            values = scripted(task.round, client.welcome.worker_id, w32, c_k)
            if values.size:
                await client.send(chunk_message(task.round, 0, wire.encode(values), client.session_id))


async def test_server_and_simulator_produce_the_same_rounds(tmp_path: Path) -> None:
    sim = ScriptedSimulation(sim_config())
    sim_records = []
    for k in range(ROUNDS):
        rec = sim.step()
        if sim.driver.evaluates(k):
            rec.update(sim.evaluate())
        sim_records.append(rec)

    log_path = tmp_path / "rounds.jsonl"
    cfg = server_config.resolve(
        server_config.from_mapping(
            dict(
                port=0,
                dataset="breast-cancer",
                model="logistic",
                q=Q,
                v=V,
                rule="median",
                tau="300ms",
                rounds=ROUNDS,
                eval_every=2,
                seed=SEED,
                secret_seed=SEED,
                lr=0.3,
                min_workers=N,
                num_shards=N,
                log=str(log_path),
                max_chunk_values=1024,
            )
        )
    )
    running, port = await start_server(cfg)
    import grpc.aio

    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=channel_options())
    try:
        stub = hgo_pb2_grpc.HGOStub(channel)
        clients = []
        for i in range(N):  # join one by one: worker i gets id i and the simulator's profile
            c = WireClient(stub)
            welcome = await c.join(profile=sim.profiles[i])
            assert welcome.worker_id == i
            clients.append(c)
        d = int(clients[0].welcome.spec.dim)  # type: ignore[union-attr]
        assert d == sim.d
        tasks = [asyncio.create_task(_scripted_worker(c, d, "flat")) for c in clients]
        summary = await asyncio.wait_for(running.run(), 60)
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
    finally:
        await running.stop()
        await channel.close()

    assert summary.completed
    np.testing.assert_array_equal(running.core.weights, sim.w)  # bit for bit
    assert not np.array_equal(sim.w, rounds.initial_weights(sim.model, SEED))
    net_records = read_log(log_path)
    assert len(net_records) == ROUNDS
    sim_logged = [read_roundtrip(r) for r in sim_records]
    for net, simr in zip(net_records, sim_logged, strict=True):
        assert net.keys() - {"secret_seed"} == simr.keys()
        assert [w.keys() for w in net["workers"]] == [w.keys() for w in simr["workers"]]
        assert _comparable(net) == _comparable(simr)
    blocks = {r["block"] for r in net_records}
    assert len(blocks) > 1 and min(blocks) > 0, "the script must give heterogeneous, non-empty blocks"
    assert any("accuracy" in r for r in net_records)


def read_roundtrip(record: dict[str, Any]) -> dict[str, Any]:
    """A record as it reads back from the JSON-lines log (tuples become lists, etc.)."""
    import json

    from hgo_common.roundlog import _clean

    return json.loads(json.dumps(_clean(record)))  # type: ignore[no-any-return]


# ---------------------------------------------------------------------- the driver alone


def _settings(**kw: Any) -> RunSettings:
    cfg = rounds.RoundConfig(d=12, v=2, rule=kw.pop("rule", "average"), f=kw.pop("f", 0),
                             algorithm=kw.pop("algorithm", "hgo"), lr=0.5)  # fmt: skip
    base: dict[str, Any] = dict(seed=5, rounds=7, eval_every=3, q=3, tau_ms=60.0, order_kind="flat",
                                groups=(), round_cfg=cfg)  # fmt: skip
    base.update(kw)
    return RunSettings(**base)


def test_driver_round_is_algorithm_1_by_hand() -> None:
    s = _settings()
    drv = RoundDriver(s, np.zeros(12))
    sample_rng = rounds.sampling_rng(5)
    w = np.zeros(12)
    for k in range(4):
        plan = drv.begin(k, 6)
        np.testing.assert_array_equal(plan.sampled, rounds.sample_workers(sample_rng, 6, 3))
        assert plan.order_seed == order.round_seed(5, k)
        c_k = drv.order(plan)
        np.testing.assert_array_equal(c_k, order.make_order(order.round_seed(5, k), 12))
        values = np.random.default_rng(k).normal(size=(3, 12)).astype(np.float32)
        prefixes = np.array([12, 5, 0])
        outcome = drv.close(plan, values, prefixes, c_k)
        ref = rounds.close_round(values, prefixes, c_k, s.round_cfg, rounds.aggregation_rng(5, k))
        w = rounds.apply_update(w, ref)
        np.testing.assert_array_equal(drv.w, w)
        assert outcome.block == ref.block == 5
        rec = drv.record(plan, outcome, prefixes, [WorkerEntry(int(i), "weak", False) for i in plan.sampled],
                         Timing(t_s=0.1, round_ms=60.0, close_ms=60.0))  # fmt: skip
        assert rec["block"] == 5 and rec["responded"] == 2 and rec["quorum"]
        assert [x["prefix"] for x in rec["workers"]] == [12, 5, 0]
        assert rec["used"] == [int(plan.sampled[0]), int(plan.sampled[1])]


def test_quorum_and_evaluation_schedule() -> None:
    assert RoundDriver(_settings(), np.zeros(12)).quorum == 2
    sgd = RoundDriver(_settings(algorithm="sgd", rule="krum", f=2), np.zeros(12))
    assert sgd.quorum == 2 * 2 + 3  # krum needs 2f + 3 rows
    drv = RoundDriver(_settings(), np.zeros(12))
    assert [k for k in range(7) if drv.evaluates(k)] == [2, 5, 6]
    assert [k for k in range(7) if driver.evaluates(k, 7, 0)] == [6]
    drv.close(drv.begin(0, 1), np.zeros((1, 12), np.float32), np.array([3]), np.arange(12))
    assert drv.rounds_without_quorum == 1 and drv.last_block == 0


def test_evaluate_reports_nan_for_weights_it_cannot_evaluate() -> None:
    class Broken:
        task = "classification"

        def evaluate(self, w: np.ndarray, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
            raise ValueError("weights are inf")

    out = driver.evaluate(Broken(), np.full(3, np.inf), np.zeros((1, 2)), np.zeros(1))
    assert out.keys() == {"accuracy"} and math.isnan(out["accuracy"])


def test_local_step_is_what_the_worker_and_simulator_send() -> None:
    """The simulator's delivery for worker i is local.local_step with worker i's seed and id."""
    sim = Simulation(sim_config(rates=(20.0, 50.0, 100.0, 1000.0, 0.0), tau=10.0, rounds=1))
    plan = sim.driver.begin(0, N)
    sim.driver.sample_rng = rounds.sampling_rng(SEED)  # replay the same sample in step()
    c_k = sim.driver.order(plan)
    expect = {}
    for i in plan.sampled:
        rng = local.round_rng(sim.worker_seeds[i], 0, salt=int(i))
        work = local.local_step(
            sim.model, sim.w, sim.ds.X_train, sim.ds.y_train, c_k, 10.0, sim.local_cfgs[i], rng,
            rows=sim.shards[i],
        )  # fmt: skip
        expect[int(i)] = work.source.ensure_all(work.limit).copy()
    buf, _ = sim.fill_round(plan.sampled, c_k)
    for row, i in enumerate(plan.sampled):
        p = int(buf.prefixes[row])
        np.testing.assert_array_equal(buf.values[row, :p], expect[int(i)])
    assert len({int(p) for p in buf.prefixes}) > 1


@pytest.mark.parametrize("kind", ["gradient", "silent"])
def test_local_step_byzantine(kind: str) -> None:
    rng = np.random.default_rng(0)
    from hgo_common import models

    model = models.create("logistic", n_features=4)
    X, y = rng.normal(size=(20, 4)), (rng.random(20) > 0.5).astype(np.int64)
    c_k = order.make_order(1, model.dim)
    cfg = local.LocalConfig(rate=2.0, batch_size=4)  # 2 * 10 / 4 = 5 coordinates by tau
    attack = "sign-flip" if kind == "gradient" else "silent"
    byz = local.Byzantine(attack, full=False, estimates=3)
    work = local.local_step(model, np.zeros(model.dim), X, y, c_k, 10.0, cfg, np.random.default_rng(1),
                            byzantine=byz)  # fmt: skip
    if kind == "silent":
        assert work.limit == 0
    else:
        assert work.limit == 5 and work.source.ensure_all(5).shape == (5,)
        full = local.local_step(model, np.zeros(model.dim), X, y, c_k, 10.0, cfg, np.random.default_rng(1),
                                byzantine=local.Byzantine(attack, full=True))  # fmt: skip
        assert full.limit == model.dim and full.rate == 0.0
