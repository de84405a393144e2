"""Block construction (Algorithm 1, steps 4-5) against brute-force references, and round closing.

The references below are deliberately naive: a Python loop over coordinates that
computes Q_j = {i : |V_i| > j} for every j and calls the rule on column j
(coordinate-wise rules), or groups coordinates by identical Q_j and calls the rule
once per group (vector rules; the reading documented in hgo_common/blocks.py).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hgo_common import aggregators, blocks
from hgo_common.rounds import RoundConfig, apply_update, close_round, default_quorum, step_size

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

COORDINATEWISE = [n for n in aggregators.names() if aggregators.get(n).coordinatewise]
VECTOR = [n for n in aggregators.names() if not aggregators.get(n).coordinatewise] + ["nnm+krum"]


def reference_b_v(prefixes: list[int], v: int) -> int:
    ranked = sorted(prefixes, reverse=True)
    return ranked[v - 1] if v <= len(ranked) else 0


def reference_per_coordinate(
    values: np.ndarray, prefixes: list[int], v: int, name: str, f: int
) -> np.ndarray:
    rule = aggregators.get(name)
    b = reference_b_v(prefixes, v)
    out = np.zeros(b)
    for j in range(b):
        q_j = [i for i, p in enumerate(prefixes) if p > j]
        assert len(q_j) >= v
        out[j] = rule(values[q_j, j : j + 1], f=f)[0]
    return out


def reference_grouped(values: np.ndarray, prefixes: list[int], v: int, name: str, f: int) -> np.ndarray:
    rule = aggregators.get(name)
    b = reference_b_v(prefixes, v)
    groups: dict[tuple[int, ...], list[int]] = {}
    for j in range(b):
        groups.setdefault(tuple(i for i, p in enumerate(prefixes) if p > j), []).append(j)
    out = np.zeros(b)
    for q_j, coords in groups.items():
        out[coords] = rule(values[np.ix_(q_j, coords)], f=f)
    return out


@st.composite
def rounds(draw: st.DrawFn, name: str) -> tuple[np.ndarray, list[int], int, int]:
    """(values (q x d), nested prefixes with ties, zeros and full rows, v, f)."""
    rule = aggregators.get(name)
    q = draw(st.integers(1, 9))
    d = draw(st.integers(1, 25))
    kinds = draw(st.lists(st.sampled_from(["zero", "full", "any", "tie"]), min_size=q, max_size=q))
    prefixes: list[int] = []
    for kind in kinds:
        if kind == "zero":
            prefixes.append(0)
        elif kind == "full":
            prefixes.append(d)
        elif kind == "tie" and prefixes:
            prefixes.append(draw(st.sampled_from(prefixes)))
        else:
            prefixes.append(draw(st.integers(0, d)))
    v = draw(st.integers(1, q))
    fs = [f for f in range(0, 4) if rule.min_rows(f) <= v]
    if not fs:  # the rule needs more rows than any quorum this q allows
        v = q
        fs = [f for f in range(0, 4) if rule.min_rows(f) <= v]
    if not fs:
        q_extra = rule.min_rows(0) - q
        prefixes += [d] * q_extra
        q = len(prefixes)
        v = q
        fs = [0]
    f = draw(st.sampled_from(fs))
    seed = draw(st.integers(0, 2**32 - 1))
    values = np.random.default_rng(seed).standard_normal((q, d))
    # poison the values nobody may read: everything past each prefix
    for i, p in enumerate(prefixes):
        values[i, p:] = np.nan
    return values, prefixes, v, f


@pytest.mark.parametrize("name", COORDINATEWISE)
@SETTINGS
@given(data=st.data())
def test_coordinatewise_rules_match_per_coordinate_reference(name: str, data: st.DataObject) -> None:
    values, prefixes, v, f = data.draw(rounds(name))
    b, agg = blocks.aggregate(values, prefixes, v=v, rule=name, f=f)
    assert b == reference_b_v(prefixes, v)
    assert agg.shape == (b,)
    np.testing.assert_allclose(
        agg, reference_per_coordinate(values, prefixes, v, name, f), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("name", VECTOR)
@SETTINGS
@given(data=st.data())
def test_vector_rules_match_grouped_reference(name: str, data: st.DataObject) -> None:
    values, prefixes, v, f = data.draw(rounds(name))
    b, agg = blocks.aggregate(values, prefixes, v=v, rule=name, f=f)
    assert b == reference_b_v(prefixes, v)
    np.testing.assert_allclose(agg, reference_grouped(values, prefixes, v, name, f), rtol=1e-7, atol=1e-9)


def test_vector_rule_is_applied_per_segment_not_per_coordinate() -> None:
    # Krum over a whole segment selects one worker's vector for the segment; a per-
    # coordinate reading would be a 1-d Krum per column. Worker 3 is the Krum choice on
    # the 2-d segment, but not on every single column.
    # 2-d scores (2 neighbours): p0 36, p1 21, p2 34, p3 14, p4 177 -> p3 = (1, 2);
    # column 1 alone ([5, 0, 1, 2, 9]) picks the value 1.
    values = np.array([[0.0, 5.0], [1.0, 0.0], [5.0, 1.0], [1.0, 2.0], [9.0, 9.0]])
    b, agg = blocks.aggregate(values, [2, 2, 2, 2, 2], v=5, rule="krum", f=1)
    assert b == 2
    np.testing.assert_array_equal(agg, [1.0, 2.0])
    per_coordinate = reference_per_coordinate(values, [2] * 5, 5, "krum", 1)
    assert not np.array_equal(agg, per_coordinate)


@SETTINGS
@given(
    prefixes=st.lists(st.integers(0, 50), min_size=1, max_size=12),
    v=st.integers(1, 14),
)
def test_block_size_is_the_vth_largest(prefixes: list[int], v: int) -> None:
    assert blocks.block_size(prefixes, v) == reference_b_v(prefixes, v)
    responders = sum(p > 0 for p in prefixes)
    if responders < v:
        assert blocks.block_size(prefixes, v) == 0


@SETTINGS
@given(prefixes=st.lists(st.integers(0, 30), min_size=1, max_size=10), data=st.data())
def test_segments_tile_the_block(prefixes: list[int], data: st.DataObject) -> None:
    v = data.draw(st.integers(1, len(prefixes)))
    b = reference_b_v(prefixes, v)
    segs = blocks.segments(prefixes, v)
    assert sum(hi - lo for lo, hi, _ in segs) == b
    pos = 0
    for lo, hi, rows in segs:
        assert lo == pos and hi > lo
        pos = hi
        expected = {i for i, p in enumerate(prefixes) if p >= hi}
        assert set(rows.tolist()) == expected and len(expected) >= v
        # every coordinate of the segment has exactly this Q_j
        for j in (lo, hi - 1):
            assert {i for i, p in enumerate(prefixes) if p > j} == expected


def test_fewer_than_v_responders_give_an_empty_block() -> None:
    values = np.ones((4, 5))
    b, agg = blocks.aggregate(values, [5, 3, 0, 0], v=3, rule="median", f=0)
    assert b == 0 and agg.shape == (0,)


def test_float32_buffer_and_known_values() -> None:
    # q=3, d=4, prefixes 4, 2, 1 and v=2: b_v = 2.
    # position 0: workers {0,1,2} -> median(1, 10, 100) = 10
    # position 1: workers {0,1}   -> median(2, 20) = 11
    values = np.array([[1, 2, 3, 4], [10, 20, 0, 0], [100, 0, 0, 0]], dtype=np.float32)
    b, agg = blocks.aggregate(values, np.array([4, 2, 1]), v=2, rule="median", f=0)
    assert b == 2
    np.testing.assert_array_equal(agg, [10.0, 11.0])
    assert agg.dtype == np.float64


def test_callable_rule_and_scatter() -> None:
    values = np.arange(12.0).reshape(3, 4)
    # rows 0..2 cover positions 0, 1 (max of column: row 2); rows 0, 1 cover 2, 3 (row 1)
    b, agg = blocks.aggregate(values, [4, 4, 2], v=2, rule=lambda x, f: x.max(axis=0))
    assert b == 4
    np.testing.assert_array_equal(agg, [8.0, 9.0, 6.0, 7.0])
    order = np.array([3, 0, 2, 1])
    full = blocks.scatter(order, agg[:2], 4)
    np.testing.assert_array_equal(full, [9.0, 0.0, 0.0, 8.0])


@pytest.mark.parametrize(
    ("prefixes", "v", "match"),
    [
        ([1, 2], 1, "expected 3 prefix lengths"),
        ([1, 2, 9], 1, r"prefix lengths must lie in \[0, 4\]"),
        ([1, 2, -1], 1, r"prefix lengths must lie in \[0, 4\]"),
        ([1, 2, 3], 0, r"quorum v must be in \[1, q=3\], got 0"),
        ([1, 2, 3], 4, r"quorum v must be in \[1, q=3\], got 4"),
    ],
)
def test_bad_arguments(prefixes: list[int], v: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        blocks.aggregate(np.zeros((3, 4)), prefixes, v=v, rule="average")


def test_quorum_below_rule_minimum_is_reported() -> None:
    # v = 2 would let a segment of 2 rows through, and krum with f=0 needs 3: refused
    # up front, even when this round's prefixes would not produce such a segment
    for prefixes in ([4, 4, 1], [4, 4, 4]):
        with pytest.raises(ValueError, match=r"quorum v=2 is too small for rule 'krum' with f=0: .*least 3"):
            blocks.aggregate(np.ones((3, 4)), prefixes, v=2, rule="krum", f=0)


# --------------------------------------------------------------------------- #
# rounds.close_round: hgo vs sgd semantics, quorum, step sizes

D = 6
ORDER = np.array([5, 3, 1, 0, 2, 4])


def round_values() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.standard_normal((4, D))


def test_hgo_uses_partial_rows_and_sgd_does_not() -> None:
    values = round_values()
    prefixes = np.array([D, D, 3, 0])
    hgo = close_round(values, prefixes, ORDER, RoundConfig(d=D, v=2, rule="average", algorithm="hgo"))
    sgd = close_round(values, prefixes, ORDER, RoundConfig(d=D, v=2, rule="average", algorithm="sgd"))
    assert hgo.quorum and sgd.quorum
    assert hgo.used == [0, 1, 2]
    assert sgd.used == [0, 1]
    assert hgo.block == D and sgd.block == D
    # hgo: positions 0..2 average workers 0,1,2; positions 3..5 average workers 0,1
    expected_hgo = np.concatenate([values[:3, :3].mean(axis=0), values[:2, 3:].mean(axis=0)])
    expected_sgd = values[:2].mean(axis=0)
    assert hgo.update is not None and sgd.update is not None
    np.testing.assert_allclose(hgo.update[ORDER], expected_hgo)
    np.testing.assert_allclose(sgd.update[ORDER], expected_sgd)
    # changing the partial row moves hgo's update but never sgd's
    values2 = values.copy()
    values2[2, :3] += 100.0
    hgo2 = close_round(values2, prefixes, ORDER, RoundConfig(d=D, v=2, rule="average", algorithm="hgo"))
    sgd2 = close_round(values2, prefixes, ORDER, RoundConfig(d=D, v=2, rule="average", algorithm="sgd"))
    assert hgo2.update is not None and sgd2.update is not None
    assert not np.allclose(hgo2.update, hgo.update)
    np.testing.assert_array_equal(sgd2.update, sgd.update)


def test_hgo_block_and_zero_outside_it() -> None:
    values = round_values()
    out = close_round(values, np.array([D, 4, 2, 0]), ORDER, RoundConfig(d=D, v=2, rule="median"))
    assert out.block == 4
    assert out.update is not None
    np.testing.assert_array_equal(out.update[ORDER[4:]], 0.0)
    assert np.all(out.update[ORDER[:4]] != 0.0)


@pytest.mark.parametrize("algorithm", ["hgo", "sgd"])
def test_no_quorum_leaves_w_unchanged(algorithm: str) -> None:
    values = round_values()
    w = np.arange(D, dtype=np.float64)
    # hgo: only one non-empty prefix for v = 2; sgd: median with f = 1 needs 3 complete rows
    prefixes = np.array([D, 0, 0, 0]) if algorithm == "hgo" else np.array([D, D, 5, 0])
    cfg = RoundConfig(d=D, v=2, rule="median", f=1 if algorithm == "sgd" else 0, algorithm=algorithm)
    out = close_round(values, prefixes, ORDER, cfg)
    assert not out.quorum and out.block == 0 and out.update is None
    np.testing.assert_array_equal(apply_update(w, out), w)


@pytest.mark.parametrize("schedule", ["constant", "inv-sqrt-block"])
def test_step_size_schedules(schedule: str) -> None:
    values = round_values()
    w = np.zeros(D)
    cfg = RoundConfig(d=D, v=2, rule="average", lr=0.5, lr_schedule=schedule)
    out = close_round(values, np.array([D, 4, 4, 1]), ORDER, cfg)
    assert out.block == 4
    expected = 0.5 if schedule == "constant" else 0.5 / math.sqrt(4)
    assert out.step_size == pytest.approx(expected)
    assert step_size(cfg, 16) == pytest.approx(0.5 if schedule == "constant" else 0.125)
    assert out.update is not None
    np.testing.assert_allclose(apply_update(w, out), -expected * out.update)


def test_default_quorum_respects_rule_minimum() -> None:
    assert default_quorum(80, "average", 0) == 40
    assert default_quorum(80, "krum", 25) == 53  # 2f + 3
    assert default_quorum(10, "bulyan", 3) == 10  # capped at q


# ----------------------------------------------------------------------------- per-round randomness


def _bucketing_median_reference(
    values: np.ndarray, prefixes: np.ndarray, v: int, rng: np.random.Generator
) -> np.ndarray:
    """bucketing+median by hand: segments front to back, each draws its permutation from ``rng``."""
    out = np.zeros(blocks.block_size(prefixes, v))
    for lo, hi, rows in blocks.segments(prefixes, v):
        seg = values[rows, lo:hi].astype(np.float64)
        perm = rng.permutation(seg.shape[0])  # bucketing's own draw, s = 2
        shuffled = seg[perm]
        means = np.array([shuffled[a : a + 2].mean(axis=0) for a in range(0, len(perm), 2)])
        out[lo:hi] = np.median(means, axis=0)
    return out


def test_bucketing_draws_new_buckets_each_round_and_replays_per_seed_and_round() -> None:
    from hgo_common.rounds import aggregation_rng

    rng = np.random.default_rng(11)
    q, d = 12, 40  # 12 rows in buckets of 2: 10395 pairings, so two rounds' buckets differ
    values = rng.normal(size=(q, d))
    prefixes = np.array([40] * 8 + [30, 25, 20, 10])
    cfg = RoundConfig(d=d, v=9, rule="bucketing+median")  # B_k = 30: segments of 12, 11, 10, 9 rows
    order = np.arange(d)
    outs = [close_round(values, prefixes, order, cfg, aggregation_rng(5, k)).update for k in range(4)]
    for k, out in enumerate(outs):
        assert out is not None
        # exactly bucketing+median with the round's generator, segment by segment
        want = _bucketing_median_reference(values, prefixes, 9, aggregation_rng(5, k))
        np.testing.assert_allclose(out[:30], want, rtol=0, atol=1e-12)
        assert not out[30:].any()
        # replays for the same (seed, k)
        again = close_round(values, prefixes, order, cfg, aggregation_rng(5, k)).update
        np.testing.assert_array_equal(out, again)
    # different rounds, different buckets, so a different aggregate
    for a in range(4):
        for b in range(a + 1, 4):
            assert not np.allclose(outs[a], outs[b]), (a, b)
    # another run seed: other buckets in the same round
    other = close_round(values, prefixes, order, cfg, aggregation_rng(6, 0)).update
    assert not np.allclose(outs[0], other)
    # no generator: the rule's fixed default (the old behaviour), the same every call
    fixed = [close_round(values, prefixes, order, cfg).update for _ in range(2)]
    np.testing.assert_array_equal(fixed[0], fixed[1])
    # the sgd path forwards it too: full rows only, one segment
    sgd = RoundConfig(d=d, v=6, rule="bucketing+median", algorithm="sgd")
    got = close_round(values, prefixes, order, sgd, aggregation_rng(5, 2)).update
    full = np.flatnonzero(prefixes == d)
    ref = _bucketing_median_reference(values[full], np.full(full.size, d), 1, aggregation_rng(5, 2))
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)


def test_aggregation_rng_depends_on_seed_and_round_only() -> None:
    from hgo_common.rounds import aggregation_rng

    draw = [aggregation_rng(s, k).integers(0, 2**62, size=4).tolist() for s, k in [(1, 0), (1, 1), (2, 0)]]
    assert len({tuple(x) for x in draw}) == 3
    assert aggregation_rng(1, 1).integers(0, 2**62, size=4).tolist() == draw[1]
    with pytest.raises(ValueError, match="k must be >= 0, got -1"):
        aggregation_rng(1, -1)


@pytest.mark.parametrize("rule", ["average", "median", "krum", "trimmed-mean", "nnm+krum", "multi-krum"])
def test_rules_without_randomness_ignore_the_generator(rule: str) -> None:
    rng = np.random.default_rng(2)
    values = rng.normal(size=(7, 20))
    prefixes = np.array([20, 20, 20, 20, 20, 15, 9])
    cfg = RoundConfig(d=20, v=5, rule=rule, f=1)
    gen = np.random.default_rng(99)
    state = gen.bit_generator.state
    with_rng = close_round(values, prefixes, np.arange(20), cfg, gen)
    without = close_round(values, prefixes, np.arange(20), cfg)
    assert with_rng.update is not None and without.update is not None
    np.testing.assert_array_equal(with_rng.update, without.update)
    assert gen.bit_generator.state == state  # never handed to the rule, so never drawn from


def test_rng_reaches_plain_callables_that_declare_it() -> None:
    seen: list[np.random.Generator] = []

    def takes_rng(x: np.ndarray, *, f: int = 0, rng: np.random.Generator) -> np.ndarray:
        seen.append(rng)
        return np.asarray(x.mean(axis=0))

    gen = np.random.default_rng(0)
    values = np.arange(12.0).reshape(3, 4)
    blocks.aggregate(values, [4, 4, 2], v=2, rule=takes_rng, rng=gen)
    assert seen == [gen, gen]  # one call per segment, the same generator
    # a callable without an rng keyword is called as before
    b, agg = blocks.aggregate(values, [4, 4, 2], v=2, rule=lambda x, f: x.max(axis=0), rng=gen)
    assert b == 4 and agg.tolist() == [8.0, 9.0, 6.0, 7.0]  # row 2 covers positions 0 and 1 only


def test_run_seed_conventions_are_reproducible_and_shared() -> None:
    """Shards, w_0 and the sampling stream depend on the run seed alone (server = simulator = worker)."""
    from hgo_common import models
    from hgo_common import rounds as run

    y = np.repeat(np.arange(4), 25)
    a = run.shard_split(y, 5, "iid", 3)
    b = run.shard_split(y, 5, "iid", 3)
    assert all(np.array_equal(x, z) for x, z in zip(a, b, strict=True))
    assert np.array_equal(np.sort(np.concatenate(a)), np.arange(100))
    assert not all(np.array_equal(x, z) for x, z in zip(a, run.shard_split(y, 5, "iid", 4), strict=True))
    m = models.create("logistic", n_features=6)
    assert np.array_equal(run.initial_weights(m, 7), run.initial_weights(m, 7))
    assert run.initial_weights(m, 7).dtype == np.float64
    r1, r2 = run.sampling_rng(9), run.sampling_rng(9)
    for _ in range(20):
        s = run.sample_workers(r1, 12, 5)
        assert np.array_equal(s, run.sample_workers(r2, 12, 5))
        assert s.size == 5 and np.all(np.diff(s) > 0) and s.max() < 12
    assert np.array_equal(run.sample_workers(r1, 3, 5), np.arange(3))  # fewer than q: all of them


# ------------------------------------------------------------ the large-d code paths


def _mixed_round(q: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    values = rng.standard_normal((q, d)).astype(np.float32)
    prefixes = rng.integers(0, d + 1, size=q)
    prefixes[: q // 3] = d
    return values, prefixes


def test_segment_grams_partition_the_gram_of_the_block() -> None:
    values, prefixes = _mixed_round(12, 3000, 1)
    v = 5
    segs = [(lo, hi, None if r.size == 12 else np.sort(r)) for lo, hi, r in blocks.segments(prefixes, v)]
    grams = blocks.segment_grams(values, segs)
    b = blocks.block_size(prefixes, v)
    total = np.zeros((12, 12))
    for (lo, hi, rows), g in zip(segs, grams, strict=True):
        idx = np.arange(12) if rows is None else rows
        direct = values[idx, lo:hi].astype(np.float64) @ values[idx, lo:hi].astype(np.float64).T
        np.testing.assert_allclose(g, direct, rtol=1e-5, atol=1e-3)  # float32 product
        total[np.ix_(idx, idx)] += g
    full = values[:, :b].astype(np.float64)
    # the Grams of the segments add up to the Gram of B_k on the entries both rows cover
    covered = np.minimum.outer(prefixes, prefixes) >= b
    np.testing.assert_allclose(total[covered], (full @ full.T)[covered], rtol=1e-5, atol=1e-2)


def test_gram_overflow_fallback_is_chunked_float64(monkeypatch: pytest.MonkeyPatch) -> None:
    from hgo_common.aggregators import _common

    monkeypatch.setattr(_common, "_GRAM_CHUNK", 7)
    x = np.random.default_rng(2).standard_normal((6, 50)).astype(np.float32)
    x[2] = 3e38
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(_common.gram(x), x64 @ x64.T, rtol=1e-12)


@pytest.mark.parametrize("name", ["median", "trimmed-mean", "average", "krum", "multi-krum", "aksel"])
def test_chunked_and_threaded_paths_equal_one_call_per_segment(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small chunks and a low threshold force many chunks over 3 threads; the result must
    # be the rule applied to each whole segment (rows in index order), bit for bit for the
    # coordinate-wise rules and Krum, within float32 rounding for the weighted means.
    values, prefixes = _mixed_round(15, 5000, 3)
    v, f = 9, 3
    rule = aggregators.get(name)
    want = np.zeros(blocks.block_size(prefixes, v))
    for lo, hi, rows in blocks.segments(prefixes, v):
        want[lo:hi] = rule(values[np.sort(rows), lo:hi], f=f)
    monkeypatch.setattr(blocks, "_CHUNK", 97)
    monkeypatch.setattr(blocks, "_PARALLEL_MIN", 1)
    monkeypatch.setenv("HGO_AGG_THREADS", "3")
    b, got = blocks.aggregate(values, prefixes, v=v, rule=name, f=f)
    assert b == want.size
    if name == "multi-krum":
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    else:
        np.testing.assert_array_equal(got, want)


def test_bad_thread_count_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HGO_AGG_THREADS", "zero")
    with pytest.raises(ValueError, match="HGO_AGG_THREADS must be an integer >= 1, got 'zero'"):
        blocks.threads()


def test_a_forked_child_builds_its_own_thread_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    import multiprocessing

    monkeypatch.setattr(blocks, "_CHUNK", 97)
    monkeypatch.setattr(blocks, "_PARALLEL_MIN", 1)
    monkeypatch.setenv("HGO_AGG_THREADS", "2")
    values, prefixes = _mixed_round(9, 2000, 4)
    want = blocks.aggregate(values, prefixes, v=5, rule="median")[1]  # the parent's pool exists now
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        got = pool.apply_async(_aggregate_median, (values, prefixes)).get(timeout=120)
    np.testing.assert_array_equal(got, want)


def _aggregate_median(values: np.ndarray, prefixes: np.ndarray) -> np.ndarray:
    blocks._CHUNK = 97  # the fork copied the patched values; set them again for clarity
    blocks._PARALLEL_MIN = 1
    return blocks.aggregate(values, prefixes, v=5, rule="median")[1]


# The sorted-tile path (aggregators._common.sorted_block): coordinate-wise rules that are a
# function of each column's sorted values read the round buffer in tiles. Buffers whose rows
# start a multiple of 4 KiB apart (d = 2048 float32 here) take the gathered branch, others
# (d = 2000) are read in place; one-column tiles and 16-column tiles leave partial tiles at
# every segment's end.
SORTED_FORM_RULES = ["median", "trimmed-mean", "meamed", "phocas"]


def _brute_sorted_rule(name: str, col: list[float], f: int) -> float:
    """One column's value from its values sorted by Python: the rules' definitions."""
    s = sorted(col)
    m = len(s)
    if name == "median":
        return s[m // 2] if m % 2 else 0.5 * (s[m // 2 - 1] + s[m // 2])
    if name == "trimmed-mean":
        return math.fsum(s[f : m - f]) / (m - 2 * f)
    center = (
        (s[m // 2] if m % 2 else 0.5 * (s[m // 2 - 1] + s[m // 2]))
        if name == "meamed"
        else math.fsum(s[f : m - f]) / (m - 2 * f)
    )
    keep = m - f
    start = sum(1 for t in range(m - keep) if center - s[t] > s[t + keep] - center)
    return math.fsum(s[start : start + keep]) / keep


@pytest.mark.parametrize("d", [2048, 2000])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("tile_lines", [1, 63])
def test_sorted_block_equals_sorting_each_gathered_column(
    d: int, dtype: type, tile_lines: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hgo_common.aggregators import _common

    monkeypatch.setattr(_common, "_TILE_LINES", tile_lines)
    rng = np.random.default_rng(d)
    values = rng.standard_normal((24, d)).astype(dtype)
    values[:, ::5] = 0.0
    values[::3, ::5] = -0.0  # signed zeros: tied values whose bits differ
    for rows in (None, np.array([0, 3, 4, 9, 10, 11, 17, 23]), np.arange(1, 24, 2)):
        for lo, hi in ((0, d), (7, 7 + 16 * tile_lines + 3), (d - 5, d), (100, 100)):
            got = _common.sorted_block(values, rows, lo, hi)
            block = values[:, lo:hi] if rows is None else values[rows, lo:hi]
            want = np.sort(np.ascontiguousarray(block.T), axis=1)
            assert got.shape == want.shape and got.dtype == values.dtype
            # values equal, and the same bits (the sort sees each column in the same order)
            np.testing.assert_array_equal(got, want)
            np.testing.assert_array_equal(np.signbit(got), np.signbit(want))


@pytest.mark.parametrize("name", SORTED_FORM_RULES)
@pytest.mark.parametrize("d", [2048, 2000])
def test_sorted_form_rules_match_brute_force_per_coordinate(
    name: str, d: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Odd and even |Q_j| across 8 segments, tiles of 16 columns, chunks of 97 over 2
    # threads, against (a) the rule called once per whole segment, bit for bit, and (b) a
    # per-coordinate reference from Python's sorted() and math.fsum.
    from hgo_common.aggregators import _common

    monkeypatch.setattr(_common, "_TILE_LINES", 1)
    monkeypatch.setattr(blocks, "_CHUNK", 97)
    monkeypatch.setattr(blocks, "_PARALLEL_MIN", 1)
    monkeypatch.setenv("HGO_AGG_THREADS", "2")
    q, v, f = 15, 7, 3
    rng = np.random.default_rng(7)
    values = rng.standard_normal((q, d)).astype(np.float32)
    values[2, : d // 2] = 3e38  # a Byzantine row of huge finite values
    prefixes = np.array([d, d, d, 1900, 1700, 1500, 1500, 1300, 1111, 900, 700, 500, 300, 0, 0])
    rng.shuffle(prefixes)
    rule = aggregators.get(name)
    assert _common.sorted_form_of(rule.fn) is not None
    b, got = blocks.aggregate(values, prefixes, v=v, rule=name, f=f)
    segs = blocks.segments(prefixes, v)
    assert {rows.size % 2 for _, _, rows in segs} == {0, 1}
    want = np.zeros(b)
    for lo, hi, rows in segs:
        want[lo:hi] = rule(values[np.sort(rows), lo:hi], f=f)
    np.testing.assert_array_equal(got, want)
    for j in range(0, b, 7):
        col = [float(values[i, j]) for i in range(q) if prefixes[i] > j]
        assert got[j] == pytest.approx(_brute_sorted_rule(name, col, f), rel=1e-12, abs=1e-300)
