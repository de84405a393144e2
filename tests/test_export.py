"""Exported models (hgo_common.models.save / load): they carry their preprocessing, and
loading one runs no code the file names.

* Every built-in model, end to end: a real hgo-server and hgo-worker processes train it
  briefly (hgo_lab.cluster.run_cluster, what hgo-run does) and export it; the file, loaded
  with one call, scores the *raw* test rows exactly as the server scored its standardized
  ones (issue 24: the naive path gave 0.357 where the run reported 0.928).
* A crafted file (issue 20, 1b): a model name that is not built in is refused unless
  allow-listed, and nothing is imported; sizes are checked before anything is allocated.
"""

from __future__ import annotations

import importlib.util
import io
import json
import re
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from hgo_common import datasets, models
from hgo_lab.cluster import ClusterConfig, run_cluster
from tests.procs import ProcessGroup

HAS_TORCH = importlib.util.find_spec("torch") is not None

# model -> (dataset, hidden, lr): small, quick to train, each a different task or shape
CASES = {
    "linear": ("diabetes", None, 0.1),
    "logistic": ("breast-cancer", None, 0.5),
    "svm": ("breast-cancer", None, 0.5),
    "mlp": ("digits", "16", 1.0),
    "cnn": ("digits", None, 0.05),
}


# the cnn run takes about 45 s on this 2-core machine (torch start-up in each process)
PARAMS = [pytest.param(n, marks=[pytest.mark.slow] if n == "cnn" else []) for n in CASES]


@pytest.mark.parametrize("name", PARAMS)
def test_an_exported_model_scores_raw_features_as_the_run_did(name: str, procs: ProcessGroup) -> None:
    if name == "cnn" and not HAS_TORCH:
        pytest.skip("PyTorch is not installed (make install-torch)")
    dataset, hidden, lr = CASES[name]
    out = procs.workdir / name
    cfg = ClusterConfig.make(
        workers=2, rounds=15, tau="100", model=name, hidden=hidden, dataset=dataset, lr=lr,
        eval_every=0, out=out, export=out / "model.npz", progress=False, timeout_s=240,
    )  # fmt: skip
    res = run_cluster(cfg, start=procs.start)
    assert res.rounds == 15 and res.model is not None, res
    m = models.load(res.model)
    assert m.model.name == name and m.meta["dataset"] == dataset and m.meta["completed"] is True
    assert m.meta["preprocessing"]["standardize"] is True and dataset in m.meta["preprocessing"]["input"]
    ds = datasets.load(dataset, seed=0)  # standardized: what the server trained and scored
    raw = datasets.load(dataset, seed=0, standardize=False)
    assert m.feature_mean is not None and m.feature_std is not None
    np.testing.assert_array_equal(m.feature_mean, ds.feature_mean)
    np.testing.assert_array_equal(m.feature_std, ds.feature_std)
    metric = res.metric_name
    assert m.meta["evaluation"][metric] == pytest.approx(res.metric, rel=1e-12)
    # raw rows, as a user has them: the file's own standardization makes them the server's rows
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # raw rows draw no "already standardized" warning
        got = m.evaluate(raw.X_test, raw.y_test)
    assert got[metric] == pytest.approx(res.metric, rel=1e-6, abs=1e-9), (got, res.metric)
    # the Dataset itself, standardized or not: its own scaling undone
    assert m.evaluate(ds)[metric] == pytest.approx(res.metric, rel=1e-12)
    assert m.evaluate(raw)[metric] == pytest.approx(res.metric, rel=1e-6, abs=1e-9)
    # regression values differ in the last float32 digits (the Dataset standardized in float32)
    np.testing.assert_allclose(m.predict(raw), m.model.predict(m.weights, ds.X_test), rtol=1e-6)
    if m.model.task == "classification":
        np.testing.assert_array_equal(m.predict(raw.X_test), m.model.predict(m.weights, ds.X_test))
        assert m.classes is not None
        np.testing.assert_array_equal(m.classes, np.arange(ds.n_classes))
        np.testing.assert_array_equal(m.predict_labels(raw.X_test), m.classes[m.predict(raw.X_test)])
        if name != "cnn":  # 15 rounds train the numpy models well; the file is the point here
            assert res.metric > 0.6, res.metric  # chance is 0.5 (binary) or 0.1 (digits)
    else:
        with pytest.raises(ValueError, match="regression model: it has no classes"):
            m.predict_labels(raw.X_test)
    # the trap of issue 24: rows standardized twice; said, not silently scored
    with pytest.warns(UserWarning, match="look standardized already"):
        twice = m.evaluate(ds.X_test, ds.y_test)
    assert twice != got


def test_classes_and_feature_names_round_trip(tmp_path: Path) -> None:
    model = models.create("logistic", n_features=3)
    w = model.init(np.random.default_rng(0))
    path = models.save(tmp_path / "m.npz", model, w, classes=["benign", "malignant"],
                       feature_names=["a", "b", "c"], meta={"dataset": "mine"})  # fmt: skip
    m = models.load(path)
    assert m.classes is not None and m.feature_names == ("a", "b", "c")
    assert m.classes.tolist() == ["benign", "malignant"]
    X = np.random.default_rng(1).normal(size=(5, 3))
    assert m.predict_labels(X).tolist() == [["benign", "malignant"][i] for i in m.predict(X)]
    expected = {"standardize": False, "input": "3 raw features in the column order of the dataset mine"}
    assert m.meta["preprocessing"] == expected
    with np.load(path, allow_pickle=False) as z:  # still plain arrays: no pickle
        assert z["classes"].dtype.kind == "U" and z["feature_names"].dtype.kind == "U"
    with pytest.raises(ValueError, match="classes must hold 2 labels"):
        models.save(tmp_path / "x.npz", model, w, classes=["one"])
    with pytest.raises(ValueError, match="feature_names must name the 3 features"):
        models.save(tmp_path / "x.npz", model, w, feature_names=["a"])
    with pytest.raises(ValueError, match="feature_std must be > 0"):
        models.save(tmp_path / "x.npz", model, w, feature_mean=np.zeros(3), feature_std=np.zeros(3))


