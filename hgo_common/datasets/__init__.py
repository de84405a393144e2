"""Datasets by name, with seeded splits, train-only standardization and worker shards.

``datasets.load("digits")`` needs nothing but scikit-learn; the file datasets read the
standard formats from a user's ``data_dir`` (paper §6: MNIST, Boston housing, LIBSVM
phishing, CIFAR-10). See ``docs/models-and-data.md`` for each dataset's source, split,
labels and default model.

Pipeline of ``load``:

1. read the full table (bundled: scikit-learn; files: ``mnist``, ``libsvm``, ``csv``,
   ``cifar10``);
2. split: MNIST and CIFAR-10 use their official train/test sets; the others a seeded
   split with ``test_fraction`` of the rows in the test set, stratified by class for
   classification (each class contributes ``round(test_fraction * n_c)`` rows);
3. ``max_train``: keep a seeded random subset of that many training rows (in their
   original order);
4. ``standardize``: subtract the mean and divide by the standard deviation of each
   feature, both **fitted on the training rows only** (a zero std divides by 1), and
   applied to train and test. Default (``standardize=None``): on for the tabular
   datasets, off for the image datasets (MNIST, CIFAR-10 keep their [0, 1] scaling);
   ``True``/``False`` force it either way.

Features come out float32 C-contiguous; labels int64 class ids (classification) or
float64 targets (regression). scikit-learn is imported lazily (docs/design.md §8).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._files import DataFileError
from .partition import SCHEMES, PartitionScheme, parse_partition, partition

__all__ = [
    "SCHEMES",
    "DataFileError",
    "Dataset",
    "PartitionScheme",
    "bundled_names",
    "load",
    "names",
    "parse_partition",
    "partition",
]


@dataclass(frozen=True)
class Dataset:
    """A loaded dataset, split and scaled.

    Attributes
    ----------
    name, task : str
        task is "classification" or "regression".
    n_classes : int
        0 for regression.
    n_features : int
    X_train : ndarray (n_train, n_features) float32, C-contiguous
    y_train : ndarray (n_train,) int64 class ids or float64 targets
    X_test, y_test : the same for the test rows
    default_model : str
        The model the paper trains on it (a name of ``hgo_common.models``).
    feature_mean, feature_std : ndarray (n_features,) float64 or None
        The standardization applied to both splits (fitted on the training rows), None when
        the features are used as read. Exported models carry it (``hgo_common.models.save``).
    """

    name: str
    task: str
    n_classes: int
    n_features: int
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    default_model: str
    feature_mean: np.ndarray | None = None
    feature_std: np.ndarray | None = None

    @property
    def n_train(self) -> int:
        return int(self.X_train.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.X_test.shape[0])


# A raw table: (X, y) for the whole set, or (X_train, y_train, X_test, y_test) official.
_Raw = tuple[np.ndarray, ...]


@dataclass(frozen=True)
class _Spec:
    task: str
    n_classes: int
    default_model: str
    reader: Callable[[Path | None], _Raw]
    needs_files: bool
    standardize: bool  # the default when load(standardize=None)


def _digits(_: Path | None) -> _Raw:
    from .bundled import load_digits

    return load_digits()


def _digits_binary(_: Path | None) -> _Raw:
    from .bundled import load_digits_binary

    return load_digits_binary()


def _breast_cancer(_: Path | None) -> _Raw:
    from .bundled import load_breast_cancer

    return load_breast_cancer()


def _diabetes(_: Path | None) -> _Raw:
    from .bundled import load_diabetes

    return load_diabetes()


def _mnist(d: Path | None) -> _Raw:
    from .mnist import load_mnist

    assert d is not None
    return load_mnist(d)


def _mnist_binary(d: Path | None) -> _Raw:
    from .mnist import load_mnist

    assert d is not None
    Xtr, ytr, Xte, yte = load_mnist(d)
    return Xtr, ytr % 2, Xte, yte % 2


def _phishing(d: Path | None) -> _Raw:
    from .libsvm import load_phishing

    assert d is not None
    return load_phishing(d)


def _boston(d: Path | None) -> _Raw:
    from .csv import load_boston

    assert d is not None
    return load_boston(d)


def _cifar10(d: Path | None) -> _Raw:
    from .cifar10 import load_cifar10

    assert d is not None
    return load_cifar10(d)


_SPECS: dict[str, _Spec] = {
    "digits": _Spec("classification", 10, "mlp", _digits, False, True),
    "digits-binary": _Spec("classification", 2, "logistic", _digits_binary, False, True),
    "breast-cancer": _Spec("classification", 2, "logistic", _breast_cancer, False, True),
    "diabetes": _Spec("regression", 0, "linear", _diabetes, False, True),
    "mnist": _Spec("classification", 10, "mlp", _mnist, True, False),
    "mnist-binary": _Spec("classification", 2, "logistic", _mnist_binary, True, False),
    "phishing": _Spec("classification", 2, "svm", _phishing, True, True),
    "boston": _Spec("regression", 0, "linear", _boston, True, True),
    "cifar10": _Spec("classification", 10, "mlp", _cifar10, True, False),
}


def names() -> list[str]:
    """All dataset names: the bundled ones first, then those read from ``data_dir``."""
    return list(_SPECS)


def bundled_names() -> list[str]:
    """Datasets that need no files (they ship inside scikit-learn)."""
    return [n for n, s in _SPECS.items() if not s.needs_files]


def _split(
    y: np.ndarray, test_fraction: float, stratify: bool, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (stratified) train/test index split; both index arrays in shuffled order."""
    n = y.shape[0]
    if not stratify:
        perm = rng.permutation(n)
        n_test = round(test_fraction * n)
        return perm[n_test:], perm[:n_test]
    train: list[np.ndarray] = []
    test: list[np.ndarray] = []
    for c in np.unique(y):  # a loop over classes (<= 10 here), not over rows
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test = round(test_fraction * idx.size)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    # Interleave the classes: the training set must not come sorted by label.
    tr, te = np.concatenate(train), np.concatenate(test)
    return rng.permutation(tr), rng.permutation(te)


