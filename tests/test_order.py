"""Coordinate orders C_k: golden vectors, permutation validity, stratified balance, seeds.

The golden vectors were computed once (numpy 2.4) and pin the stream: the server and
every worker must expand a seed to the same permutation whatever numpy they run. If
one of them fails after a numpy upgrade, the wire protocol broke — do not just update
the numbers.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hgo_common.order import (
    SEED_LIMIT,
    flat_order,
    layer_sizes_from_groups,
    make_order,
    round_seed,
    stratified_order,
    unit_block,
    unit_order,
)

MLP_GROUPS = [784 * 30, 30, 300, 10]  # the paper's 784-30-10 network: W1, b1, W2, b2

FLAT_1000_HEAD = {
    0: [993, 859, 298, 553, 672, 971, 27, 231, 306, 706, 496, 558],
    1: [507, 818, 452, 368, 242, 929, 262, 810, 318, 49, 446, 142],
    42: [521, 737, 740, 660, 411, 678, 626, 513, 859, 136, 811, 76],
    2**32 - 1: [94, 405, 819, 632, 217, 169, 449, 275, 165, 828, 959, 475],
}
FLAT_10 = {
    0: [2, 8, 4, 9, 1, 6, 7, 3, 0, 5],
    1: [2, 9, 6, 4, 0, 3, 1, 7, 8, 5],
    42: [8, 1, 5, 0, 7, 2, 9, 4, 3, 6],
    2**32 - 1: [6, 9, 5, 1, 8, 0, 7, 4, 2, 3],
}
STRATIFIED_5_3_2 = {
    0: [2, 5, 0, 8, 1, 7, 3, 6, 4, 9],
    7: [0, 7, 3, 9, 2, 6, 1, 5, 4, 8],
    2**32 - 1: [4, 6, 1, 9, 0, 7, 2, 5, 3, 8],
}
STRATIFIED_MLP_HEAD = {
    0: [21880, 7100, 439, 10962, 3515, 12328, 9028, 16906, 16262, 18022, 11314, 1513],
    7: [15230, 1538, 12290, 6228, 13289, 19203, 20189, 20365, 2269, 3164, 7612, 1495],
    2**32 - 1: [4802, 18917, 12587, 16415, 4518, 9932, 14245, 18802, 762, 18381, 15333, 1460],
}

# The units order (appendix C.3, per-unit blocks): a 4-3-2 network, groups (12, 3, 6, 2),
# in full, and positions 10..21 of 784-30-10 (positions 0..9 are b_2, always first).
UNITS_4_3_2 = {
    0: [21, 22, 2, 12, 15, 18, 3, 10, 11, 14, 17, 20, 1, 9, 0, 8, 6, 7, 5, 4, 13, 16, 19],
    7: [21, 22, 2, 12, 15, 18, 1, 6, 5, 13, 16, 19, 0, 4, 3, 7, 10, 9, 8, 11, 14, 17, 20],
    2**32 - 1: [21, 22, 5, 13, 16, 19, 4, 9, 8, 14, 17, 20, 6, 10, 7, 11, 1, 0, 2, 3, 12, 15, 18],
}
UNITS_MLP_10_22 = {
    0: [9317, 8709, 9271, 9016, 9389, 8638, 8923, 9335, 8679, 8655, 8746, 8796],
    7: [18667, 18191, 18066, 18795, 18781, 18572, 18605, 18751, 18284, 18413, 18178, 18498],
    2**32 - 1: [21196, 21678, 21864, 21183, 21231, 21302, 21526, 21798, 21761, 21234, 21897, 21796],
}


@pytest.mark.parametrize("seed", sorted(FLAT_1000_HEAD))
def test_flat_golden(seed: int) -> None:
    assert flat_order(seed, 1000)[:12].tolist() == FLAT_1000_HEAD[seed]
    assert flat_order(seed, 10).tolist() == FLAT_10[seed]
    assert make_order(seed, 10).tolist() == FLAT_10[seed]


@pytest.mark.parametrize("seed", sorted(STRATIFIED_5_3_2))
def test_stratified_golden(seed: int) -> None:
    assert stratified_order(seed, [5, 3, 2]).tolist() == STRATIFIED_5_3_2[seed]
    assert make_order(seed, 10, "stratified", [5, 3, 2]).tolist() == STRATIFIED_5_3_2[seed]
    assert stratified_order(seed, MLP_GROUPS)[:12].tolist() == STRATIFIED_MLP_HEAD[seed]


def test_stratified_with_one_group_is_flat() -> None:
    np.testing.assert_array_equal(make_order(3, 10, "stratified", [10]), flat_order(3, 10))
    np.testing.assert_array_equal(make_order(3, 10, "stratified", ()), flat_order(3, 10))
    # the one-group stratified order draws the same permutation as the flat one
    np.testing.assert_array_equal(stratified_order(3, [10]), flat_order(3, 10))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, SEED_LIMIT - 1), d=st.integers(1, 3000))
def test_flat_is_a_permutation(seed: int, d: int) -> None:
    o = flat_order(seed, d)
    assert o.dtype == np.int64 and o.shape == (d,)
    np.testing.assert_array_equal(np.sort(o), np.arange(d))


def group_counts(order: np.ndarray, sizes: list[int]) -> np.ndarray:
    """(d, G): counts[p - 1, g] = coordinates of group g among the first p of ``order``."""
    group = np.searchsorted(np.cumsum(sizes), order, side="right")
    return np.cumsum(np.eye(len(sizes), dtype=np.int64)[group], axis=0)


@settings(max_examples=80, deadline=None)
@given(
    sizes=st.one_of(
        st.lists(st.integers(1, 60), min_size=1, max_size=8),
        # one big group and many one-coordinate groups: the hard case for key merging
        st.tuples(st.integers(20, 400), st.integers(1, 12)).map(lambda t: [t[0]] + [1] * t[1]),
    ),
    seed=st.integers(0, SEED_LIMIT - 1),
)
def test_stratified_every_prefix_holds_floor_or_ceil_of_each_share(sizes: list[int], seed: int) -> None:
    d = sum(sizes)
    o = stratified_order(seed, sizes)
    np.testing.assert_array_equal(np.sort(o), np.arange(d))
    counts = group_counts(o, sizes)
    p = np.arange(1, d + 1)[:, None]
    share = p * np.asarray(sizes)[None, :]
    # floor(p n_g / d) <= count <= ceil(p n_g / d), in exact integer arithmetic
    assert np.all(counts >= share // d)
    assert np.all(counts <= -(-share // d))
    # each group's coordinates are its own, shuffled within the group
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    for g, (off, n) in enumerate(zip(offsets, sizes, strict=True)):
        mine = o[(o >= off) & (o < off + n)]
        assert mine.size == n == counts[-1, g]


def test_stratified_mlp_prefix_balance() -> None:
    o = stratified_order(11, MLP_GROUPS)
    counts = group_counts(o, MLP_GROUPS)
    # a weak worker's 1000-coordinate prefix: 1000 * 10 / 23860 = 0.42 -> 0 or 1 of b2
    assert counts[999, 3] in (0, 1)
    assert counts[999, 2] in (12, 13)  # 1000 * 300 / 23860 = 12.57


def test_stratified_is_cached_per_shape_but_seeded_per_call() -> None:
    a = stratified_order(1, MLP_GROUPS)
    b = stratified_order(2, MLP_GROUPS)
    assert not np.array_equal(a, b)
    # the same layer pattern for every seed: position p holds the same group
    ga = np.searchsorted(np.cumsum(MLP_GROUPS), a, side="right")
    gb = np.searchsorted(np.cumsum(MLP_GROUPS), b, side="right")
    np.testing.assert_array_equal(ga, gb)


@pytest.mark.parametrize("seed", [-1, SEED_LIMIT, 2**40])
def test_seed_range_errors(seed: int) -> None:
    with pytest.raises(ValueError, match=r"order seed must be in \[0, 2\*\*32\)"):
        flat_order(seed, 5)
    with pytest.raises(ValueError, match=r"order seed must be in \[0, 2\*\*32\)"):
        stratified_order(seed, [2, 3])


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="d must be >= 1, got 0"):
        flat_order(0, 0)
    with pytest.raises(ValueError, match="group sizes must be a non-empty list of positive ints"):
        stratified_order(0, [3, 0])
    with pytest.raises(ValueError, match="group sizes must be a non-empty list"):
        stratified_order(0, [])
    with pytest.raises(ValueError, match=r"sum to 5, not d=6"):
        make_order(0, 6, "stratified", [2, 3])
    with pytest.raises(ValueError, match="unknown order kind 'random'"):
        make_order(0, 6, "random")


def test_round_seed_determinism_and_range() -> None:
    # pinned: SeedSequence's derivation is part of numpy's stable API
    assert [round_seed(0, 0), round_seed(0, 1), round_seed(123, 7)] == [2968811710, 3964924996, 1738871637]
    assert round_seed(5, 9) == round_seed(5, 9)
    seeds = {round_seed(1, k) for k in range(2000)}
    assert len(seeds) == 2000  # distinct orders across rounds
    assert all(0 <= s < SEED_LIMIT for s in seeds)
    assert round_seed(1, 3) != round_seed(2, 3)
    # run seeds are taken modulo 2**32
    assert round_seed(2**32 + 1, 3) == round_seed(1, 3)


# ---- per-unit blocks (paper appendix C.3) ------------------------------------------------


@pytest.mark.parametrize("seed", sorted(UNITS_4_3_2))
def test_units_golden(seed: int) -> None:
    assert make_order(seed, 23, "units", [12, 3, 6, 2]).tolist() == UNITS_4_3_2[seed]
    o = make_order(seed, 23_860, "units", MLP_GROUPS)
    assert o[:10].tolist() == list(range(23_850, 23_860))  # b_2: the outputs are in every block
    assert o[10:22].tolist() == UNITS_MLP_10_22[seed]


def test_unit_block_by_hand() -> None:
    # 4-3-2: W_1 (3 x 4) at 0..11, b_1 at 12..14, W_2 (2 x 3) at 15..20, b_2 at 21..22.
    # Inputs {0, 2}, hidden {1}, outputs {0, 1}: W_1[1, 0] = 4, W_1[1, 2] = 6, b_1[1] = 13,
    # W_2[0, 1] = 16, W_2[1, 1] = 19, b_2 = 21, 22.
    assert unit_block((4, 3, 2), [[0, 2], [1], [0, 1]]).tolist() == [4, 6, 13, 16, 19, 21, 22]
    with pytest.raises(ValueError, match=r"layer 1.*\[0, 3\)"):
        unit_block((4, 3, 2), [[0], [3], [0, 1]])
    with pytest.raises(ValueError, match="3 layers"):
        unit_block((4, 3, 2), [[0], [1]])


def test_the_papers_98_20_10_block() -> None:
    """Appendix C.3's example for 784-30-10: 98 input units, 20 hidden units, 10 outputs.

    Rows of W_1 of the 20 hidden units restricted to the 98 input columns, their 20
    biases, the 10 rows of W_2 restricted to the 20 hidden columns, the 10 output biases:
    20 * 98 + 20 + 10 * 20 + 10 = 2,190 of d = 23,860 coordinates (9.2 %)."""
    rng = np.random.default_rng(3)
    ins, hid = rng.choice(784, 98, replace=False), rng.choice(30, 20, replace=False)
    b = unit_block((784, 30, 10), [ins, hid, np.arange(10)])
    assert b.size == 2_190
    w1 = b[b < 23_520]
    assert set(np.unique(w1 // 784)) == set(hid.tolist())  # rows: the chosen hidden units
    assert set(np.unique(w1 % 784)) == set(ins.tolist())  # columns: the chosen inputs
    assert np.array_equal(b[(b >= 23_520) & (b < 23_550)] - 23_520, np.sort(hid))
    w2 = b[(b >= 23_550) & (b < 23_850)] - 23_550
    assert w2.size == 200 and set(np.unique(w2 % 30)) == set(hid.tolist())
    assert np.array_equal(b[b >= 23_850], np.arange(23_850, 23_860))


def _units_in(prefix: np.ndarray, sizes: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Input and hidden units a prefix of a one-hidden-layer order touches."""
    n0, n1, n2 = sizes
    w1, b1, w2 = n1 * n0, n1 * n0 + n1, n1 * n0 + n1 + n2 * n1
    in_w1 = prefix[prefix < w1]
    hid = np.unique(
        np.concatenate(
            [
                in_w1 // n0,
                prefix[(prefix >= w1) & (prefix < b1)] - w1,
                (prefix[(prefix >= b1) & (prefix < w2)] - b1) % n1,
            ]
        )
    )
    return np.unique(in_w1 % n0), hid