# ------------------------------------------------------------- crafted files (issue 20, 1b)


def _write(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:  # stored, as numpy.savez writes
        for name, data in members.items():
            zf.writestr(name + ".npy", data)
    return path


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def _members(model: str = "logistic", **meta_over: object) -> dict[str, bytes]:
    meta = {"model": model, "n_features": 3, "n_classes": 2, "hidden": [], "l2": 0.0, "activation": "",
            "dim": 4, "task": "classification", **meta_over}  # fmt: skip
    return {
        "format": _npy(np.array("hgo-model")),
        "version": _npy(np.array(1, dtype=np.int64)),
        "meta": _npy(np.array(json.dumps(meta))),
        "weights": _npy(np.zeros(int(meta["dim"]))),  # type: ignore[call-overload]
    }


@pytest.fixture
def sentinel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A module ``hgo_sentinel_mod`` that, if ever imported, writes a file (and offers a valid
    model factory, so that allow-listing it is seen to work)."""
    marker = tmp_path / "sentinel-was-imported"
    pkg = tmp_path / "site"
    pkg.mkdir()
    (pkg / "hgo_sentinel_mod.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from hgo_common.models.logistic import LogisticRegression\n"
        "def Model(n_features, n_classes, l2=0.0):\n"
        "    return LogisticRegression(n_features, l2)\n"
    )
    monkeypatch.syspath_prepend(str(pkg))
    monkeypatch.delitem(sys.modules, "hgo_sentinel_mod", raising=False)
    return marker


def test_a_file_naming_a_module_is_refused_and_imports_nothing(tmp_path: Path, sentinel: Path) -> None:
    path = _write(tmp_path / "evil.npz", _members("hgo_sentinel_mod:Model"))
    with pytest.raises(ValueError, match=r"names the model 'hgo_sentinel_mod:Model', which is not") as e:
        models.load(path)
    assert "allow_plugins=('hgo_sentinel_mod:Model',)" in str(e.value)
    assert not sentinel.exists() and "hgo_sentinel_mod" not in sys.modules
    # the same for names that would resolve through an entry point or a stdlib module
    for name in ("ridge", "os:system", "this:s"):
        with pytest.raises(ValueError, match="not built in"):
            models.load(_write(tmp_path / "e.npz", _members(name)))
    assert not sentinel.exists()
    # allowed explicitly by the caller: imported and built (the sentinel's file appears)
    m = models.load(path, allow_plugins=("hgo_sentinel_mod:Model",))
    assert sentinel.exists() and m.model.dim == 4
    # an allow-list naming something else allows nothing here
    with pytest.raises(ValueError, match="not built in"):
        models.load(_write(tmp_path / "e2.npz", _members("os:system")), allow_plugins=["hgo_sentinel_mod:M"])


def test_sizes_are_checked_before_anything_is_allocated(tmp_path: Path) -> None:
    # A weights header announcing 2^40 float64 (8 TiB) over 32 bytes of data: refused by
    # its header, before numpy allocates the array.
    members = _members()
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": (2**40,)})
    members["weights"] = buf.getvalue() + np.zeros(4).tobytes()
    with pytest.raises(ValueError, match=r"'weights': its header announces \d+ bytes"):
        models.load(_write(tmp_path / "huge.npz", members))
    # one array above max_bytes
    with pytest.raises(ValueError, match=r"'weights' is \d+ bytes, above max_bytes=1000"):
        models.load(_write(tmp_path / "big.npz", _members(dim=400, n_features=399)), max_bytes=1000)
    # sizes in the metadata that do not fit the weights, checked before a model is built
    bad_meta = [
        (dict(n_features=10**12), r"'n_features' must be an integer in \[1, 12\]"),
        (dict(n_features=7), "a logistic model of 7 features has 8 parameters"),
        (dict(model="mlp", hidden=[10**9, 10**9], n_classes=3), r"'hidden' must be a list of layer widths"),
        (dict(model="mlp", hidden=[1], n_classes=3), r"sizes \[3, 1, 3\] has 10 parameters, not 4"),
        (dict(model="cnn", n_features=3 * 10**6, n_classes=10), r"'n_features' must be an integer"),
        (dict(n_classes=10**9), r"'n_classes' must be an integer in \[2, 4\]"),
        (dict(l2=float("nan")), "'l2' must be a finite number"),
        (dict(task="clustering"), "'task' must be one of"),
    ]
    for over, match in bad_meta:
        with pytest.raises(ValueError, match=match):
            models.load(_write(tmp_path / "m.npz", _members(**over)))  # type: ignore[arg-type]
    # arrays of the wrong kind: an object array (pickle), a string where weights go
    members = _members()
    members["weights"] = _npy(np.array(["a", "b", "c", "d"]))
    with pytest.raises(ValueError, match="'weights' is <U1 of shape"):
        models.load(_write(tmp_path / "s.npz", members))
    members = _members()
    buf = io.BytesIO()
    np.save(buf, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    members["meta"] = buf.getvalue()
    with pytest.raises(ValueError, match=re.escape("'meta' is |O of shape")):
        models.load(_write(tmp_path / "o.npz", members))
    # a well-formed crafted file loads (the checks refuse only what is wrong)
    assert models.load(_write(tmp_path / "ok.npz", _members())).model.dim == 4
