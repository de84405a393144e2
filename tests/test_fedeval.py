"""Federated evaluation and per-round measured rates (issue 21, items 2 and 3).

The real server (in-process, grpc on port 0) and real ``hgo-worker`` processes on the
bundled digits data: honest workers' federated accuracy agrees with the server's own
test split on the same weights; one lying device moves the weighted mean but not the
median, and the record shows it; every sampled worker's observed and self-reported rate
is logged, lower for a lower ``--rate``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hgo_common import federated
from hgo_common.roundlog import read as read_log
from hgo_worker.evaluate import LIE_EXAMPLES
from tests.procs import ProcessGroup, console, until

RATES = {"slow": 4.0, "fast": 800.0}  # λ per data point; s = 8: 0.5 vs 100 coordinates per ms


async def _run(
    tmp_path: Path, procs: ProcessGroup, workers: list[tuple[str, float, str | None]], **settings: Any
) -> tuple[list[dict[str, Any]], Any]:
    """Serve one run on port 0 to ``workers`` (name, --rate, --attack); returns (round log, server)."""
    import asyncio

    from hgo_server import config as server_config
    from hgo_server.servicer import start_server

    log = tmp_path / "rounds.jsonl"
    raw = {
        "port": 0, "dataset": "digits", "q": len(workers), "v": 1, "tau": "250ms",
        "rounds": 30, "eval_every": 10, "min_workers": len(workers), "seed": 4, "lr": 0.5,
        "evaluation": "both", "eval_fraction": 0.2, "log": str(log), **settings,
    }  # fmt: skip
    running, port = await start_server(server_config.from_mapping(raw))
    try:
        for i, (name, rate, attack) in enumerate(workers):
            argv = [
                *console("hgo-worker"), "--server", f"127.0.0.1:{port}", "--profile", "custom",
                "--rate", str(rate), "--batch-size", "8", "--seed", str(10 + i), "--name", name,
            ]  # fmt: skip
            if attack is not None:
                argv += ["--attack", attack]
            procs.start(argv, name=name)
        joined = lambda: len(running.core.sessions) == len(workers)  # noqa: E731
        await asyncio.to_thread(until, joined, 120, "every join", procs)
        summary = await asyncio.wait_for(running.run(), 240)
        assert summary.completed, procs.logs()
    finally:
        await running.stop(grace=1.0)
    return read_log(log), running.core


def _federated(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if "federated" in r]


@pytest.mark.slow  # real worker processes, 30 rounds (~35 s on 2 cores)
async def test_honest_federated_accuracy_matches_the_server_and_rates_follow_the_throttle(
    tmp_path: Path, procs: ProcessGroup
) -> None:
    workers = [("slow-0", RATES["slow"], None), ("slow-1", RATES["slow"], None),
               ("fast-0", RATES["fast"], None), ("fast-1", RATES["fast"], None)]  # fmt: skip
    records, core = await _run(tmp_path, procs, workers)
    by_round = {r["round"]: r for r in records}
    fed = _federated(records)
    # eval_every = 10: the tasks of rounds 10 and 20 carry the models the server scored after rounds 9, 19
    assert [r["round"] for r in fed] == [10, 20]
    for rec in fed:
        f = rec["federated"]
        assert f["model_round"] == rec["round"] - 1
        assert f["asked"] == 4 and f["reports"] == 4 and f["refused"] == 0, f
        server_acc = by_round[rec["round"] - 1]["accuracy"]
        # 4 validation splits of ~71 rows each (286 in all) vs the server's 360 test rows: both
        # estimate the same model's accuracy. At p = 0.7 the standard error of their difference
        # is about 0.036 (pooled) and 0.05 for the median of four: the bounds are ~3 of them.
        assert abs(f["accuracy"]["mean"] - server_acc) <= 0.12, (f, server_acc)
        assert abs(f["accuracy"]["median"] - server_acc) <= 0.15, (f, server_acc)
        devices = f["devices"]
        assert sorted(d["name"] for d in devices) == sorted(n for n, _, _ in workers)
        for d in devices:
            assert 0 < d["examples"] <= 100 and "examples_claimed" not in d and 0 <= d["accuracy"] <= 1
        assert f["examples"] == sum(d["examples"] for d in devices)
    assert fed[-1]["federated"]["accuracy"]["mean"] > 0.3  # trained: chance is 0.1 (10 classes)
    gauge = core.metrics.registry.get_sample_value(
        "hgo_federated_metric", {"metric": "accuracy", "stat": "median"}
    )
    assert gauge == pytest.approx(fed[-1]["federated"]["accuracy"]["median"])

    # Measured rates: the server's observation in every workers entry, the self-reports of
    # the previous round beside them; slower --rate, lower rate, by both measures.
    seen = 0
    for rec in records[2:]:
        rep = rec["rates"]["self_reported"]
        assert rep["round"] == rec["round"] - 1
        devs = {d["name"]: d for d in rep["devices"]}
        if len(devs) < 4:
            continue  # a report still on its way when the record was written: counted as late
        seen += 1
        for name in ("slow-0", "slow-1"):
            for fast in ("fast-0", "fast-1"):
                assert devs[name]["rate"] < devs[fast]["rate"] / 5, (devs[name], devs[fast])
        for d in devs.values():
            assert d["released"] <= d["computed"] <= core.d and d["batch_size"] == 8
            assert d["rate"] > 0 and d["lambda"] > 0
        # what the device said vs what its throttle allows: λ/s coordinates per ms (plus a first chunk)
        assert devs["slow-0"]["rate"] <= RATES["slow"] / 8 * 1.5 + 1
        observed = {w["id"]: w["observed_rate"] for w in rec["workers"]}
        assert len(observed) == 4 and all(v >= 0 for v in observed.values())
    # a report delayed past the next round's record (a loaded machine) is late, so not every round
    # has all four; the checks above ran on every round that did
    assert seen >= 5, f"only {seen} rounds logged all four self-reports"
    # the server's own observation: per profile here is one "custom" profile, so compare devices
    last = records[-1]
    slow_ids = {d["id"] for d in last["rates"]["self_reported"]["devices"] if d["name"].startswith("slow")}
    obs = [(w["id"] in slow_ids, w["observed_rate"]) for w in last["workers"]]
    assert max(r for s, r in obs if s) < min(r for s, r in obs if not s) / 5, obs
    assert last["rates"]["observed"]["custom"]["n"] == 4
    assert core.metrics.registry.get_sample_value(
        "hgo_self_reported_rate_coords_per_ms_count", {"profile": "custom"}
    ) >= 4 * seen


@pytest.mark.slow  # real worker processes, 21 rounds
async def test_a_lying_device_moves_the_mean_not_the_median(tmp_path: Path, procs: ProcessGroup) -> None:
    workers = [(f"honest-{i}", 0.0, None) for i in range(4)] + [("liar", 0.0, "sign-flip")]
    records, _ = await _run(
        tmp_path, procs, workers, rule="median", f=1, v=3, rounds=21, eval_every=10, tau="1s"
    )
    fed = _federated(records)
    assert [r["round"] for r in fed] == [10, 20]
    for rec in fed:
        f = rec["federated"]
        assert f["asked"] == 5 and f["reports"] == 5, f  # the liar is counted: a claim in range
        devices = {d["name"]: d for d in f["devices"]}
        liar = devices.pop("liar")
        # the lie as sent: accuracy 1, loss 0, 2**32-1 examples, clipped to what the server shipped
        assert liar["accuracy"] == 1.0 and liar["loss"] == 0.0
        assert liar["examples_claimed"] == LIE_EXAMPLES
        assert liar["examples"] <= max(d["examples"] for d in devices.values()) + 1  # its shard's hold-out
        honest_acc = np.array([d["accuracy"] for d in devices.values()])
        honest_n = np.array([d["examples"] for d in devices.values()])
        honest_mean = float(np.dot(honest_acc, honest_n) / honest_n.sum())
        # the weighted mean moved towards the lie by about its share of the weight ...
        share = liar["examples"] / (liar["examples"] + honest_n.sum())
        moved = f["accuracy"]["mean"] - honest_mean
        assert moved == pytest.approx(share * (1.0 - honest_mean), abs=1e-9)
        assert moved > 0.01
        # ... the median stays between the honest values (fewer than half of the reports lie)
        assert honest_acc.min() <= f["accuracy"]["median"] <= honest_acc.max()
        assert abs(f["accuracy"]["median"] - float(np.median(honest_acc))) <= np.ptp(honest_acc) / 2 + 1e-12
        assert f["loss"]["median"] >= min(d["loss"] for d in devices.values())
        assert f["loss"]["mean"] < f["loss"]["median"] or math.isclose(f["loss"]["mean"], f["loss"]["median"])
    # the server's own evaluation is untouched by the lie, and so is every decision
    assert all(r.get("accuracy", 0.0) < 1.0 for r in records)


def test_bounded_weights_and_aggregate() -> None:
    """The pure parts: a known count clips a claim; an unknown one weighs at most the median."""
    w = federated.bounded_weights([50, 2**32 - 1, 40], [60, 55, None])
    assert w.tolist() == [50.0, 55.0, 40.0]
    w = federated.bounded_weights([50, 2**32 - 1, 40], [None, None, None])
    assert w.tolist() == [50.0, 50.0, 40.0]
    agg = federated.aggregate([0.8, 1.0, 0.9], [1.0, 1.0, 2.0])
    assert agg["mean"] == pytest.approx(0.9) and agg["median"] == 0.9 and agg["reports"] == 3
    assert math.isnan(federated.aggregate([], [])["median"])
    assert federated.holdout_count(359, 0.2) == 71 and federated.holdout_count(1, 0.5) == 0
    with pytest.raises(ValueError, match="eval fraction"):
        federated.holdout_count(10, 0.9)


async def test_reports_are_checked_on_the_wire(tmp_path: Path) -> None:
    """Hostile reports over a raw stream: out of range is refused and listed; a claim above the
    shipped hold-out is clipped; a second report, an unasked one, or a rate report for a round
    the session was not sampled into end the session."""
    import grpc

    from hgo_common.net.proto import hgo_pb2
    from tests.wireclient import serving, wait_for

    def eval_msg(sid: str, rnd: int, n: int, loss: float, acc: float) -> hgo_pb2.WorkerMessage:
        rep = hgo_pb2.EvalReport(round=rnd, session_id=sid, examples=n, loss=loss, accuracy=acc)
        return hgo_pb2.WorkerMessage(eval_report=rep)

    log = tmp_path / "r.jsonl"
    async with serving(q=2, min_workers=2, v=1, tau="1s", eval_every=1, evaluation="both",
                       eval_fraction=0.2, log=str(log)) as srv:  # fmt: skip
        a, b = srv.client(), srv.client()
        wa = await a.join(wants_shard=True, name="a")
        wb = await b.join(wants_shard=True, name="b")
        assert wa.eval_fraction == pytest.approx(0.2)
        d = srv.core.d
        for c in (a, b):
            t0 = await c.next_task()
            assert t0.round == 0 and not t0.evaluate  # round 0's weights are w_0: nothing to compare with
            await c.send_full(t0, np.zeros(d, dtype=np.float32))
        t1 = [await c.next_task() for c in (a, b)]
        assert [t.round for t in t1] == [1, 1] and all(t.evaluate for t in t1)
        await a.send(eval_msg(a.session_id, 1, 10, math.nan, 0.5))  # refused: not finite
        await b.send(eval_msg(b.session_id, 1, 10**6, 0.5, 0.75))  # accepted, count clipped
        await wait_for(lambda: srv.rejected("report-out-of-range") >= 1, what="the refusal")
        await a.send(eval_msg(a.session_id, 1, 10, 0.5, 0.5))  # a second report for round 1
        assert await a.finish() == grpc.StatusCode.INVALID_ARGUMENT
        await b.send(eval_msg(b.session_id, 0, 10, 0.5, 0.5))  # round 0 never asked
        assert await b.finish() == grpc.StatusCode.FAILED_PRECONDITION
        await wait_for(lambda: log.exists() and len(read_log(log)) >= 2, what="round 1's record")
        fed = read_log(log)[1]["federated"]
        assert fed["asked"] == 2 and fed["reports"] == 1 and fed["refused"] == 1
        devices = {x["name"]: x for x in fed["devices"]}
        assert "loss must be a finite number" in devices["a"]["refused"]
        assert devices["b"]["examples_claimed"] == 10**6
        held_out = federated.holdout_count(len(srv.core.setup.shards[wb.shard_index]), 0.2)
        assert devices["b"]["examples"] == fed["examples"] == held_out > 0  # the shard it was sent
        assert fed["accuracy"]["median"] == fed["accuracy"]["mean"] == 0.75

        c = srv.client()
        await c.join(wants_shard=False, name="c")
        rep = hgo_pb2.RoundReport(round=0, session_id=c.session_id, computed=1, released=1, batch_size=1)
        await c.send(hgo_pb2.WorkerMessage(round_report=rep))
        assert await c.finish() == grpc.StatusCode.FAILED_PRECONDITION


def test_the_validation_split_is_seeded_held_out_and_checked() -> None:
    from hgo_worker.checks import Refused
    from hgo_worker.evaluate import split_validation

    X = np.arange(200, dtype=np.float32).reshape(100, 2)
    y = np.arange(100)
    Xt, yt, val = split_validation(X, y, 0.2, seed=7)
    assert val is not None and len(val) == 20 and len(yt) == 80
    assert set(yt.tolist()).isdisjoint(val.y.tolist()) and sorted([*yt, *val.y]) == list(range(100))
    np.testing.assert_array_equal(Xt[:, 0] / 2, yt)  # rows stay with their labels
    again = split_validation(X, y, 0.2, seed=7)[2]
    assert again is not None and again.y.tolist() == val.y.tolist()  # the same split after a reconnect
    other = split_validation(X, y, 0.2, seed=8)[2]
    assert other is not None and other.y.tolist() != val.y.tolist()
    Xs, ys, none = split_validation(X, y, 0.0, seed=7)
    assert none is None and Xs is X and ys is y  # --evaluation server: training data unchanged
    with pytest.raises(Refused, match=r"Welcome.eval_fraction = 0.9: expected 0..0.5"):
        split_validation(X, y, 0.9, seed=7)


async def test_federated_only_switches_the_servers_own_evaluation_off(tmp_path: Path) -> None:
    """--evaluation federated: the records carry ``federated`` and no test-split metric; a worker
    that is asked but does not answer is counted as asked, not as a report."""
    from tests.wireclient import serving, wait_for

    log = tmp_path / "r.jsonl"
    async with serving(q=1, min_workers=1, v=1, tau="200ms", eval_every=1, evaluation="federated",
                       log=str(log)) as srv:  # fmt: skip
        c = srv.client()
        welcome = await c.join(wants_shard=True)
        assert welcome.eval_fraction == pytest.approx(0.2)  # the default share
        c.respond()  # gradients only: it never sends an EvalReport
        await wait_for(lambda: log.exists() and len(read_log(log)) >= 4, what="four records")
        records = read_log(log)[:4]
        assert not any("accuracy" in r or "loss" in r for r in records)
        assert ["federated" in r for r in records] == [False, True, True, True]
        assert all(r["federated"]["asked"] == 1 and r["federated"]["reports"] == 0 for r in records[1:])
        assert math.isnan((await srv.status()).last_metric)


@pytest.mark.slow  # real processes: a server with no data, four devices on their own files
def test_devices_on_their_own_data_evaluate_and_a_liar_weighs_no_more_than_the_median(
    procs: ProcessGroup, tmp_path: Path
) -> None:
    """``--dataset none --evaluation federated``: the server has neither training nor test data,
    so the devices' reports are its only evaluation; it cannot know their counts, so each
    weighs at most the round's median count, the liar's 2**32-1 included."""
    import json

    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    perm = np.random.default_rng(0).permutation(y.size)
    X, y = X[perm][:1400], y[perm][:1400]
    files = []
    for i in range(4):
        path = tmp_path / f"dev{i}.csv"
        table = np.column_stack([X[i::4], y[i::4]])
        header = ",".join([*(f"px{j}" for j in range(64)), "label"])
        np.savetxt(path, table, delimiter=",", header=header, comments="", fmt="%.10g")
        files.append(path)
    port_file, log = tmp_path / "port", tmp_path / "rounds.jsonl"
    server = procs.start(
        [*console("hgo-server"), "--port", "0", "--port-file", str(port_file), "--dataset", "none",
         "--model", "mlp", "--features", "64", "--classes", "10", "--q", "4", "--min-workers", "4",
         "--rule", "median", "--f", "1", "--v", "3", "--rounds", "21", "--eval-every", "10",
         "--tau", "inf", "--lr", "0.5", "--evaluation", "federated", "--log", str(log)],
        name="server",
    )  # fmt: skip
    procs.until(lambda: port_file.exists() and port_file.read_text().strip(), 60, "the server's port file")
    port = int(port_file.read_text())
    for i, path in enumerate(files):
        attack = ["--attack", "sign-flip"] if i == 3 else []
        procs.start(
            [*console("hgo-worker"), "--server", f"127.0.0.1:{port}", "--rate", "0", "--name", f"dev{i}",
             "--seed", str(i), "--data", str(path), *attack],
            name=f"dev{i}",
        )  # fmt: skip
    assert procs.wait(server, 240) == 0, procs.logs()
    records = [json.loads(line) for line in log.read_text().splitlines()]
    fed = [r for r in records if "federated" in r]
    assert [r["round"] for r in fed] == [10, 20] and not any("accuracy" in r for r in records)
    for rec in fed:
        f = rec["federated"]
        assert f["asked"] == 4 and f["reports"] == 4, f
        devices = {d["name"]: d for d in f["devices"]}
        liar = devices.pop("dev3")
        counts = [d["examples"] for d in devices.values()]
        assert counts == [70, 70, 70]  # 350 rows each, 0.2 held out, as claimed (nothing to clip)
        assert liar["examples_claimed"] == LIE_EXAMPLES and liar["examples"] == 70  # the median count
        honest = [d["accuracy"] for d in devices.values()]
        assert min(honest) <= f["accuracy"]["median"] <= 1.0
        assert f["accuracy"]["mean"] == pytest.approx((sum(honest) + 1.0) / 4)  # equal weights of 70
    assert min(d["accuracy"] for d in fed[-1]["federated"]["devices"]) > 0.3  # trained: chance is 0.1