def load(
    name: str,
    *,
    data_dir: str | Path | None = None,
    seed: int = 0,
    test_fraction: float = 0.2,
    standardize: bool | None = None,
    max_train: int | None = None,
) -> Dataset:
    """Load dataset ``name`` (see ``names()``), split and scaled as the module docstring says.

    Parameters
    ----------
    name : str
    data_dir : path, optional
        Folder holding the files of a file dataset (or a parent holding ``mnist/``,
        ``phishing/``, ``boston/``, ``cifar-10-batches-py/``). Ignored by bundled ones.
    seed : int
        Seeds the train/test split and the ``max_train`` subsample.
    test_fraction : float in (0, 1)
        Share of test rows where the dataset has no official split (ignored by MNIST
        and CIFAR-10).
    standardize : bool or None
        None: the dataset's default (tabular on, images off).
    max_train : int, optional
        Keep at most this many training rows (seeded subset).

    Raises
    ------
    ValueError
        Unknown name, bad argument, or a file dataset without ``data_dir`` (the message
        lists the bundled names); ``DataFileError`` (a ValueError) for bad files.
    """
    if name not in _SPECS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {names()}")
    spec = _SPECS[name]
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if max_train is not None and int(max_train) < 1:
        raise ValueError(f"max_train must be >= 1 or None, got {max_train}")
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    path: Path | None = None
    if spec.needs_files:
        if data_dir is None:
            raise ValueError(
                f"dataset {name!r} is read from files: pass data_dir (--data-dir). "
                f"Bundled datasets that need no files: {bundled_names()}"
            )
        path = Path(data_dir)
        if not path.is_dir():
            raise ValueError(f"dataset {name!r}: data_dir {str(path)!r} is not a directory")

    raw = spec.reader(path)
    rng_split = np.random.default_rng([int(seed), 0])
    if len(raw) == 4:
        X_tr, y_tr, X_te, y_te = raw
    else:
        X, y = raw
        tr, te = _split(y, float(test_fraction), spec.task == "classification", rng_split)
        X_tr, y_tr, X_te, y_te = X[tr], y[tr], X[te], y[te]

    if max_train is not None and int(max_train) < X_tr.shape[0]:
        rng_sub = np.random.default_rng([int(seed), 1])
        keep = np.sort(rng_sub.choice(X_tr.shape[0], size=int(max_train), replace=False))
        X_tr, y_tr = X_tr[keep], y_tr[keep]

    X_tr = np.asarray(X_tr, dtype=np.float32)
    X_te = np.asarray(X_te, dtype=np.float32)
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    if spec.standardize if standardize is None else standardize:
        # Fitted on the training rows only, so no test information leaks into training.
        mean = X_tr.mean(axis=0, dtype=np.float64)
        std = X_tr.std(axis=0, dtype=np.float64)
        std[std == 0] = 1.0
        X_tr = ((X_tr - mean) / std).astype(np.float32)
        X_te = ((X_te - mean) / std).astype(np.float32)
    label_dtype = np.int64 if spec.task == "classification" else np.float64
    return Dataset(
        name=name,
        task=spec.task,
        n_classes=spec.n_classes,
        n_features=int(X_tr.shape[1]),
        X_train=np.ascontiguousarray(X_tr),
        y_train=np.ascontiguousarray(y_tr, dtype=label_dtype),
        X_test=np.ascontiguousarray(X_te),
        y_test=np.ascontiguousarray(y_te, dtype=label_dtype),
        default_model=spec.default_model,
        feature_mean=mean,
        feature_std=std,
    )