@pytest.mark.parametrize("sizes", [(4, 3, 2), (20, 6, 3), (784, 30, 10)])
def test_units_prefixes_are_sub_networks(sizes: tuple[int, int, int]) -> None:
    """Every prefix lies inside the sub-network of the units it touches and misses at
    most one unit's coordinates of it; where a unit is complete it *is* that block."""
    n0, n1, n2 = sizes
    o = unit_order(11, sizes)
    d = n1 * n0 + n1 + n2 * n1 + n2
    np.testing.assert_array_equal(np.sort(o), np.arange(d))
    largest_unit = max(n0 + 1 + n2, n1)  # a hidden unit: n0 in, its bias, n2 out; an input: n1 out
    step = 1 if d < 2_000 else 97  # every prefix of the small nets, a sample of the big one
    exact = 0
    for p in range(n2, d + 1, step):
        ins, hid = _units_in(o[:p], sizes)
        block = unit_block(sizes, [ins, hid, np.arange(n2)])
        assert np.isin(o[:p], block).all(), p
        assert block.size - p <= largest_unit, p
        exact += int(block.size == p)
    assert exact >= (5 if step == 1 else 2)


def test_units_split_in_proportion_to_layer_sizes() -> None:
    # After the schedule has added k input and hidden units, each layer holds floor or
    # ceil of its share: 784-30-10 at 20 hidden units has 522 or 523 inputs (20 * 784/30).
    o = unit_order(5, (784, 30, 10))
    w1, b1 = 23_520, 23_550
    pos_b1 = np.flatnonzero((o >= w1) & (o < b1))  # where each hidden unit's bias sits
    p = int(pos_b1[19]) + 1 + 10  # the 20th hidden unit, its bias and its 10 outgoing weights
    ins, hid = _units_in(o[:p], (784, 30, 10))
    assert hid.size == 20 and ins.size in (522, 523)


