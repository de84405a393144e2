"""Adaptive deadline (--tau auto): the policy, the simulator and a real server.

The policy is checked against its formula (brute force over order statistics), the
bound on one Byzantine row's influence, and then end to end: the simulator and a real
hgo-server with real hgo-worker sessions pick a τ_k well under --tau-max that meets the
block target on most rounds.
"""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import numpy as np
import pytest

from hgo_common import roundlog, throttle
from hgo_common.deadline import AutoTau, DeadlinePolicy
from hgo_lab import simulator
from tests.procs import ProcessGroup, console, free_port


def test_choice_is_the_target_over_the_vth_largest_rate() -> None:
    spec = AutoTau(target=0.5, tau_min=1.0, tau_max=10_000.0, memory=1.0, headroom=0.25)
    pol = DeadlinePolicy(spec, d=1000, v=3)
    rates = {0: 2.0, 1: 8.0, 2: 1.0, 3: 4.0, 4: 0.5}
    pol.observe(list(rates), np.array([100 * r for r in rates.values()]), np.full(5, 100.0))
    assert {w: pol.rate_of(w) for w in rates} == pytest.approx(rates)
    choice = pol.choose([0, 1, 2, 3, 4])
    r_v = sorted(rates.values(), reverse=True)[2]  # 2.0
    assert choice.tau_ms == pytest.approx(1.25 * 500 / r_v) and choice.reason == "estimate"
    assert pol.choose([2, 4, 0]).tau_ms == pytest.approx(1.25 * 500 / 0.5)  # v-th of the sampled only
    # unknown workers count at the median of the known rates
    assert pol.choose([1, 3, 99]).tau_ms == pytest.approx(1.25 * 500 / 2.0)
    assert pol.choose([7, 8]).reason == "no-estimate" and pol.choose([7, 8]).tau_ms == 10_000.0


def test_clamped_to_the_bounds_and_memory_smooths() -> None:
    pol = DeadlinePolicy(AutoTau(target=1.0, tau_min=50.0, tau_max=200.0, memory=0.5, headroom=0.0), 100, 1)
    pol.observe([0], np.array([100]), np.array([1.0]))  # 100 per ms: estimate 1 ms
    assert (pol.choose([0]).tau_ms, pol.choose([0]).reason) == (50.0, "tau-min")
    pol.observe([0], np.array([0]), np.array([200.0]))  # delivered nothing: rate 0, EWMA halves
    assert pol.rate_of(0) == pytest.approx(50.0)
    pol2 = DeadlinePolicy(AutoTau(target=1.0, tau_min=50.0, tau_max=200.0), 100, 1)
    pol2.observe([0], np.array([0]), np.array([200.0]))
    assert (pol2.choose([0]).tau_ms, pol2.choose([0]).reason) == (200.0, "tau-max")


def test_met_is_the_vth_longest_prefix() -> None:
    pol = DeadlinePolicy(AutoTau(target=0.5), d=100, v=2)
    assert not pol.met(np.array([100, 49, 10]))
    assert pol.met(np.array([100, 50, 0]))
    assert not pol.met(np.array([100]))  # fewer rows than v


def test_one_byzantine_row_moves_tau_by_at_most_one_rank() -> None:
    """Whatever a Byzantine worker's measured rate (0 or absurd), τ_k stays between the
    values the honest rows give at ranks v-1 and v — the same leverage its row has on b_v."""
    rng = np.random.default_rng(3)
    spec = AutoTau(target=0.5, tau_min=1e-6, tau_max=1e9, memory=1.0, headroom=0.0)
    for _ in range(50):
        q, v = 10, int(rng.integers(2, 9))
        honest = rng.uniform(0.1, 10.0, size=q - 1)
        ordered = np.sort(honest)[::-1]
        lo, hi = 500 / ordered[v - 2], 500 / ordered[v - 1]  # ranks v-1 and v of the honest rows
        for byz_rate in (0.0, 1e-9, 1e9):
            pol = DeadlinePolicy(spec, 1000, v)
            rates = np.append(honest, byz_rate)
            pol.observe(list(range(q)), rates * 100, np.full(q, 100.0))
            tau = pol.choose(list(range(q))).tau_ms
            assert lo * (1 - 1e-9) <= tau <= hi * (1 + 1e-9)


def _auto_sim(**kw: object) -> simulator.SimResult:
    base: dict[str, object] = dict(
        model="logistic", dataset="breast-cancer", n=8, q=8, v=4, tau=1000.0, early_close=False, rounds=40,
        eval_every=10,
        rates=(0.2, 0.4, 0.8, 1.2, 1.6, 2.0, 3.0, 0.0), batch_size=32, lr=0.5, order="flat", seed=1,
    )  # fmt: skip
    base.update(kw)
    return simulator.run(simulator.SimConfig(**base))  # type: ignore[arg-type]


