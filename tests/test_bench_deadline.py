"""Smoke test of bench/bench_deadline.py in a minimal configuration (the benchmark itself,
q = 80 and 4,000 sessions, runs with ``make bench-deadline``; figures in docs/benchmarks.md)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bench.bench_deadline import Setting, main, run_setting, verdicts
from hgo_common import roundlog


def test_one_setting_measures_every_figure(tmp_path: Path) -> None:
    """6 live Worker sessions in 2 client processes, q = 4, tau = 80 ms, d = 65, 6 rounds."""
    r = run_setting(tmp_path, Setting(65, 80.0), sessions=6, q=4, procs=2, rounds=6, data_dir=None,
                    compute="real", timeout_s=120)  # fmt: skip
    assert (r["d"], r["tau_ms"], r["sessions"], r["q"]) == (65, 80.0, 6, 4)
    assert r["rounds"] == 4  # 6 logged, the first 2 left out as warm-up
    assert r["sampled_min"] == 4 and 0 <= r["responded_min"] <= 4 and 0 <= r["quorum_rounds"] <= 4
    assert r["round_ms_p50"] <= r["round_ms_p90"] <= r["round_ms_p99"] <= r["round_ms_max"]
    assert 0 <= r["overhead_ms_p50"] <= r["overhead_ms_p99"]
    assert r["close_ms_p50"] <= r["round_ms_p50"] + 1e-6
    # the sampled sessions' traces show when each got w_k (a round where one never did is counted)
    assert r["bcast_incomplete_rounds"] < 4 and r["bcast_ms_p50"] >= 0 and not math.isnan(r["bcast_ms_p99"])
    assert set(r["prefix_frac"]) <= {"weak", "average", "powerful"}
    assert all(0.0 <= v <= 1.0 for v in r["prefix_frac"].values())
    assert r["server_cores"] >= 0 and r["client_cores"] >= 0
    assert verdicts([r], None, None) == []  # the targets are about d = 785 / 23,860 only
    # the sessions are authenticated, one identity each (issue 23: the limits apply as deployed)
    recs = roundlog.read(tmp_path / "d65-tau80.jsonl")[1:]
    assert recs and all(rec["f_enforceable"] for rec in recs)
    idents = {w["identity"] for rec in recs for w in rec["workers"]}
    assert idents and idents <= {f"bench-{i}" for i in range(6)}


def test_bad_settings_are_refused_with_the_value() -> None:
    for bad, needle in (
        ("99:60", "'99:60'"),
        ("785:abc", "'785:abc'"),
        ("785:-5", "must be > 0"),
        ("785", "D:TAU_MS"),
    ):
        with pytest.raises(ValueError, match=needle):
            Setting.parse(bad)
    with pytest.raises(SystemExit) as exc:
        main(["--settings", "785:60", "--sessions", "10", "--q", "80"])
    assert exc.value.code == 2


def test_mnist_settings_need_the_data_dir(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--data-dir"):
        run_setting(tmp_path, Setting(785, 60.0), sessions=2, q=2, procs=1, rounds=3, data_dir=None,
                    compute="real", timeout_s=10)  # fmt: skip
