"""Hardware profiles: rate draws, mixes, deterministic assignment."""

from __future__ import annotations

import numpy as np
import pytest

from hgo_common import profiles, throttle


def test_profiles_contract() -> None:
    assert list(profiles.PROFILES) == ["weak", "average", "powerful"]
    for name, p in profiles.PROFILES.items():
        assert p.name == name and p.mean > 0 and p.std > 0
    means = [profiles.PROFILES[n].mean for n in ("weak", "average", "powerful")]
    assert means == sorted(means)


def test_default_experiment_is_heterogeneous() -> None:
    # MLP d = 23,860, tau = 60 ms, s = 32 at each profile's mean rate (module docstring).
    d = 23_860
    prefix = {n: throttle.expected_prefix(p.mean, 60.0, 32, d) for n, p in profiles.PROFILES.items()}
    assert prefix["weak"] == 937
    assert prefix["average"] == 18_750
    assert prefix["powerful"] == d
    assert 0.03 < prefix["weak"] / d < 0.05 and 0.75 < prefix["average"] / d < 0.85
    # Even 3 std below its mean a powerful worker sends the whole gradient.
    pw = profiles.PROFILES["powerful"]
    assert throttle.expected_prefix(pw.mean - 3 * pw.std, 60.0, 32, d) == d


def test_draw_rate_reproducible() -> None:
    a = [profiles.draw_rate("average", np.random.default_rng(3)) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    rng1, rng2 = np.random.default_rng(11), np.random.default_rng(11)
    s1 = [profiles.draw_rate(n, rng1) for n in ("weak", "average", "powerful") * 5]
    s2 = [profiles.draw_rate(n, rng2) for n in ("weak", "average", "powerful") * 5]
    assert s1 == s2
    assert profiles.draw_rate("weak", np.random.default_rng(12)) != s1[0]


@pytest.mark.parametrize("name", ["weak", "average", "powerful"])
def test_draw_rate_distribution(name: str) -> None:
    p = profiles.PROFILES[name]
    rng = np.random.default_rng(2024)
    x = np.array([profiles.draw_rate(name, rng) for _ in range(10_000)])
    assert (x >= p.floor).all() and p.floor > 0
    # The floor clamps only the far lower tail (~2.9 % for weak); compare with the clamped
    # normal's own mean, E[max(floor, X)], computed from a large independent sample.
    ref = np.maximum(p.floor, np.random.default_rng(1).normal(p.mean, p.std, 1_000_000)).mean()
    # Standard error of a 10k mean: std / 100; 5 standard errors of margin.
    assert abs(x.mean() - ref) < 5 * p.std / 100
    assert abs(x.mean() - p.mean) < 0.05 * p.mean
    assert x.std() == pytest.approx(p.std, rel=0.1)


def test_draw_rate_floor_is_hit_for_weak() -> None:
    rng = np.random.default_rng(0)
    x = np.array([profiles.draw_rate("weak", rng) for _ in range(10_000)])
    floor = profiles.PROFILES["weak"].floor
    assert floor == pytest.approx(25.0)
    frac = float((x == floor).mean())
    # P(N(500, 250) < 25) = Phi(-1.9) ~ 2.9 %.
    assert 0.015 < frac < 0.045


def test_draw_rate_bad_inputs() -> None:
    with pytest.raises(ValueError, match="'turbo'"):
        profiles.draw_rate("turbo", np.random.default_rng(0))
    with pytest.raises(ValueError, match="Generator"):
        profiles.draw_rate("weak", 0)  # type: ignore[arg-type]


def test_mixes_contract() -> None:
    assert set(profiles.MIXES) == {"default", "C_weak", "C_min", "C_1", "C_2", "C_3", "C_powerful"}
    assert profiles.MIXES["default"] == (0.3, 0.4, 0.3)
    assert profiles.MIXES["C_weak"] == (1.0, 0.0, 0.0)
    assert profiles.MIXES["C_min"] == (0.9, 0.0, 0.1)
    assert profiles.MIXES["C_powerful"] == (0.0, 0.0, 1.0)
    for name, mix in profiles.MIXES.items():
        assert profiles.parse_mix(mix) == mix, name
    # From weakest to most powerful: the expected rate grows along the Figure 8 sequence.
    order = ["C_weak", "C_min", "C_1", "C_2", "C_3", "C_powerful"]
    means = np.array([p.mean for p in profiles.PROFILES.values()])
    expected = [float(np.dot(profiles.MIXES[m], means)) for m in order]
    assert expected == sorted(expected)


@pytest.mark.parametrize(
    ("n", "mix", "expected"),
    [
        (10, "default", (3, 4, 3)),
        (50, "default", (15, 20, 15)),
        (100, "default", (30, 40, 30)),
        (7, "default", (2, 3, 2)),  # 2.1, 2.8, 2.1 -> floors 2, 2, 2; leftover to average
        (5, "default", (2, 2, 1)),  # 1.5, 2.0, 1.5 -> floors 1, 2, 1; tie goes to weak
        (1, "default", (0, 1, 0)),
        (0, "default", (0, 0, 0)),
        (10, "C_min", (9, 0, 1)),
        (7, "C_min", (6, 0, 1)),  # 6.3, 0, 0.7 -> 6, 0, 0; leftover to powerful (0.7)
        (10, "C_weak", (10, 0, 0)),
        (10, "C_powerful", (0, 0, 10)),
        (10, "C_1", (6, 3, 1)),
        (10, "C_3", (2, 4, 4)),
        (3, (1 / 3, 1 / 3, 1 / 3), (1, 1, 1)),
        (4, (1 / 3, 1 / 3, 1 / 3), (2, 1, 1)),
    ],
)
def test_counts_largest_remainder(
    n: int, mix: str | tuple[float, float, float], expected: tuple[int, ...]
) -> None:
    assert profiles.counts(n, mix) == expected


def test_assign_order_and_determinism() -> None:
    names = profiles.assign(10, "default")
    assert names == ["weak"] * 3 + ["average"] * 4 + ["powerful"] * 3
    assert profiles.assign(10, "default") == names
    assert profiles.assign(10, (0.3, 0.4, 0.3)) == names
    assert profiles.assign(7, "0.5,0.5,0") == ["weak"] * 4 + ["average"] * 3
    for n in range(0, 60):
        for mix in profiles.MIXES:
            out = profiles.assign(n, mix)
            assert len(out) == n
            assert out == sorted(out, key=["weak", "average", "powerful"].index)


@pytest.mark.parametrize(
    ("mix", "msg"),
    [
        ((0.5, 0.5, 0.5), "sum to 1"),
        ((0.5, 0.6, -0.1), "finite and >= 0"),
        ((0.5, 0.5), "three"),
        ((0.3, 0.4, 0.3, 0.0), "three"),
        ("C_9", "'C_9'"),
        ("a,b,c", "'a,b,c'"),
        ((float("nan"), 0.5, 0.5), "finite"),
        ((0.3, 0.4, 0.3 + 1e-6), "sum to 1"),
    ],
)
def test_bad_mixes_rejected(mix: object, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        profiles.assign(10, mix)  # type: ignore[arg-type]


def test_mix_sum_tolerance() -> None:
    assert profiles.counts(10, (0.3, 0.4, 0.3 + 5e-10)) == (3, 4, 3)


def test_assign_bad_n() -> None:
    with pytest.raises(ValueError, match="-1"):
        profiles.assign(-1, "default")
    with pytest.raises(ValueError, match=r"2\.5"):
        profiles.assign(2.5, "default")  # type: ignore[arg-type]