def test_simulator_meets_the_target_with_a_short_tau() -> None:
    res = _auto_sim(tau="auto", tau_max=1000.0, tau_target=0.5, tau_min=5.0)
    d = 31
    recs = res.records[3:]  # after the first rounds, every worker has been observed
    taus = [r["tau_ms"] for r in recs]
    assert all(r["tau_auto"]["reason"] in ("estimate", "tau-min", "tau-max") for r in recs)
    assert res.records[0]["tau_auto"]["reason"] == "no-estimate" and res.records[0]["tau_ms"] == 1000.0
    met = sum(r["block"] >= math.ceil(0.5 * d) for r in recs)
    assert met >= 0.9 * len(recs), [r["block"] for r in recs]
    # v = 4: the 4th fastest (unthrottled, 3.0, 2.0, then 1.6 per ms per point; s = 32)
    # reaches 16 of 31 coordinates at 320 ms; tau_k carries 25 % headroom, the round ends at 320
    expected = throttle.release_time_ms(16, 1.6, 32)
    assert max(taus) < 1000.0 and np.median(taus) == pytest.approx(1.25 * expected, rel=0.05)
    assert all(r["round_ms"] <= r["tau_ms"] + 1e-9 for r in recs)
    assert np.median([r["round_ms"] for r in recs]) == pytest.approx(expected)
    fixed = _auto_sim()
    assert sum(r["round_ms"] for r in res.records) < 0.6 * sum(r["round_ms"] for r in fixed.records)


def test_bad_auto_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="--tau-target must be in"):
        simulator.SimConfig(tau="auto", tau_target=0.0)
    with pytest.raises(ValueError, match="takes a fixed --tau"):
        simulator.SimConfig(tau="auto", algorithm="sgd", tau_max=100.0)
    res = subprocess.run([*console("hgo-server"), "--tau", "auto", "--tau-target", "2"], capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert res.returncode == 2 and "--tau-target" in res.stderr and "got 2" in res.stderr, res.stderr


def test_server_tau_auto_over_the_wire(procs: ProcessGroup, tmp_path: Path) -> None:
    """Real hgo-server --tau auto with 8 hgo-worker sessions of known rates."""
    import json

    rates = [0.2, 0.4, 0.8, 1.2, 1.6, 2.0, 3.0, 0.0]
    port = free_port()
    log = tmp_path / "rounds.jsonl"
    server = procs.start([
        *console("hgo-server"), "--port", str(port), "--dataset", "breast-cancer", "--model", "logistic",
        "--q", "8", "--v", "4", "--tau", "auto", "--tau-target", "0.5", "--tau-min", "20ms",
        "--tau-max", "2s",
        "--rounds", "25", "--eval-every", "0", "--min-workers", "8", "--num-shards", "8", "--log", str(log),
        "--no-early-close",
    ], name="server")  # fmt: skip
    fleet = tmp_path / "fleet.json"
    sessions = [{"rate": r, "seed": i, "name": f"d{i}"} for i, r in enumerate(rates)]
    fleet.write_text(json.dumps({"sessions": sessions}))
    worker = procs.start([*console("hgo-worker"), "--server", f"127.0.0.1:{port}", "--fleet", str(fleet)],
                         name="fleet")  # fmt: skip
    try:
        assert server.wait(180) == 0, procs.log(server)[-3000:]
        assert worker.wait(30) == 0
    except subprocess.TimeoutExpired:
        raise AssertionError(procs.log(server)[-3000:] + procs.log(worker)[-3000:]) from None
    recs = roundlog.read(log)
    assert len(recs) == 25
    assert recs[0]["tau_ms"] == 2000.0 and recs[0]["tau_auto"]["reason"] == "no-estimate"
    later = recs[3:]
    met = [r for r in later if r["block"] >= 16]
    assert len(met) >= 0.8 * len(later), [(r["block"], round(r["tau_ms"])) for r in later]
    # the 4th fastest worker (1.6) needs ~320 ms for 16 coordinates at s = 32: tau_k ~ 400 ms, not 2 s
    median_tau = float(np.median([r["tau_ms"] for r in later]))
    assert 300 < median_tau < 1200, median_tau
    assert all(r["round_ms"] < r["tau_ms"] + 250 for r in later)


def test_tau_auto_scenario_meets_its_target_in_the_simulator(tmp_path: Path) -> None:
    """The packaged comparison (fixed tau vs tau auto, default and C_min mixes), CI-sized."""
    from hgo_lab import experiment

    sc = experiment.load_scenario("tau-auto", quick=True, seeds=1)
    autos = [v for v in sc.variants if v.config.tau.auto]
    assert len(autos) == 2 and {v.config.mix for v in autos} == {"default", "C_min"}
    res = experiment.run_scenario(sc, tmp_path, echo=lambda m: None)
    for label, seeds in res["runs"].items():
        recs = seeds[0][5:]
        if "auto" in label:
            d = 65  # digits-binary logistic regression
            assert sum(r["block"] >= math.ceil(0.5 * d) for r in recs) >= 0.9 * len(recs), label
            assert all(r["round_ms"] <= r["tau_ms"] + 1e-9 <= 10.0 + 1e-9 for r in recs)
            assert np.mean([r["round_ms"] for r in recs]) < 1.0  # shorter rounds than the fixed tau = 1
        else:
            assert all(r["tau_ms"] == 1.0 and "tau_auto" not in r for r in recs)
