"""The authors' experimental model (repository karimboubouh/HgO, as read for issue 11):
rate model, quorum rule, ALIE variant, and the hardware-correlated non-IID split."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hgo_common import attacks, budget, profiles, rounds
from hgo_common.datasets.partition import parse_partition, partition, weak_classes

# ----------------------------------------------------------------------------- rates


def test_authors_rate_model_values_and_integer_draws() -> None:
    a = profiles.RATE_MODELS["authors"]
    assert [(a[p].mean, a[p].std) for p in profiles.PROFILE_NAMES] == [
        (100.0, 20.0),
        (1_000.0, 100.0),
        (100_000.0, 500.0),
    ]
    assert profiles.RATE_MODELS["hgo"] is profiles.PROFILES
    rng = np.random.default_rng(0)
    draws = {p: [profiles.draw_rate(p, rng, "authors") for _ in range(2000)] for p in profiles.PROFILE_NAMES}
    for p, xs in draws.items():
        assert all(x == math.floor(x) and x > 0 for x in xs), p
        assert np.mean(xs) == pytest.approx(a[p].mean - 0.5, rel=0.02)  # int() truncates: about -0.5
        assert np.std(xs) == pytest.approx(a[p].std, rel=0.1)


def test_draw_rates_one_variate_each_and_default_model_unchanged() -> None:
    names = profiles.assign(10, "default")
    r1 = profiles.draw_rates(names, np.random.default_rng(3))
    r2 = [profiles.draw_rate(p, g) for g in [np.random.default_rng(3)] for p in names]
    assert r1 == r2
    with pytest.raises(ValueError, match="'paper'"):
        profiles.draw_rates(names, np.random.default_rng(0), "paper")
    with pytest.raises(ValueError, match="'fast'"):
        profiles.draw_rate("fast", np.random.default_rng(0), "authors")


@pytest.mark.parametrize(
    ("rate", "tau", "d", "plan"),
    [
        (100, 1, 785, (1, 100)),  # weak, LR, tau = 1: b = lambda*tau, s = 1
        (1000, 1, 785, (1, 785)),  # average: b = d, s = int(1000 / 785) = 1
        (100_000, 1, 785, (127, 785)),  # powerful: s = int(100000 / 785)
        (100, 60, 23_860, (1, 6000)),  # weak, MLP, tau = 60
        (1000, 60, 23_860, (2, 23_860)),
    ],
)
def test_coordinates_first_is_the_authors_get_block_coordinates_first(
    rate: float, tau: float, d: int, plan: tuple[int, int]
) -> None:
    """src/network.py get_block_coordinates_first: lambda*tau >= d -> (b = d, s = int(lambda*tau/d)),
    else (b = int(lambda*tau), s = 1)."""
    p = budget.plan("coordinates-first", rate=rate, tau_ms=tau, d=d, batch_size=32, max_batch=560)
    assert (p.batch_size, p.coords) == plan


# ---------------------------------------------------------------------------- quorum


@pytest.mark.parametrize(
    ("q", "rule", "f", "v"),
    [
        (80, "median", 0, 1),  # honest: the single longest prefix
        (80, "average", 0, 1),
        (80, "median", 10, 21),
        (80, "median", 25, 51),
        (80, "median", 39, 79),
        (80, "average", 25, 51),  # floor(f / 0.5) + 1 whatever the rule
        (80, "krum", 25, 53),  # never fewer than the rule's min_rows (2f + 3)
        (80, "median", 45, 80),  # capped at q
    ],
)
def test_auto_quorum(q: int, rule: str, f: int, v: int) -> None:
    assert rounds.auto_quorum(q, rule, f) == v
    assert rounds.resolve_quorum("auto", q, rule, f) == v


def test_auto_quorum_alpha_and_errors() -> None:
    assert rounds.auto_quorum(80, "average", 10, alpha=0.25) == 41
    assert rounds.resolve_quorum(None, 80, "average", 0) == rounds.default_quorum(80, "average", 0) == 40
    assert rounds.resolve_quorum(7, 80, "average", 0) == 7
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="alpha"):
            rounds.auto_quorum(80, "median", 3, alpha=bad)
    with pytest.raises(ValueError, match="'half'"):
        rounds.resolve_quorum("half", 80, "median", 3)
    with pytest.raises(ValueError, match="0"):
        rounds.resolve_quorum(0, 80, "median", 3)
    with pytest.raises(ValueError, match="-1"):
        rounds.auto_quorum(80, "median", -1)


# ----------------------------------------------------------------------------- ALIE


def test_alie_authors_is_mean_plus_ten_std() -> None:
    honest = np.array([[1.0, 2.0, -1.0], [3.0, 2.0, 1.0], [5.0, 2.0, 0.0]])
    a = attacks.get("alie-authors")
    rng = np.random.default_rng(0)
    want = honest.mean(axis=0) + 10.0 * honest.std(axis=0)
    np.testing.assert_allclose(a(honest, n=100, f=25, rng=rng), want)
    np.testing.assert_allclose(a(honest, n=100, f=25, rng=rng, z=2.0), honest.mean(0) + 2 * honest.std(0))
    # the Baruch variant is unchanged: mean - z std with z from n and f
    baruch = attacks.get("alie")(honest, n=100, f=25, rng=rng)
    np.testing.assert_allclose(baruch, honest.mean(0) - 0.6433454053929170 * honest.std(0), rtol=1e-12)
    with pytest.raises(ValueError, match="alie-authors"):
        attacks.get("alie-authors").resolve({"z": "ten"})


# ------------------------------------------------------------------------- partition


def test_hardware_partition_weak_shards_hold_the_weak_classes_only() -> None:
    y = np.repeat(np.arange(10), 60)
    shards = partition(y, 20, "hardware:6:3", np.random.default_rng(1))
    assert sorted(np.concatenate(shards).tolist()) == list(range(y.size))
    assert all(s.size > 0 for s in shards)
    assert all(set(y[s].tolist()) <= {0, 1, 2} for s in shards[:6])
    assert all(set(y[s].tolist()).isdisjoint({0, 1, 2}) for s in shards[6:])
    assert weak_classes(y, 3).tolist() == [0, 1, 2]
    # rare instead of absent: a share R of the weak classes goes to the other shards
    shards = partition(y, 20, "hardware:6:3:0.1", np.random.default_rng(1))
    fast = np.concatenate(shards[6:])
    assert np.isin(y[fast], [0, 1, 2]).sum() == 18  # 10 % of 180
    assert parse_partition("hardware:6:3:0.1").value == (6, 3, 0.1)


def test_hardware_partition_matches_profiles_assign_order() -> None:
    """W = counts(n, mix)[0] makes the weak shards exactly the weak workers' shards."""
    names = profiles.assign(50, "default")
    w = profiles.counts(50, "default")[0]
    assert w == 15 and names[:w] == ["weak"] * w and "weak" not in names[w:]


@pytest.mark.parametrize(
    ("scheme", "needle"),
    [
        ("hardware:6", "hardware:W:C"),
        ("hardware:0:3", "W >= 1"),
        ("hardware:6:0", "C >= 1"),
        ("hardware:6:3:1.0", "R in"),
        ("hardware:a:3", "hardware:W:C"),
        ("hardware:20:3", "fewer than the 20 shards"),
        ("hardware:6:10", "fewer than the 10 classes"),
    ],
)
def test_hardware_partition_errors_name_the_value(scheme: str, needle: str) -> None:
    y = np.repeat(np.arange(10), 60)
    with pytest.raises(ValueError, match="partition") as info:
        partition(y, 20, scheme, 0)
    assert needle in str(info.value) and scheme in str(info.value)