def test_units_needs_fully_connected_groups() -> None:
    assert layer_sizes_from_groups(MLP_GROUPS) == (784, 30, 10)
    assert layer_sizes_from_groups([12, 3, 6, 2, 4, 2]) == (4, 3, 2, 2)
    for bad in ([10], [12, 3, 5, 2], [785], [0, 1]):
        with pytest.raises(ValueError, match="fully connected"):
            layer_sizes_from_groups(bad)
    with pytest.raises(ValueError, match="units groups"):
        make_order(0, 24, "units", [12, 3, 6, 2])
    with pytest.raises(ValueError, match=r"'blocks'.*units"):
        make_order(0, 10, "blocks", [10])


def test_units_two_hidden_layers_valid() -> None:
    sizes = (6, 4, 3, 2)
    groups = [24, 4, 12, 3, 6, 2]
    o = make_order(9, sum(groups), "units", groups)
    np.testing.assert_array_equal(np.sort(o), np.arange(sum(groups)))
    assert o[:2].tolist() == [49, 50]  # b_3: the outputs first
    assert unit_block(sizes, [range(6), range(4), range(3), range(2)]).size == sum(groups)


def test_units_kind_round_trips_to_the_worker() -> None:
    """The server sends the order kind as a string (TrainingSpec.order) and the groups as
    TrainingSpec.groups (hgo_common.net.mapping); the worker expands C_k with
    compute.cached_order(seed, d, spec.order, spec.groups). "units" needs no protocol
    change: what the worker expands is what the server's driver expands."""
    from hgo_common.net import mapping
    from hgo_common.net.proto import hgo_pb2
    from hgo_worker.compute import cached_order

    sent = hgo_pb2.TrainingSpec(model="mlp", order="units", groups=MLP_GROUPS, dim=23_860)
    spec = mapping.spec_from_proto(hgo_pb2.TrainingSpec.FromString(sent.SerializeToString()))
    assert spec.order == "units" and list(spec.groups) == MLP_GROUPS
    seed = round_seed(4, 17)
    np.testing.assert_array_equal(
        cached_order(seed, spec.dim, spec.order, spec.groups), make_order(seed, 23_860, "units", MLP_GROUPS)
    )
