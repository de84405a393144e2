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

Every dataset, built-in or plug-in, is a :class:`Source`: its task, number of classes,
default model and a ``reader(data_dir)`` returning the raw table. A name that is not
built in is a plug-in (``hgo_common.plugins``: ``package.module:Name`` or an entry point
of group ``hgo.datasets``) resolving to a ``Source`` or to a no-argument callable that
returns one. A plug-in's table is checked before use (shapes, finite features, labels
``0..n_classes-1``) and every problem raises ``PluginError`` naming the plug-in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import plugins
from ..registry import Registry
from ._files import DataFileError
from .partition import SCHEMES, PartitionScheme, parse_partition, partition

__all__ = [
    "SCHEMES",
    "DataFileError",
    "Dataset",
    "PartitionScheme",
    "Source",
    "bundled_names",
    "load",
    "names",
    "parse_partition",
    "partition",
    "source",
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
class Source:
    """Where a dataset comes from: the contract of built-in and plug-in datasets.

    Attributes
    ----------
    task : {"classification", "regression"}
    n_classes : int
        Number of classes (labels are ids ``0..n_classes-1``); 0 for regression.
    default_model : str
        The model trained when none is named (a model name or plug-in reference).
    reader : callable
        ``reader(data_dir)`` -> ``(X, y)`` for the whole table (``load`` makes a seeded
        split) or ``(X_train, y_train, X_test, y_test)`` for an official split. ``X`` is
        (n, p) numeric; ``data_dir`` is a ``Path`` (or None when ``needs_files`` is False).
    needs_files : bool
        True when ``reader`` reads files from ``data_dir`` (``--data-dir``).
    standardize : bool
        The default of ``load(standardize=None)``: standardize features on the train rows.
    """

    task: str
    n_classes: int
    default_model: str
    reader: Callable[[Path | None], _Raw]
    needs_files: bool = False
    standardize: bool = True


_Spec = Source  # the built-ins' spelling below


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


def _cifar10_synthetic(_: Path | None) -> _Raw:
    from .cifar10_synthetic import load_cifar10_synthetic

    return load_cifar10_synthetic()


def _adapt(name: str, obj: object) -> Source:
    """A loaded plug-in as a checked ``Source`` (a no-argument callable is called once)."""
    if not isinstance(obj, Source) and callable(obj):
        try:
            obj = obj()
        except Exception as exc:
            raise plugins.PluginError(
                f"dataset {name!r}: calling it raised {type(exc).__name__}: {exc}"
            ) from None
    if not isinstance(obj, Source):
        raise plugins.PluginError(
            f"dataset {name!r}: expected a hgo_common.datasets.Source (or a callable returning one), "
            f"got {type(obj).__name__}"
        )
    if obj.task not in ("classification", "regression"):
        raise plugins.PluginError(
            f"dataset {name!r}: task must be classification or regression, got {obj.task!r}"
        )
    if obj.task == "classification" and (not isinstance(obj.n_classes, int) or obj.n_classes < 2):
        raise plugins.PluginError(
            f"dataset {name!r}: a classification dataset needs n_classes >= 2, got {obj.n_classes!r}"
        )
    if not callable(obj.reader):
        raise plugins.PluginError(f"dataset {name!r}: reader must be callable, got {obj.reader!r}")
    return obj


#: Built-in datasets, and the plug-in datasets loaded so far (``hgo_common.registry``).
REGISTRY: Registry[Source] = Registry("dataset", adapt=_adapt)
for _name, _src in (
    ("digits", _Spec("classification", 10, "mlp", _digits, False, True)),
    ("digits-binary", _Spec("classification", 2, "logistic", _digits_binary, False, True)),
    ("breast-cancer", _Spec("classification", 2, "logistic", _breast_cancer, False, True)),
    ("diabetes", _Spec("regression", 0, "linear", _diabetes, False, True)),
    ("mnist", _Spec("classification", 10, "mlp", _mnist, True, False)),
    ("mnist-binary", _Spec("classification", 2, "logistic", _mnist_binary, True, False)),
    ("phishing", _Spec("classification", 2, "svm", _phishing, True, True)),
    ("boston", _Spec("regression", 0, "linear", _boston, True, True)),
    ("cifar10", _Spec("classification", 10, "mlp", _cifar10, True, False)),
    # generated with CIFAR-10's shapes, NOT CIFAR-10 (cifar10_synthetic.py says how)
    ("cifar10-synthetic", _Spec("classification", 10, "cnn-cifar", _cifar10_synthetic, False, False)),
):
    REGISTRY.add(_name, _src)


def names() -> list[str]:
    """All dataset names: the bundled ones first, then those read from ``data_dir``."""
    return REGISTRY.names()


def bundled_names() -> list[str]:
    """Datasets that need no files (they ship inside scikit-learn, or are generated)."""
    return [n for n, s in REGISTRY.items() if not s.needs_files]


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
    plugin = name not in REGISTRY
    spec = source(name)
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

    raw = read_plugin(name, spec, path) if plugin else spec.reader(path)
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


def source(name: str) -> Source:
    """The ``Source`` of dataset ``name``, built-in or plug-in, without reading any data.

    Raises
    ------
    PluginError, PluginMissing
        For a plug-in that cannot be loaded or is not a ``Source``; an unknown name.
    """
    if not isinstance(name, str):
        raise ValueError(f"dataset name must be a string, got {name!r}")
    return REGISTRY.get(
        name,
        unknown=f"unknown dataset {name!r}; expected one of {names()}, a 'package.module:Name' "
        "reference or an installed plug-in (hgo-plugins lists them)",
    )


def read_plugin(name: str, src: Source, path: Path | None) -> _Raw:
    """A plug-in dataset's table as its reader returns it from ``path``, checked against the
    plug-in contract (:func:`_check_raw`); an exception inside the reader is a PluginError
    naming the dataset (a DataFileError passes through)."""
    try:
        raw = src.reader(path)
    except DataFileError:
        raise
    except Exception as exc:
        raise plugins.PluginError(
            f"dataset {name!r}: its reader raised {type(exc).__name__}: {exc}"
        ) from None
    return _check_raw(name, src, raw)


def _check_raw(name: str, src: Source, raw: object) -> _Raw:
    """A plug-in reader's table: 2 or 4 arrays, matching rows and columns, finite, labels ok."""
    if not isinstance(raw, tuple | list) or len(raw) not in (2, 4):
        raise plugins.PluginError(
            f"dataset {name!r}: reader must return (X, y) or (X_train, y_train, X_test, y_test), "
            f"got {type(raw).__name__}" + (f" of {len(raw)} items" if isinstance(raw, tuple | list) else "")
        )
    arrays = [np.asarray(a) for a in raw]
    parts = [""] if len(arrays) == 2 else ["train ", "test "]
    width = None
    for (X, y), part in zip(zip(arrays[0::2], arrays[1::2], strict=True), parts, strict=True):
        if X.ndim != 2 or X.shape[0] < 1 or not np.issubdtype(X.dtype, np.number):
            raise plugins.PluginError(
                f"dataset {name!r}: {part}X must be a numeric (n, p) array with n >= 1, "
                f"got {X.dtype} {X.shape}"
            )
        if width is not None and X.shape[1] != width:
            raise plugins.PluginError(
                f"dataset {name!r}: train X has {width} columns but test X has {X.shape[1]}"
            )
        width = X.shape[1]
        if y.shape != (X.shape[0],):
            raise plugins.PluginError(
                f"dataset {name!r}: {part}y must have shape ({X.shape[0]},), got {y.shape}"
            )
        if not np.all(np.isfinite(X)):
            raise plugins.PluginError(f"dataset {name!r}: {part}X holds non-finite values")
        if src.task == "classification":
            ok = np.issubdtype(y.dtype, np.number) and np.all(np.isfinite(y))
            yi = y.astype(np.int64) if ok else y
            if not ok or not np.array_equal(yi, y) or yi.min() < 0 or yi.max() >= src.n_classes:
                raise plugins.PluginError(
                    f"dataset {name!r}: {part}labels must be class ids in 0..{src.n_classes - 1}, "
                    f"got {y.dtype} values" + (f" in [{y.min()}, {y.max()}]" if ok else "")
                )
        elif not (np.issubdtype(y.dtype, np.number) and np.all(np.isfinite(y))):
            raise plugins.PluginError(f"dataset {name!r}: {part}regression targets must be finite numbers")
    return tuple(arrays)
