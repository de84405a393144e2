"""Attacks: formulas on hand-made honest matrices, ALIE's z, parameters, kinds."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest

from hgo_common import attacks
from hgo_common.attacks import AttackKindError
from hgo_common.attacks.alie import alie_z

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
        "foe",
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
