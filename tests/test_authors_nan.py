"""The HGO authors' NaN-aware rules (hgo_common/aggregators/nan_authors.py; karimboubouh/HgO
src/aggregators.py at 372202e and ff215db) against brute-force per-column references on
small NaN-padded arrays, through hgo_common.blocks (a NaN-padded row counts at its length),
and in the simulator under the authors' ALIE (the row kept at the longest honest length)."""

from __future__ import annotations

import math
import statistics
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hgo_common import aggregators, blocks
from hgo_common.aggregators.nan_authors import NAN_AWARE, skips_nan
from tests.test_authors_rules import aksel_column_reference, krum_column_reference

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _mean(c: list[float]) -> float:
    return statistics.fmean(c)


def _median(c: list[float]) -> float:
    return float(statistics.median(c))


# rule -> the per-column function applied to the column's non-NaN values, in row order
REFERENCES = {
    "average-authors": _mean,
    "median-authors": _median,
    "krum-authors": krum_column_reference,
    "aksel-authors": aksel_column_reference,
}
# the same rule on NaN-free input
PLAIN = {
    "average-authors": "average",
    "median-authors": "median",
    "krum-authors": "krum-coord-authors",
    "aksel-authors": "aksel-coord-authors",
}


def brute_force(name: str, x: np.ndarray) -> np.ndarray:
    """Column by column: drop the NaN, apply the reference; NaN for an all-NaN column."""
    out = []
    for j in range(x.shape[1]):
        c = [float(v) for v in x[:, j] if not math.isnan(v)]
        out.append(REFERENCES[name](c) if c else math.nan)
    return np.array(out)


def test_registered_and_flagged() -> None:
    assert set(REFERENCES) == NAN_AWARE
    for name in NAN_AWARE:
        rule = aggregators.get(name)
        assert rule.coordinatewise and rule.min_rows(25) == 1
        assert skips_nan(name)
    assert not skips_nan("median") and not skips_nan("krum-coord-authors")


@pytest.mark.parametrize("name", sorted(REFERENCES))
@SETTINGS
@given(m=st.integers(1, 9), k=st.integers(1, 8), seed=st.integers(0, 2**32 - 1), prefix_shaped=st.booleans())
def test_matches_brute_force_on_nan_padded_rows(
    name: str, m: int, k: int, seed: int, prefix_shaped: bool
) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, k))
    if prefix_shaped:  # as the authors' server holds them: NaN past each row's own length
        lengths = rng.integers(0, k + 1, size=m)
        x[np.arange(k)[None, :] >= lengths[:, None]] = np.nan
    else:  # any pattern (the attack's NaN within a row's length)
        x[rng.random((m, k)) < 0.35] = np.nan
    got = aggregators.get(name)(x, f=0)
    want = brute_force(name, x)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got[~np.isnan(want)], want[~np.isnan(want)], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(PLAIN))
def test_without_nan_equal_to_the_plain_rule(name: str) -> None:
    x = np.random.default_rng(7).standard_normal((11, 40)).astype(np.float32)
    np.testing.assert_allclose(aggregators.get(name)(x, f=0), aggregators.get(PLAIN[name])(x, f=0), rtol=1e-6)


def test_hand_worked_column() -> None:
    # rows: two honest full rows, one honest row of length 1, a Byzantine row NaN past 1
    x = np.array(
        [
            [1.0, 2.0, 4.0],
            [3.0, 6.0, 8.0],
            [5.0, np.nan, np.nan],
            [100.0, np.nan, np.nan],
        ]
    )
    np.testing.assert_allclose(aggregators.get("average-authors")(x), [27.25, 4.0, 6.0])
    np.testing.assert_allclose(aggregators.get("median-authors")(x), [4.0, 4.0, 6.0])
    # krum (f = 0): column 0 has 4 values, candidates rows 0..2, the 2 smallest of
    # (0, 4, 16), (4, 0, 4), (16, 4, 0) summed: 4, 4, 4 -> the first, 1.0; columns 1-2 have
    # two values: the first row
    np.testing.assert_allclose(aggregators.get("krum-authors")(x), [1.0, 2.0, 4.0])
    # aksel column 0: median 4, deviations 9, 1, 1, 9216, their median 5: mean of 3 and 5
    np.testing.assert_allclose(aggregators.get("aksel-authors")(x)[0], 4.0)


