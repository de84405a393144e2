"""hgo_common.datasets: bundled and file loaders (on the verified files in ../shared/data
and on small malformed files written here), splits, scaling, and partitions."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hgo_common import datasets
from hgo_common.datasets import DataFileError
from hgo_common.datasets.csv import read_boston
from hgo_common.datasets.libsvm import read_libsvm
from hgo_common.datasets.mnist import parse_idx, read_idx_bytes

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
MNIST_TRAIN_IMAGES_MD5 = "6bbc9ace898e44ae57da46a324031adb"


# --- bundled datasets ---------------------------------------------------------------


def test_names_and_default_models() -> None:
    assert datasets.names() == [
        "digits",
        "digits-binary",
        "breast-cancer",
        "diabetes",
        "mnist",
        "mnist-binary",
        "phishing",
        "boston",
        "cifar10",
        "cifar10-synthetic",
    ]
    assert datasets.bundled_names() == [
        "digits", "digits-binary", "breast-cancer", "diabetes", "cifar10-synthetic"
    ]  # fmt: skip
    expect = {"digits": "mlp", "digits-binary": "logistic", "breast-cancer": "logistic", "diabetes": "linear"}
    for name, model in expect.items():
        assert datasets.load(name).default_model == model


@pytest.mark.parametrize(
    ("name", "n", "p", "n_classes"),
    [
        ("digits", 1797, 64, 10),
        ("digits-binary", 1797, 64, 2),
        ("breast-cancer", 569, 30, 2),
        ("diabetes", 442, 10, 0),
    ],
)
def test_bundled_shapes_split_and_scaling(name: str, n: int, p: int, n_classes: int) -> None:
    ds = datasets.load(name, seed=3, test_fraction=0.25)
    assert ds.n_train + ds.n_test == n
    assert ds.n_test == pytest.approx(0.25 * n, abs=n_classes + 1)
    assert ds.n_features == p == ds.X_train.shape[1] == ds.X_test.shape[1]
    assert ds.n_classes == n_classes
    for X in (ds.X_train, ds.X_test):
        assert X.dtype == np.float32 and X.flags.c_contiguous
    # Standardized with train statistics: exactly centred on train, not on test.
    np.testing.assert_allclose(ds.X_train.mean(axis=0), 0.0, atol=1e-5)
    stds = ds.X_train.std(axis=0)
    assert np.all((np.abs(stds - 1) < 1e-4) | (stds == 0))
    assert np.abs(ds.X_test.mean(axis=0)).max() > 1e-3
    if n_classes:
        assert ds.y_train.dtype == np.int64
        # Stratified: each class's test share is within one row of 25%.
        tr = np.bincount(ds.y_train, minlength=n_classes)
        te = np.bincount(ds.y_test, minlength=n_classes)
        assert np.all(np.abs(te - 0.25 * (tr + te)) <= 0.5 + 1e-9)
    else:
        assert ds.task == "regression" and ds.y_train.dtype == np.float64


def test_digits_binary_is_parity_of_digits() -> None:
    raw_d = datasets.load("digits", seed=5, standardize=False)
    raw_b = datasets.load("digits-binary", seed=5, standardize=False)
    X_b = np.concatenate([raw_b.X_train, raw_b.X_test])
    y_b = np.concatenate([raw_b.y_train, raw_b.y_test])
    assert np.bincount(y_b).tolist() == [891, 906]  # even, odd
    # Same images; the split differs (stratified on other labels), so match rows by content.
    parity = {r.tobytes(): int(y) for r, y in zip(X_b, y_b, strict=True)}
    digit = {
        r.tobytes(): int(y) % 2
        for r, y in zip(
            np.concatenate([raw_d.X_train, raw_d.X_test]),
            np.concatenate([raw_d.y_train, raw_d.y_test]),
            strict=True,
        )
    }
    common = set(parity) & set(digit)
    assert len(common) > 1700
    assert all(parity[k] == digit[k] for k in common)


def test_seeds_max_train_and_standardize_switch() -> None:
    a = datasets.load("breast-cancer", seed=1)
    b = datasets.load("breast-cancer", seed=1)
    c = datasets.load("breast-cancer", seed=2)
    np.testing.assert_array_equal(a.X_train, b.X_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.X_train, c.X_train)
    small = datasets.load("breast-cancer", seed=1, max_train=100)
    assert small.n_train == 100 and small.n_test == a.n_test
    np.testing.assert_array_equal(
        small.y_train, datasets.load("breast-cancer", seed=1, max_train=100).y_train
    )
    raw = datasets.load("breast-cancer", seed=1, standardize=False, max_train=100)
    # The subsample is a subset of the full training rows (raw values, so comparable).
    full_raw = datasets.load("breast-cancer", seed=1, standardize=False)
    assert {tuple(r) for r in raw.X_train} <= {tuple(r) for r in full_raw.X_train}
    assert raw.X_train.max() > 100  # area features unscaled
    big = datasets.load("breast-cancer", seed=1, max_train=10**6)
    assert big.n_train == a.n_train


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="'imagenet'"):
        datasets.load("imagenet")
    with pytest.raises(ValueError, match=r"1\.5"):
        datasets.load("digits", test_fraction=1.5)
    with pytest.raises(ValueError, match="max_train must be >= 1 or None, got 0"):
        datasets.load("digits", max_train=0)
    for name in ("mnist", "phishing", "boston", "cifar10", "mnist-binary"):
        with pytest.raises(ValueError, match="digits-binary") as err:
            datasets.load(name)
        assert repr(name) in str(err.value) and "data_dir" in str(err.value)


def test_importing_core_does_not_import_sklearn() -> None:
    code = "import sys, hgo_common.datasets, hgo_common.models; print('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- MNIST --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist(shared_data: Path) -> datasets.Dataset:
    return datasets.load("mnist", data_dir=shared_data / "mnist")


def test_mnist_official_split_and_counts(mnist: datasets.Dataset) -> None:
    assert mnist.X_train.shape == (60000, 784) and mnist.X_test.shape == (10000, 784)
    assert np.bincount(mnist.y_train).tolist() == MNIST_TRAIN_COUNTS
    assert np.bincount(mnist.y_test).tolist() == MNIST_TEST_COUNTS
    assert mnist.X_train.dtype == np.float32 and mnist.X_train.flags.c_contiguous
    assert mnist.X_train.min() == 0.0 and mnist.X_train.max() == 1.0  # [0, 1], not standardized
    assert (mnist.n_classes, mnist.default_model) == (10, "mlp")


def test_mnist_decompressed_content_md5(shared_data: Path) -> None:
    raw = read_idx_bytes(shared_data / "mnist" / "train-images-idx3-ubyte.gz")
    assert hashlib.md5(raw).hexdigest() == MNIST_TRAIN_IMAGES_MD5
    images = parse_idx(raw, "train-images", 2051)
    assert images.shape == (60000, 28, 28)


def test_mnist_binary_parity_and_subsample(shared_data: Path, mnist: datasets.Dataset) -> None:
    # data_dir may also be the parent of mnist/.
    b = datasets.load("mnist-binary", data_dir=shared_data, max_train=2000, seed=4)
    assert b.n_train == 2000 and b.n_test == 10000 and b.default_model == "logistic"
    np.testing.assert_array_equal(b.y_test, mnist.y_test % 2)
    odd = int(np.sum(np.array(MNIST_TRAIN_COUNTS)[1::2]))
    assert abs(b.y_train.mean() - odd / 60000) < 0.05


def _write_idx(path: Path, magic: int, shape: tuple[int, ...], data: bytes, compress: bool) -> None:
    head = magic.to_bytes(4, "big") + b"".join(s.to_bytes(4, "big") for s in shape)
    blob = head + data
    path.write_bytes(gzip.compress(blob) if compress else blob)


def _fake_mnist(d: Path, compress: bool, n: int = 6) -> np.ndarray:
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    ext = ".gz" if compress else ""
    for prefix in ("train", "t10k"):
        _write_idx(d / f"{prefix}-images-idx3-ubyte{ext}", 2051, imgs.shape, imgs.tobytes(), compress)
        _write_idx(d / f"{prefix}-labels-idx1-ubyte{ext}", 2049, labels.shape, labels.tobytes(), compress)
    return imgs


@pytest.mark.parametrize("compress", [True, False])
def test_mnist_raw_and_gz_files(tmp_path: Path, compress: bool) -> None:
    imgs = _fake_mnist(tmp_path, compress)
    ds = datasets.load("mnist", data_dir=tmp_path)
    np.testing.assert_allclose(ds.X_train, imgs.reshape(6, 784) / 255.0, rtol=1e-6)
    assert ds.y_test.tolist() == [0, 1, 2, 3, 4, 5]


def test_mnist_malformed_files(tmp_path: Path) -> None:
    imgs = _fake_mnist(tmp_path, compress=False)
    path = tmp_path / "train-images-idx3-ubyte"
    # Truncated: the header promises 6 images, the body holds 5.5.
    _write_idx(path, 2051, imgs.shape, imgs.tobytes()[: 5 * 784 + 392], compress=False)
    with pytest.raises(DataFileError, match=r"train-images-idx3-ubyte: IDX file truncated.*4704 bytes.*4312"):
        datasets.load("mnist", data_dir=tmp_path)
    # Wrong magic (a labels file where images are expected).
    _write_idx(path, 2049, imgs.shape, imgs.tobytes(), compress=False)
    with pytest.raises(DataFileError, match="wrong IDX magic number 2049, expected 2051"):
        datasets.load("mnist", data_dir=tmp_path)
    # Truncated gzip stream.
    _write_idx(tmp_path / "x.gz", 2051, imgs.shape, imgs.tobytes(), compress=True)
    path.unlink()
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes((tmp_path / "x.gz").read_bytes()[:200])
    with pytest.raises(DataFileError, match=r"train-images-idx3-ubyte\.gz: corrupt or truncated gzip"):
        datasets.load("mnist", data_dir=tmp_path)
    # Missing file: the message lists the expected names.
    (tmp_path / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataFileError, match=r"train-images-idx3-ubyte\.gz"):
        datasets.load("mnist", data_dir=tmp_path)
    # Image/label count mismatch.
    _fake_mnist(tmp_path, compress=False)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", 2049, (5,), bytes(5), compress=False)
    with pytest.raises(DataFileError, match="6 images but 5 labels"):
        datasets.load("mnist", data_dir=tmp_path)


# --- phishing (LIBSVM) ----------------------------------------------------------------


def test_phishing(shared_data: Path) -> None:
    from sklearn.datasets import load_svmlight_file

    path = shared_data / "phishing" / "phishing.libsvm"
    X, y = read_libsvm(path)
    assert X.shape == (11055, 68)
    ref_X, ref_y = load_svmlight_file(str(path))
    np.testing.assert_array_equal(X, ref_X.toarray())
    np.testing.assert_array_equal(y, ref_y)
    ds = datasets.load("phishing", data_dir=shared_data, seed=0, standardize=False)
    assert (ds.n_features, ds.n_classes, ds.default_model) == (68, 2, "svm")
    counts = np.bincount(ds.y_train) + np.bincount(ds.y_test)
    assert counts.tolist() == [4898, 6157]
    # Rows are unit-length one-hot encodings.
    np.testing.assert_allclose(np.linalg.norm(ds.X_train, axis=1), 1.0, atol=1e-4)


def test_libsvm_bad_line_and_label_mapping(tmp_path: Path) -> None:
    path = tmp_path / "phishing.libsvm"
    path.write_text("1 1:0.5 3:1\n# comment\n\n-1 2:1 # trailing\n1 2:0.25 x:3\n")
    with pytest.raises(DataFileError, match=r"phishing.libsvm line 5: bad feature 'x:3'"):
        datasets.load("phishing", data_dir=tmp_path)
    path.write_text("1 1:0.5 3:1\n-1 2:1\nfoo 1:1\n")
    with pytest.raises(DataFileError, match="line 3: bad label 'foo'"):
        read_libsvm(path)
    path.write_text("".join(f"{1 if i % 2 else -1} {1 + i % 3}:{i}\n" for i in range(20)))
    ds = datasets.load("phishing", data_dir=tmp_path, standardize=False, test_fraction=0.5)
    assert ds.n_features == 3
    assert sorted(np.concatenate([ds.y_train, ds.y_test]).tolist()) == [0] * 10 + [1] * 10
    # -1 -> 0 and +1 -> 1: odd rows have label 1 and value i at column i % 3.
    X = np.concatenate([ds.X_train, ds.X_test])
    y = np.concatenate([ds.y_train, ds.y_test])
    assert np.all(y[X.sum(axis=1) % 2 == 1] == 1)


# --- Boston (CSV / UCI) ---------------------------------------------------------------


def test_boston_both_layouts_identical(shared_data: Path, tmp_path: Path) -> None:
    X1, y1 = read_boston(shared_data / "boston" / "housing.data")
    X2, y2 = read_boston(shared_data / "boston" / "BostonHousing.csv")
    assert X1.shape == (506, 13)
    np.testing.assert_array_equal(X1, X2)
    np.testing.assert_array_equal(y1, y2)
    assert y1[:3].tolist() == [24.0, 21.6, 34.7]
    loaded = []
    for name in ("housing.data", "BostonHousing.csv"):
        d = tmp_path / name.split(".")[0]
        d.mkdir()
        (d / name).write_bytes((shared_data / "boston" / name).read_bytes())
        loaded.append(datasets.load("boston", data_dir=d, seed=2))
    np.testing.assert_array_equal(loaded[0].X_train, loaded[1].X_train)
    np.testing.assert_array_equal(loaded[0].y_test, loaded[1].y_test)
    assert (loaded[0].n_train, loaded[0].n_test, loaded[0].task) == (405, 101, "regression")


def test_boston_malformed(tmp_path: Path) -> None:
    path = tmp_path / "housing.data"
    path.write_text(" ".join(["1"] * 14) + "\n" + " ".join(["1"] * 13) + "\n")
    with pytest.raises(DataFileError, match=r"housing\.data line 2: 13 columns, expected 14"):
        datasets.load("boston", data_dir=tmp_path)
    path.write_text(" ".join(["1"] * 14) + "\n" + " ".join(["1"] * 13) + " abc\n")
    with pytest.raises(DataFileError, match="line 2: 'abc' is not a number"):
        datasets.load("boston", data_dir=tmp_path)
    path.unlink()
    with pytest.raises(DataFileError, match=r"BostonHousing\.csv"):
        datasets.load("boston", data_dir=tmp_path)


# --- CIFAR-10 -------------------------------------------------------------------------

CIFAR_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def _fake_cifar(d: Path, n: int = 4) -> dict[str, np.ndarray]:
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    out = {}
    for name in CIFAR_BATCHES:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        batch = {
            b"batch_label": name.encode(),
            b"data": data,
            b"labels": [int(v) for v in rng.integers(0, 10, n)],
        }
        with (d / name).open("wb") as fh:
            pickle.dump(batch, fh, protocol=2)
        out[name] = data
    return out


def test_cifar10_fake_batches(tmp_path: Path) -> None:
    written = _fake_cifar(tmp_path / "cifar-10-batches-py")
    ds = datasets.load("cifar10", data_dir=tmp_path)
    assert ds.X_train.shape == (20, 3072) and ds.X_test.shape == (4, 3072)
    expect = np.concatenate([written[n] for n in CIFAR_BATCHES[:5]]) / 255.0
    np.testing.assert_allclose(ds.X_train, expect, rtol=1e-6)
    assert (ds.default_model, ds.n_classes) == ("mlp", 10)
    # data_dir may be the batch folder itself.
    assert datasets.load("cifar10", data_dir=tmp_path / "cifar-10-batches-py").n_train == 20


def test_cifar10_malformed(tmp_path: Path) -> None:
    d = tmp_path / "cifar-10-batches-py"
    _fake_cifar(d)
    with (d / "data_batch_3").open("wb") as fh:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1], b"evil": Path("/")}, fh)
    with pytest.raises(DataFileError, match="data_batch_3: refusing to unpickle global pathlib"):
        datasets.load("cifar10", data_dir=tmp_path)
    with (d / "data_batch_3").open("wb") as fh:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, fh)
    with pytest.raises(DataFileError, match=r"data_batch_3: data must be \(n, 3072\) uint8"):
        datasets.load("cifar10", data_dir=tmp_path)
    (d / "data_batch_3").write_bytes(b"\x80\x02}q\x00")
    with pytest.raises(DataFileError, match="data_batch_3: not a readable CIFAR-10 python batch"):
        datasets.load("cifar10", data_dir=tmp_path)
    (d / "test_batch").unlink()
    with pytest.raises(DataFileError, match=r"missing \['test_batch'\]"):
        datasets.load("cifar10", data_dir=tmp_path)


# --- partitions -----------------------------------------------------------------------


def test_parse_partition() -> None:
    assert datasets.parse_partition("iid") == ("iid", None)
    assert datasets.parse_partition("classes:2") == ("classes", 2)
    assert datasets.parse_partition("dirichlet:0.5") == ("dirichlet", 0.5)
    for bad in (
        "classes:0",
        "classes:1.5",
        "classes:",
        "dirichlet:-1",
        "dirichlet:0",
        "dirichlet:nan",
        "foo",
        "iid:3",
    ):
        with pytest.raises(ValueError, match=repr(bad)):
            datasets.parse_partition(bad)


def _check_cover(shards: list[np.ndarray], n: int) -> None:
    allidx = np.concatenate(shards)
    assert np.array_equal(np.sort(allidx), np.arange(n)), "every index exactly once"
    assert all(s.size > 0 for s in shards), "no empty shard"


labels_st = st.lists(st.integers(0, 9), min_size=1, max_size=300).map(lambda v: np.array(v, dtype=np.int64))


@settings(max_examples=60, deadline=None)
@given(y=labels_st, n_shards=st.integers(1, 20), seed=st.integers(0, 2**32 - 1))
def test_iid_partition_properties(y: np.ndarray, n_shards: int, seed: int) -> None:
    if y.size < n_shards:
        with pytest.raises(ValueError, match="non-empty"):
            datasets.partition(y, n_shards, "iid", seed)
        return
    shards = datasets.partition(y, n_shards, "iid", np.random.default_rng(seed))
    assert len(shards) == n_shards
    _check_cover(shards, y.size)
    sizes = [s.size for s in shards]
    assert max(sizes) - min(sizes) <= 1


@settings(max_examples=80, deadline=None)
@given(y=labels_st, n_shards=st.integers(1, 20), k=st.integers(1, 4), seed=st.integers(0, 2**32 - 1))
def test_classes_partition_properties(y: np.ndarray, n_shards: int, k: int, seed: int) -> None:
    scheme = f"classes:{k}"
    n_classes = np.unique(y).size
    if y.size < n_shards * k or n_shards * k < n_classes:
        with pytest.raises(ValueError, match=scheme):
            datasets.partition(y, n_shards, scheme, seed)
        return
    shards = datasets.partition(y, n_shards, scheme, seed)
    _check_cover(shards, y.size)
    assert max(np.unique(y[s]).size for s in shards) <= k
    again = datasets.partition(y, n_shards, scheme, seed)
    assert all(np.array_equal(a, b) for a, b in zip(shards, again, strict=True))


@settings(max_examples=80, deadline=None)
@given(
    y=labels_st,
    n_shards=st.integers(1, 20),
    alpha=st.sampled_from([0.01, 0.1, 1.0, 100.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_dirichlet_partition_properties(y: np.ndarray, n_shards: int, alpha: float, seed: int) -> None:
    scheme = f"dirichlet:{alpha}"
    if y.size < n_shards:
        with pytest.raises(ValueError, match="non-empty"):
            datasets.partition(y, n_shards, scheme, seed)
        return
    shards = datasets.partition(y, n_shards, scheme, np.random.default_rng(seed))
    _check_cover(shards, y.size)
    again = datasets.partition(y, n_shards, scheme, np.random.default_rng(seed))
    assert all(np.array_equal(a, b) for a, b in zip(shards, again, strict=True))


def test_partition_skew_on_real_labels() -> None:
    y = datasets.load("digits").y_train
    iid = datasets.partition(y, 10, "iid", 0)
    two = datasets.partition(y, 10, "classes:2", 0)
    assert min(np.unique(y[s]).size for s in iid) == 10
    assert [np.unique(y[s]).size for s in two] == [2] * 10 or max(np.unique(y[s]).size for s in two) <= 2

    # Small alpha concentrates each shard on few classes; large alpha is near IID.
    def top_share(scheme: str) -> float:
        shards = datasets.partition(y, 10, scheme, 0)
        return float(np.mean([np.bincount(y[s]).max() / s.size for s in shards]))

    assert top_share("dirichlet:0.05") > 0.5 > 0.2 > top_share("dirichlet:1000")
    assert (
        datasets.partition(y, 10, "dirichlet:0.5", 1)[0].tolist()
        != datasets.partition(y, 10, "dirichlet:0.5", 2)[0].tolist()
    )


def test_partition_rejects_regression_targets_and_bad_shards() -> None:
    y = np.linspace(0, 1, 50)
    assert len(datasets.partition(y, 5, "iid", 0)) == 5
    with pytest.raises(ValueError, match="integer class labels"):
        datasets.partition(y, 5, "classes:2", 0)
    with pytest.raises(ValueError, match="n_shards must be >= 1, got 0"):
        datasets.partition(np.zeros(5, dtype=int), 0, "iid", 0)
    with pytest.raises(ValueError, match="cannot cover the 10 classes"):
        datasets.partition(np.arange(100) % 10, 4, "classes:2", 0)
