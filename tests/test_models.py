"""hgo_common.models: analytic gradients against finite differences, coordinate subsets,
learning on real (bundled) data, layouts and argument validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hgo_common import datasets, models
from hgo_common.order import make_order

# (name, create kwargs) covering every model and the MLP's options.
CASES = [
    ("linear", {}),
    ("linear", {"l2": 0.3}),
    ("logistic", {}),
    ("logistic", {"l2": 0.1}),
    ("svm", {}),
    ("svm", {"l2": 0.5}),
    ("mlp", {"n_classes": 3, "hidden": (4,)}),
    ("mlp", {"n_classes": 4, "hidden": (5, 3), "l2": 0.2}),
    ("mlp", {"n_classes": 3, "hidden": (6,), "activation": "relu", "l2": 0.05}),
    ("mlp", {"n_classes": 2, "hidden": ()}),
]


def _problem(name: str, kw: dict[str, object], seed: int) -> tuple[models.Model, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = 6
    m = models.create(name, n_features=p, **kw)  # type: ignore[arg-type]
    X = rng.normal(size=(25, p))
    y = rng.normal(size=25) if m.task == "regression" else rng.integers(0, m.n_classes, size=25)
    return m, X, y


def _finite_diff(m: models.Model, w: np.ndarray, X: np.ndarray, y: np.ndarray, h: float = 1e-6) -> np.ndarray:
    eye = np.eye(m.dim)
    return np.array([(m.loss(w + h * e, X, y) - m.loss(w - h * e, X, y)) / (2 * h) for e in eye])


@pytest.mark.parametrize(("name", "kw"), CASES)
def test_gradient_matches_central_differences(name: str, kw: dict[str, object]) -> None:
    for seed in range(4):
        m, X, y = _problem(name, kw, seed)
        rng = np.random.default_rng(100 + seed)
        # Random points, not just the init, so nonlinear regions are exercised.
        w = rng.normal(scale=0.7, size=m.dim)
        g = m.gradient(w, X, y)
        fd = _finite_diff(m, w, X, y)
        assert g.shape == (m.dim,)
        rel = np.linalg.norm(g - fd) / max(np.linalg.norm(fd), 1e-12)
        assert rel < 1e-5, (name, kw, seed, rel)


@pytest.mark.parametrize(("name", "kw"), CASES)
def test_coordinate_subsets_equal_indexed_full_gradient(name: str, kw: dict[str, object]) -> None:
    m, X, y = _problem(name, kw, 7)
    rng = np.random.default_rng(8)
    w = rng.normal(size=m.dim)
    full = m.gradient(w, X, y)
    for k in (0, 1, 3, m.dim // 2, m.dim):
        coords = rng.permutation(m.dim)[:k]
        np.testing.assert_allclose(m.gradient(w, X, y, coords), full[coords], rtol=1e-12, atol=1e-15)
    # Repeated coordinates and the bias alone (the last coordinate for linear models).
    coords = np.array([m.dim - 1, 0, 0, m.dim - 1])
    np.testing.assert_allclose(m.gradient(w, X, y, coords), full[coords], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", ["linear", "logistic", "svm"])
def test_linear_models_column_gather_and_full_paths_agree(name: str) -> None:
    # p = 300: k < p/10 takes the column-gather path, larger k the full product.
    rng = np.random.default_rng(11)
    m = models.create(name, n_features=300, l2=0.01)
    X = rng.normal(size=(40, 300)).astype(np.float32)
    y = rng.normal(size=40) if name == "linear" else rng.integers(0, 2, size=40)
    w = rng.normal(size=m.dim)
    full = m.gradient(w, X, y)
    for k in (1, 5, 29, 31, 200, 301):
        coords = rng.permutation(m.dim)[:k]
        np.testing.assert_allclose(m.gradient(w, X, y, coords), full[coords], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", [n for n in models.names() if n not in models.TORCH_MODELS])  # numpy models
def test_float32_inputs_are_computed_in_float64(name: str) -> None:
    m, X, y = _problem(name, {"n_classes": 3} if name == "mlp" else {}, 3)
    X32 = X.astype(np.float32)
    w = np.random.default_rng(4).normal(size=m.dim)
    g32 = m.gradient(w, X32, y)
    assert g32.dtype == np.float64
    np.testing.assert_allclose(g32, m.gradient(w, X32.astype(np.float64), y), rtol=1e-12, atol=1e-14)
    assert m.loss(w, X32, y) == pytest.approx(m.loss(w, X32.astype(np.float64), y), rel=1e-12)


def test_logistic_is_stable_for_huge_scores() -> None:
    m = models.create("logistic", n_features=2)
    X = np.array([[1.0, 0.0], [0.0, 1.0]])
    y = np.array([1, 0])
    w = np.array([1e6, -1e6, 0.0])  # perfectly right, scores +-1e6
    assert m.loss(w, X, y) == pytest.approx(0.0, abs=1e-300)
    wrong = np.array([-1e6, 1e6, 0.0])  # perfectly wrong: loss = 1e6 exactly
    assert m.loss(wrong, X, y) == pytest.approx(1e6)
    np.testing.assert_allclose(m.gradient(wrong, X, y), [-0.5, 0.5, 0.0])
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow to 0 is fine
        m.gradient(wrong, X, y)
        m.loss(wrong, X, y)


def test_svm_subgradient_and_default_regularization() -> None:
    assert models.create("svm", n_features=3).l2 == models.default_l2("svm") == 1e-4
    assert models.create("svm", n_features=3, l2=0.0).l2 == 0.0
    assert models.create("logistic", n_features=3).l2 == 0.0
    m = models.create("svm", n_features=1, l2=0.0)
    X = np.array([[1.0], [1.0]])
    y = np.array([1, 0])  # t = +1, -1
    # w=2, b=0: margins t z = 2 (inactive) and -2 (active): loss = (0 + 3)/2.
    w = np.array([2.0, 0.0])
    assert m.loss(w, X, y) == pytest.approx(1.5)
    np.testing.assert_allclose(m.gradient(w, X, y), [0.5, 0.5])
    # At the kink t z = 1 exactly the subgradient 0 is used.
    np.testing.assert_allclose(m.gradient(np.array([1.0, 0.0]), X[:1], y[:1]), [0.0, 0.0])


def _gd(
    m: models.Model, X: np.ndarray, y: np.ndarray, lr: float, steps: int
) -> tuple[np.ndarray, list[float]]:
    w = m.init(np.random.default_rng(0))
    losses = [m.loss(w, X, y)]
    for _ in range(steps):
        w = w - lr * m.gradient(w, X, y)
        losses.append(m.loss(w, X, y))
    return w, losses


@pytest.mark.parametrize(
    ("model", "dataset", "lr"), [("logistic", "breast-cancer", 0.5), ("linear", "diabetes", 0.1)]
)
def test_gradient_descent_decreases_loss(model: str, dataset: str, lr: float) -> None:
    ds = datasets.load(dataset, seed=0)
    m = models.create(model, n_features=ds.n_features, n_classes=max(ds.n_classes, 2))
    w, losses = _gd(m, ds.X_train, ds.y_train, lr, 200)
    assert np.all(np.diff(losses) <= 1e-12), "full-batch GD with a small step must not increase the loss"
    assert losses[-1] < 0.5 * losses[0]
    if model == "logistic":
        assert m.evaluate(w, ds.X_test, ds.y_test)["accuracy"] > 0.93
    else:
        # Diabetes: least squares explains about half the variance of the target.
        r2 = 1 - 2 * losses[-1] / float(np.var(ds.y_train))
        assert r2 > 0.45


def test_mlp_learns_digits_with_plain_sgd() -> None:
    ds = datasets.load("digits", seed=0)
    m = models.create("mlp", n_features=ds.n_features, n_classes=ds.n_classes, hidden=(30,))
    rng = np.random.default_rng(1)
    w = m.init(rng)
    before = m.evaluate(w, ds.X_test, ds.y_test)
    n = ds.n_train
    for _ in range(15):  # epochs of mini-batch SGD, batch 32, constant step
        perm = rng.permutation(n)
        for s in range(0, n, 32):
            b = perm[s : s + 32]
            w -= 0.5 * m.gradient(w, ds.X_train[b], ds.y_train[b])
    after = m.evaluate(w, ds.X_test, ds.y_test)
    assert after["accuracy"] > 0.85
    assert after["loss"] < 0.5 * before["loss"]
    assert before["accuracy"] < 0.5


def test_mlp_parameter_layout_and_groups() -> None:
    m = models.create("mlp", n_features=784, n_classes=10)
    assert m.layer_sizes == (784, 30, 10)
    assert m.groups == (784 * 30, 30, 30 * 10, 10)
    assert sum(m.groups) == m.dim == 784 * 30 + 30 + 30 * 10 + 10
    # W_1[o, i] is coordinate o * 784 + i; b_1 follows W_1; W_2 follows b_1.
    small = models.create("mlp", n_features=3, n_classes=2, hidden=(2,))
    w = np.zeros(small.dim)
    W1 = np.array([[1.0, 2.0, 3.0], [-1.0, 0.5, 0.0]])
    b1 = np.array([0.1, -0.2])
    W2 = np.array([[1.0, -1.0], [0.5, 2.0]])
    b2 = np.array([0.3, 0.0])
    w[:] = np.concatenate([W1.ravel(), b1, W2.ravel(), b2])
    x = np.array([[0.2, -0.4, 0.6]])
    h = 1 / (1 + np.exp(-(x @ W1.T + b1)))
    z = h @ W2.T + b2
    expect = float(np.logaddexp(z[0, 0], z[0, 1]) - z[0, 1])
    assert small.loss(w, x, np.array([1])) == pytest.approx(expect, rel=1e-12)
    assert small.predict(w, x)[0] == int(np.argmax(z))
    # The stratified order accepts the groups and balances every prefix.
    order = make_order(5, m.dim, "stratified", m.groups)
    first = order[:1000]
    assert np.sum(first >= 784 * 30 + 30) in (12, 13, 14)  # W_2 + b_2 hold 310/23860 of d


def test_init_scales_and_reproducibility() -> None:
    m = models.create("mlp", n_features=784, n_classes=10)
    w1 = m.init(np.random.default_rng(3))
    w2 = m.init(np.random.default_rng(3))
    np.testing.assert_array_equal(w1, w2)
    W1 = w1[: 784 * 30]
    lim = np.sqrt(6 / (784 + 30))
    assert np.abs(W1).max() <= lim
    assert W1.std() == pytest.approx(lim / np.sqrt(3), rel=0.05)  # uniform(-lim, lim)
    np.testing.assert_array_equal(w1[784 * 30 : 784 * 30 + 30], 0.0)
    relu = models.create("mlp", n_features=784, n_classes=10, activation="relu")
    assert relu.init(np.random.default_rng(0))[: 784 * 30].std() == pytest.approx(np.sqrt(2 / 784), rel=0.05)


def test_linear_model_shapes_and_predictions() -> None:
    m = models.create("linear", n_features=4, n_classes=0)
    assert (m.dim, m.layer_sizes, m.groups, m.task) == (5, (4, 1), (5,), "regression")
    w = np.array([1.0, 0.0, -1.0, 2.0, 0.5])
    X = np.array([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    np.testing.assert_allclose(m.predict(w, X), [2.5, 0.5])
    ev = m.evaluate(w, X, np.array([2.5, 1.5]))
    assert ev == {"loss": pytest.approx(0.25)}  # 1/2 * mean([0, 1])
    lg = models.create("logistic", n_features=4)
    ev = lg.evaluate(w, X, np.array([1, 0]))
    assert ev["accuracy"] == 0.5  # both scores positive -> both predicted 1


def test_invalid_arguments_are_rejected_with_the_value() -> None:
    with pytest.raises(ValueError, match="'resnet'"):
        models.create("resnet", n_features=3)
    with pytest.raises(ValueError, match="n_classes=2, got 10"):
        models.create("logistic", n_features=3, n_classes=10)
    with pytest.raises(ValueError, match="-1"):
        models.create("svm", n_features=3, l2=-1)
    with pytest.raises(ValueError, match="'tanh'"):
        models.create("mlp", n_features=3, n_classes=3, activation="tanh")
    m = models.create("mlp", n_features=3, n_classes=3, hidden=(2,))
    w = np.zeros(m.dim)
    X = np.zeros((2, 3))
    with pytest.raises(ValueError, match=r"\[0, 17\)"):
        m.gradient(w, X, np.array([0, 1]), np.array([0, 17]))
    with pytest.raises(ValueError, match=r"0\.\.2"):
        m.loss(w, X, np.array([0, 3]))
    with pytest.raises(ValueError, match=r"\(n, 3\)"):
        m.loss(w, np.zeros((2, 4)), np.array([0, 1]))
    with pytest.raises(ValueError, match=r"\(17,\)"):
        m.loss(np.zeros(5), X, np.array([0, 1]))


@pytest.mark.parametrize("name", ["linear", "logistic", "svm", "mlp"])
def test_export_round_trip(name: str, tmp_path: Path) -> None:
    from hgo_common import models

    rng = np.random.default_rng(0)
    n_classes = 3 if name == "mlp" else 2
    model = models.create(name, n_features=5, n_classes=n_classes, hidden=(4, 3), l2=0.01)
    w = model.init(rng)
    mean, std = rng.normal(size=5), rng.uniform(0.5, 2.0, size=5)
    path = models.save(tmp_path / "sub" / "m.npz", model, w, meta={"round": 7}, feature_mean=mean,
                       feature_std=std)  # fmt: skip
    back = models.load(path)
    assert back.model.dim == model.dim and back.model.layer_sizes == model.layer_sizes
    assert back.model.l2 == model.l2 and back.meta["round"] == 7
    np.testing.assert_array_equal(back.weights, w)
    X = rng.normal(size=(20, 5))
    y = rng.integers(0, n_classes, size=20) if model.task == "classification" else rng.normal(size=20)
    scaled = (X - mean) / std
    np.testing.assert_array_equal(back.predict(X), model.predict(w, scaled))
    assert back.evaluate(X, y) == model.evaluate(w, scaled, y)
    assert back.evaluate(scaled, y, scaled=True) == model.evaluate(w, scaled, y)
    # plain numpy reads it without pickle
    with np.load(path, allow_pickle=False) as z:
        assert str(z["format"]) == "hgo-model" and int(z["version"]) == 1


def test_export_refuses_bad_files_and_weights(tmp_path: Path) -> None:
    from hgo_common import models

    model = models.create("logistic", n_features=3)
    with pytest.raises(ValueError, match="shape"):
        models.save(tmp_path / "m.npz", model, np.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        models.save(tmp_path / "m.npz", model, np.full(model.dim, np.nan))
    with pytest.raises(ValueError, match="does not exist"):
        models.load(tmp_path / "none.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not an HGO model file"):
        models.load(tmp_path / "junk.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(2))
    with pytest.raises(ValueError, match="not an HGO model file"):
        models.load(tmp_path / "other.npz")
    path = models.save(tmp_path / "m.npz", model, np.zeros(model.dim))
    with pytest.raises(ValueError, match=r"shape \(n, 3\)"):
        models.load(path).predict(np.zeros((2, 4)))
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary file left behind
