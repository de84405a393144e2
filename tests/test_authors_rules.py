"""The HGO authors' per-coordinate Krum and AKSEL (karimboubouh/HgO, src/aggregators.py at
372202e) against naive per-column references written from their loops' description,
hand-worked columns, and through hgo_common.blocks (rows in worker order)."""

from __future__ import annotations

import statistics

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hgo_common import aggregators, blocks

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def krum_column_reference(c: list[float]) -> float:
    """Candidates 0..n-2, neighbours 0..n-2 with itself, the n-2 smallest summed (f = 0)."""
    n = len(c)
    if n <= 2:
        return c[0]
    scores = []
    for i in range(n - 1):
        dist = sorted((c[i] - c[j]) ** 2 for j in range(n - 1))
        scores.append(sum(dist[: n - 2]))
    best = min(range(n - 1), key=lambda i: (scores[i], i))
    return c[best]


def aksel_column_reference(c: list[float]) -> float:
    med = statistics.median(c)
    dev = [(x - med) ** 2 for x in c]
    cut = statistics.median(dev)
    keep = [x for x, dv in zip(c, dev, strict=True) if dv <= cut]
    return sum(keep) / len(keep)


REFERENCES = {"krum-coord-authors": krum_column_reference, "aksel-coord-authors": aksel_column_reference}


@pytest.mark.parametrize("name", sorted(REFERENCES))
@SETTINGS
@given(m=st.integers(1, 12), k=st.integers(1, 9), seed=st.integers(0, 2**32 - 1))
def test_matches_the_per_column_reference(name: str, m: int, k: int, seed: int) -> None:
    x = np.random.default_rng(seed).standard_normal((m, k))
    want = [REFERENCES[name](x[:, j].tolist()) for j in range(k)]
    got = aggregators.get(name)(x, f=0)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    # their code has no f: any f gives the same output
    np.testing.assert_array_equal(aggregators.get(name)(x, f=3), got)


def test_large_columns_cross_tiles() -> None:
    # more columns than one tile of either rule, float32 input as on the server
    x = np.random.default_rng(3).standard_normal((23, 9000)).astype(np.float32)
    for name, ref in REFERENCES.items():
        got = aggregators.get(name)(x)
        cols = [0, 1, 4095, 4096, 4097, 8999]
        want = [ref(x[:, j].astype(np.float64).tolist()) for j in cols]
        np.testing.assert_allclose(got[cols], want, rtol=1e-12)


def test_krum_coord_authors_hand_worked_and_order_dependent() -> None:
    # column [0, 10, 10, 0]: candidates rows 0..2 (the last row is not one), neighbours
    # rows 0..2 with itself, 2 smallest summed: 0 -> 0+100, 10 -> 0+0, 10 -> 0+0: picks 10.
    # The same values as [10, 0, 0, 10]: 10 -> 0+100, 0 -> 0, 0 -> 0: picks 0.
    rule = aggregators.get("krum-coord-authors")
    assert rule(np.array([[0.0], [10.0], [10.0], [0.0]]))[0] == 10.0
    assert rule(np.array([[10.0], [0.0], [0.0], [10.0]]))[0] == 0.0
    # [-1, 0, 1] (and a last row that never counts): scores 5-4, 2-1, 5-4 all tie at 1, so
    # the first row wins; [3, -4, 7]: every candidate's single neighbour is itself
    assert rule(np.array([[-1.0], [0.0], [1.0], [50.0]]))[0] == -1.0
    assert rule(np.array([[3.0], [-4.0], [7.0]]))[0] == 3.0
    # one or two rows: the first row (no neighbour is summed)
    np.testing.assert_array_equal(rule(np.array([[3.0, -1.0], [5.0, 7.0]])), [3.0, -1.0])
    # per coordinate, not a vector: each column picks its own row (vector Krum cannot)
    x = np.array([[0.0, 9.0], [1.0, 1.0], [1.0, 1.1], [9.0, 1.2], [0.5, 0.0]])
    np.testing.assert_array_equal(rule(x), [1.0, 1.1])


def test_aksel_coord_authors_hand_worked() -> None:
    # [1, 2, 4, 8, 100]: median 4, squared deviations [9, 4, 0, 16, 9216], their median 9:
    # keeps 1, 2, 4 -> 7/3. [1, 2, 3, 50]: median 2.5, deviations [2.25, .25, .25, 2256.25],
    # median (0.25 + 2.25) / 2 = 1.25: keeps 2, 3 -> 2.5.
    rule = aggregators.get("aksel-coord-authors")
    x = np.array([[1.0, 1.0], [2.0, 2.0], [4.0, 3.0], [8.0, 50.0], [100.0, np.float64(2.5)]])
    got = rule(x[:, :1])
    np.testing.assert_allclose(got, [7 / 3], rtol=1e-15)
    np.testing.assert_allclose(rule(x[:4, 1:]), [2.5], rtol=1e-15)


def test_through_blocks_rows_in_worker_order() -> None:
    # blocks hands each segment's rows in increasing worker index (the authors' list order),
    # so the order-dependent Krum matches a per-coordinate reference over Q_j in index order.
    rng = np.random.default_rng(8)
    q, d, v = 9, 40, 4
    prefixes = [40, 12, 33, 40, 5, 27, 40, 19, 33]
    values = rng.standard_normal((q, d))
    for name, ref in REFERENCES.items():
        b, agg = blocks.aggregate(values, prefixes, v=v, rule=name, f=2)
        assert b == 33
        want = [ref([values[i, j] for i in range(q) if prefixes[i] > j]) for j in range(b)]
        np.testing.assert_allclose(agg, want, rtol=1e-12)


def test_registered_as_coordinatewise_with_one_row_minimum() -> None:
    for name in REFERENCES:
        rule = aggregators.get(name)
        assert rule.coordinatewise and rule.min_rows(0) == rule.min_rows(5) == 1
