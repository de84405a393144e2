"""Attacks: formulas on hand-made honest matrices, ALIE's z, parameters, kinds."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest

from hgo_common import attacks
from hgo_common.attacks import AttackKindError
from hgo_common.attacks.alie import alie_z, alie_z_hgo

RNG = np.random.default_rng(0)
HONEST = np.array(
    [
        [1.0, -2.0, 0.5, 10.0],
        [3.0, -2.0, 1.5, 20.0],
        [5.0, -2.0, 4.0, 0.0],
    ]
)
# Column means and population standard deviations of HONEST, by hand:
MEAN = np.array([3.0, -2.0, 2.0, 10.0])
STD = np.array([math.sqrt(8 / 3), 0.0, math.sqrt((2.25 + 0.25 + 4.0) / 3), math.sqrt(200 / 3)])


def test_names_match_contract() -> None:
    assert attacks.names() == [
        "alie",
        "alie-authors",
        "alie-authors-nan",
        "alie-baruch",
        "alie-hgo-paper",
        "foe",
        "foe-authors",
        "gaussian",
        "label-flip",
        "large-value",
        "nan",
        "sign-flip",
        "silent",
    ]
    kinds = {name: attacks.get(name).kind for name in attacks.names()}
    assert kinds["label-flip"] == "data"
    assert kinds["silent"] == "silent"
    assert {k for n, k in kinds.items() if n not in ("label-flip", "silent")} == {"gradient"}


def test_unknown_attack_named() -> None:
    with pytest.raises(ValueError, match="'krum-attack'"):
        attacks.get("krum-attack")


@pytest.mark.parametrize(
    ("n", "f", "s"),
    [(50, 24, 2), (100, 25, 26), (100, 39, 12), (10, 0, 6), (20, 9, 2)],
)
def test_alie_z_matches_paper_algorithm_2(n: int, f: int, s: int) -> None:
    # s = floor(n/2 + 1) - f computed by hand above; z = Phi^-1((n - s)/n).
    expected = NormalDist().inv_cdf((n - s) / n)
    assert alie_z(n, f) == pytest.approx(expected, abs=1e-12)


def test_alie_z_known_values() -> None:
    # Independent of the implementation's formula: tabulated normal quantiles.
    assert alie_z(50, 24) == pytest.approx(1.7506860712521692, abs=1e-9)  # Phi^-1(0.96)
    assert alie_z(100, 25) == pytest.approx(0.6433454053929170, abs=1e-9)  # Phi^-1(0.74)


@pytest.mark.parametrize(("n", "f"), [(50, 26), (50, 30), (2, 0), (1, 0)])
def test_alie_z_undefined_raises_naming_values(n: int, f: int) -> None:
    with pytest.raises(ValueError, match=rf"n={n}, f={f}"):
        alie_z(n, f)
    # An explicit z still works there.
    v = attacks.get("alie")(HONEST, n=n, f=f, rng=RNG, z=1.0)
    np.testing.assert_allclose(v, MEAN - STD)


def test_alie_vector_default_z() -> None:
    v = attacks.get("alie")(HONEST, n=50, f=24, rng=RNG)
    z = NormalDist().inv_cdf(0.96)
    np.testing.assert_allclose(v, MEAN - z * STD, rtol=1e-12)
    assert v[1] == -2.0  # zero spread: the coordinate is the honest value


def test_alie_vector_explicit_z_and_single_row() -> None:
    v = attacks.get("alie")(HONEST, n=10, f=3, rng=RNG, z=1.5)
    np.testing.assert_allclose(v, MEAN - 1.5 * STD, rtol=1e-12)
    # One honest row (a wire Byzantine worker's own gradient): std 0, v = the row.
    row = np.array([0.25, -4.0])
    np.testing.assert_array_equal(attacks.get("alie")(row, n=10, f=3, rng=RNG), row)


def test_alie_baruch_is_the_alie_that_shipped() -> None:
    # "alie" is kept as a deprecated alias: the same function, the same values.
    for kw in ({}, {"z": 1.5}):
        np.testing.assert_array_equal(
            attacks.get("alie-baruch")(HONEST, n=50, f=24, rng=RNG, **kw),
            attacks.get("alie")(HONEST, n=50, f=24, rng=RNG, **kw),
        )
    assert "deprecated" in attacks.get("alie").summary and "alie-baruch" in attacks.get("alie").summary


def test_alie_hgo_paper_z_and_sign() -> None:
    # HGO paper, Algorithm 2: s = floor(n/2 + 1) - f, z = Phi^-1((n - f - s)/(n - f)).
    # n = 100, f = 25: s = 26, quantile 49/75 = 0.65333; a normal table gives z = 0.3943.
    assert alie_z_hgo(100, 25) == pytest.approx(0.3943, abs=1e-4)
    # n = 50, f = 24: s = 2, quantile 24/26 = 0.923077; the table gives z = 1.4261.
    assert alie_z_hgo(50, 24) == pytest.approx(1.4261, abs=1e-4)
    z = alie_z_hgo(100, 25)
    v = attacks.get("alie-hgo-paper")(HONEST, n=100, f=25, rng=RNG)
    np.testing.assert_allclose(v, MEAN + z * STD, rtol=1e-12)  # plus sign, unlike alie-baruch
    assert np.all(v >= MEAN)
    explicit = attacks.get("alie-hgo-paper")(HONEST, n=5, f=1, rng=RNG, z=2.0)
    np.testing.assert_allclose(explicit, MEAN + 2 * STD)


@pytest.mark.parametrize(("n", "f"), [(50, 26), (4, 4), (60, 31)])
def test_alie_z_hgo_undefined_raises_naming_values(n: int, f: int) -> None:
    # (50, 26) and (60, 31): s <= 0, quantile >= 1; (4, 4): no honest worker at all.
    with pytest.raises(ValueError, match=rf"n={n}, f={f}"):
        alie_z_hgo(n, f)


# Honest prefixes 4, 2, 3 of the rows of HONEST, NaN-padded as the authors' fill_array does.
PADDED = HONEST.copy()
PADDED[1, 2:] = np.nan
PADDED[2, 3:] = np.nan


def test_alie_authors_nan_by_hand() -> None:
    v = attacks.get("alie-authors-nan")(PADDED, n=100, f=25, rng=RNG)
    # columns 0 and 1: every row present, as alie-authors: mean + 10 std
    assert v[0] == pytest.approx(3.0 + 10 * math.sqrt(8 / 3), rel=1e-12)
    assert v[1] == -2.0
    # columns 2 and 3: some honest prefix stops before them, np.std is NaN there
    assert np.isnan(v[2]) and np.isnan(v[3])
    # with full rows it is alie-authors
    full = attacks.get("alie-authors-nan")(HONEST, n=5, f=1, rng=RNG)
    np.testing.assert_array_equal(full, attacks.get("alie-authors")(HONEST, n=5, f=1, rng=RNG))
    assert attacks.get("alie-authors-nan").honest_view == "prefix"
    assert attacks.get("alie-authors").honest_view == "full"


def test_foe_authors_by_hand() -> None:
    v = attacks.get("foe-authors")(PADDED, n=100, f=25, rng=RNG)
    # nanmean per column: (1+3+5)/3, -2, (0.5+4)/2 (row 1 stopped), 10 (row 0 only)
    np.testing.assert_allclose(v, -10.0 * np.array([3.0, -2.0, 2.25, 10.0]), rtol=1e-12)
    allnan = np.array([[1.0, np.nan], [3.0, np.nan]])  # past the longest honest prefix
    w = attacks.get("foe-authors")(allnan, n=5, f=1, rng=RNG, eps=0.5)
    assert w[0] == -1.0 and np.isnan(w[1])
    np.testing.assert_array_equal(attacks.get("foe-authors")(HONEST, n=5, f=1, rng=RNG), -10.0 * MEAN)
    assert attacks.get("foe-authors").honest_view == "prefix"


def test_foe_vector() -> None:
    np.testing.assert_array_equal(attacks.get("foe")(HONEST, n=10, f=3, rng=RNG), -10.0 * MEAN)
    np.testing.assert_allclose(attacks.get("foe")(HONEST, n=10, f=3, rng=RNG, eps=0.1), -0.1 * MEAN)
    assert attacks.get("foe").defaults() == {"eps": 10.0}


def test_foe_inner_product_is_negative() -> None:
    g = np.random.default_rng(5).normal(size=(8, 100)) + 1.0
    v = attacks.get("foe")(g, n=10, f=2, rng=RNG, eps=0.5)
    assert float(v @ g.mean(axis=0)) < 0


def test_sign_flip() -> None:
    np.testing.assert_array_equal(attacks.get("sign-flip")(HONEST, n=5, f=1, rng=RNG), -MEAN)


def test_gaussian_reproducible_and_scaled() -> None:
    a = attacks.get("gaussian")
    v1 = a(np.zeros((2, 50_000)), n=5, f=1, rng=np.random.default_rng(7))
    v2 = a(np.zeros((2, 50_000)), n=5, f=1, rng=np.random.default_rng(7))
    v3 = a(np.zeros((2, 50_000)), n=5, f=1, rng=np.random.default_rng(8))
    np.testing.assert_array_equal(v1, v2)
    assert not np.array_equal(v1, v3)
    # Default sigma 200: std of 50k draws within 2 % (sd of the estimate ~0.3 %), mean ~0.
    assert v1.std() == pytest.approx(200.0, rel=0.02)
    assert abs(v1.mean()) < 5.0
    v4 = a(np.zeros((1, 50_000)), n=5, f=1, rng=np.random.default_rng(7), sigma=3.0)
    assert v4.std() == pytest.approx(3.0, rel=0.02)


def test_large_value_and_nan() -> None:
    np.testing.assert_array_equal(attacks.get("large-value")(HONEST, n=5, f=1, rng=RNG), np.full(4, 1e6))
    np.testing.assert_array_equal(
        attacks.get("large-value")(HONEST, n=5, f=1, rng=RNG, value=-3.5), np.full(4, -3.5)
    )
    v = attacks.get("nan")(HONEST, n=5, f=1, rng=RNG)
    assert v.shape == (4,) and np.isnan(v).all()
    params = attacks.parse_params(["value=inf"])
    assert np.all(attacks.get("nan")(HONEST, n=5, f=1, rng=RNG, **params) == np.inf)
    assert np.all(attacks.get("nan")(HONEST, n=5, f=1, rng=RNG, value="-inf") == -np.inf)
    with pytest.raises(ValueError, match=r"value=1\.0"):
        attacks.get("nan")(HONEST, n=5, f=1, rng=RNG, value=1.0)
    with pytest.raises(ValueError, match="value=inf"):
        attacks.get("large-value")(HONEST, n=5, f=1, rng=RNG, value=math.inf)


def test_output_shape_and_dtype() -> None:
    for name in ("alie", "foe", "sign-flip", "gaussian", "large-value", "nan"):
        v = attacks.get(name)(HONEST.astype(np.float32), n=10, f=3, rng=np.random.default_rng(1))
        assert v.shape == (4,) and v.dtype == np.float64, name


def test_label_flip_values() -> None:
    lf = attacks.get("label-flip")
    y = np.array([0, 1, 2, 9, 5], dtype=np.int64)
    out = lf.transform_labels(y, 10, RNG)
    np.testing.assert_array_equal(out, [9, 8, 7, 0, 4])
    assert out.dtype == np.int64
    np.testing.assert_array_equal(lf.transform_labels(np.array([0, 1, 1], dtype=np.uint8), 2, RNG), [1, 0, 0])
    np.testing.assert_array_equal(lf.transform_labels(np.array([0.0, 1.0]), 2, RNG), [1.0, 0.0])
    np.testing.assert_allclose(lf.transform_labels(np.array([1.5, -2.0, 0.0]), 0, RNG), [-1.5, 2.0, 0.0])
    with pytest.raises(ValueError, match="10"):
        lf.transform_labels(np.array([0, 10]), 10, RNG)
    with pytest.raises(ValueError, match="n_classes"):
        lf.transform_labels(np.array([0]), 1, RNG)


def test_kinds_are_enforced() -> None:
    with pytest.raises(AttackKindError, match="silent"):
        attacks.get("silent")(HONEST, n=5, f=1, rng=RNG)
    with pytest.raises(AttackKindError, match="label-flip"):
        attacks.get("label-flip")(HONEST, n=5, f=1, rng=RNG)
    with pytest.raises(AttackKindError, match="alie"):
        attacks.get("alie").transform_labels(np.array([0, 1]), 2, RNG)


def test_unknown_param_names_param_and_accepted() -> None:
    with pytest.raises(ValueError, match=r"'epsilon'.*\['eps'\]"):
        attacks.get("foe")(HONEST, n=5, f=1, rng=RNG, epsilon=3.0)
    with pytest.raises(ValueError, match=r"'z'.*none"):
        attacks.get("sign-flip")(HONEST, n=5, f=1, rng=RNG, z=1.0)
    with pytest.raises(ValueError, match="eps=-1"):
        attacks.get("foe")(HONEST, n=5, f=1, rng=RNG, eps=-1)
    with pytest.raises(ValueError, match="sigma='big'"):
        attacks.get("gaussian")(HONEST, n=5, f=1, rng=RNG, sigma="big")
    # resolve() lets a CLI validate at start-up.
    assert attacks.get("alie").resolve(attacks.parse_params(["z=none"])) == {"z": None}
    assert attacks.get("foe").resolve({"eps": 2}) == {"eps": 2.0}


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="shape"):
        attacks.get("foe")(np.zeros((0, 3)), n=5, f=1, rng=RNG)
    with pytest.raises(ValueError, match="n=5, f=6"):
        attacks.get("foe")(HONEST, n=5, f=6, rng=RNG)
    with pytest.raises(ValueError, match="rng"):
        attacks.get("gaussian")(HONEST, n=5, f=1, rng=0)  # type: ignore[arg-type]


def test_parse_params_types() -> None:
    p = attacks.parse_params(["z=1.5", "eps=10", "value=inf", "mode=fast", "x=-2", "y=1e6", "w=none"])
    assert p == {"z": 1.5, "eps": 10, "value": math.inf, "mode": "fast", "x": -2, "y": 1e6, "w": None}
    assert type(p["eps"]) is int and type(p["z"]) is float
    assert attacks.parse_params([]) == {}
    assert math.isnan(attacks.parse_params(["value=nan"])["value"])


@pytest.mark.parametrize(
    ("items", "bad"),
    [(["z"], "'z'"), (["=3"], "'=3'"), (["z=1", "z=2"], "'z=2'"), (["z="], "'z='"), (["a b=1"], "'a b=1'")],
)
def test_parse_params_errors_name_item(items: list[str], bad: str) -> None:
    with pytest.raises(ValueError, match=bad):
        attacks.parse_params(items)


def test_parse_params_rejects_plain_string() -> None:
    with pytest.raises(ValueError, match="z=1"):
        attacks.parse_params("z=1")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "expect"),
    [("alie-authors-nan", "shortest"), ("foe-authors", "longest"), ("alie-authors", "d")],
)
def test_prefix_view_attacks_in_the_simulator(name: str, expect: str) -> None:
    """Omniscient attackers with honest_view "prefix" see NaN past each honest prefix (the
    authors' fill_array); the server's non-finite policy then ends the Byzantine prefix
    where their statistics stop: the shortest honest prefix for ALIE (np.std is NaN past
    it), the longest for FoE (nanmean exists up to it). "full" attacks send all d."""
    from hgo_lab.simulator import SimConfig, run

    # breast cancer, d = 31; tau 10, s = 4: prefixes floor(rate * 10 / 4) = 10, 15, 20, ...
    cfg = SimConfig(
        model="logistic", dataset="breast-cancer", n=8, q=8, v=5, attackers=2, f=1, attack=name,
        rule="median", tau=10.0, early_close=False, rates=(4.0, 6.0, 8.0, 10.0, 5.0, 7.0, 9.0, 3.0),
        batch_size=4, lr=0.5, rounds=3, eval_every=3,
    )  # fmt: skip
    res = run(cfg)
    for rec in res.records:
        honest = [w["prefix"] for w in rec["workers"] if not w["byzantine"]]
        byz = [w["prefix"] for w in rec["workers"] if w["byzantine"]]
        assert len(byz) == 2 and min(honest) < max(honest) < 31
        want = {"shortest": min(honest), "longest": max(honest), "d": 31}[expect]
        assert byz == [want, want], (rec["round"], honest, byz)