def test_blocks_count_a_nan_padded_row_at_its_length() -> None:
    # q = 4, d = 6, v = 3: honest lengths 6, 6, 2; the Byzantine row is counted at 6 (the
    # longest honest), NaN past 2. b_v = 6 (three rows reach it); the NaN are skipped.
    x = np.zeros((4, 6), dtype=np.float32)
    x[0] = [1, 1, 1, 1, 1, 1]
    x[1] = [3, 3, 3, 3, 3, 3]
    x[2, :2] = [5, 5]
    x[3] = [50, 50, np.nan, np.nan, np.nan, np.nan]
    b_v, out = blocks.aggregate(x, np.array([6, 6, 2, 6]), v=3, rule="median-authors", f=0)
    assert b_v == 6
    np.testing.assert_allclose(out, [4.0, 4.0, 2.0, 2.0, 2.0, 2.0])
    # the same row cut at its first NaN (the wire's policy) shrinks the block to 2
    b_cut, _ = blocks.aggregate(x, np.array([6, 6, 2, 2]), v=3, rule="median", f=0)
    assert b_cut == 2


def _prefixes(rec: dict[str, Any]) -> tuple[list[int], list[int]]:
    honest = [int(w["prefix"]) for w in rec["workers"] if not w["byzantine"]]
    byz = [int(w["prefix"]) for w in rec["workers"] if w["byzantine"]]
    return honest, byz


@pytest.mark.slow
def test_simulator_keeps_the_authors_block_under_their_alie() -> None:
    """The authors' ALIE on NaN-padded rows: with a NaN-aware rule the Byzantine rows count
    at the longest honest length (their server's b_v); with the plain rule the non-finite
    policy ends them at the shortest honest prefix and the block shrinks."""
    from hgo_lab import simulator

    v = 12

    def run(rule: str) -> list[dict[str, Any]]:
        cfg = simulator.SimConfig(
            model="logistic", dataset="breast-cancer", n=20, q=16, f=4, attackers=4,
            v=v,  # type: ignore[arg-type]  # SimConfig reads a plain int as a fixed quorum
            attack="alie-authors-nan", omniscient=True, rule=rule, mix="default",
            tau=0.2,  # type: ignore[arg-type]  # a plain float: a fixed deadline in ms
            rate_model="authors", budget_policy="coordinates-first", batch_size=8, lr=0.1,
            order="flat", rounds=10, eval_every=5, seed=3, allow_unsafe=True,  # their rules take no f
        )  # fmt: skip
        return list(simulator.run(cfg).records)

    nan_aware, truncated = run("median-authors"), run("median")
    attacked = 0
    for rec in nan_aware:
        honest, byz = _prefixes(rec)
        if byz and honest:
            attacked += 1
            assert set(byz) == {max(honest)}  # NaN and all, at the longest honest length
        assert int(rec["block"]) == sorted(honest + byz, reverse=True)[v - 1]
        assert not any(rec.get("nonfinite") or [])
    for rec in truncated:
        honest, byz = _prefixes(rec)
        if byz and honest:
            assert set(byz) == {min(honest)}  # ended before the first NaN
        assert int(rec["block"]) == sorted(honest + byz, reverse=True)[v - 1]
    assert attacked >= 5
    mean_nan = np.mean([int(r["block"]) for r in nan_aware])
    mean_cut = np.mean([int(r["block"]) for r in truncated])
    assert mean_nan > mean_cut
    assert all(math.isfinite(float(r["accuracy"])) for r in nan_aware if "accuracy" in r)
