"""Device-local data: a device's own files, read, scaled, summarized and checked against a run.

The paper's premise (Boubouh et al., SRDS 2022, §1 and §3) is devices that hold data
nobody else has: worker i computes its gradient on its own local dataset D_i and sends
only gradient coordinates. ``hgo-worker --data PATH`` does exactly that: it reads its
files here, the server sends it nothing but w_k and C_k, and the server may hold no
training data at all (``hgo-server --dataset none --features P --classes K``).

Formats (``--data-format``, default ``auto``: detected from the path):

* ``csv`` — a numeric table (``hgo_common.datasets.csv.read_table``: comma-separated, or
  whitespace-separated; an optional header). The label is the column ``--label-column``
  (a header name or a 0-based index, negative from the end); default: the column named
  ``label``, ``target``, ``class`` or ``y`` when the header has one, else the last column.
* ``libsvm`` — ``LABEL INDEX:VALUE ...`` lines (``libsvm.read_libsvm``). Sparse: the
  width is the highest index present, padded with zeros to the run's feature count. The
  binary convention ``{-1, +1}`` maps to ``{0, 1}`` (-1 -> 0), whatever the device holds.
* ``idx`` — MNIST-style IDX files (``mnist.parse_idx``): a directory holding one images
  file (``*idx3*``) and one labels file (``*idx1*``), or the images file itself with its
  labels file beside it (``images`` -> ``labels``, ``idx3`` -> ``idx1`` in the name).
* ``cifar`` — CIFAR-10 python batches (``cifar10.read_batch``): one batch file, or a
  directory whose ``data_batch_*`` files (else every batch file) are read.
* a dataset plug-in (``package.module:Name`` or an installed ``hgo.datasets`` entry
  point): its ``reader(PATH)`` returns the table, checked like any plug-in's.

Scaling (``--scaling``), the same rule as ``hgo_common.datasets.load`` for each format:
``auto`` standardizes tabular data (csv, libsvm, plug-ins whose Source says so) with the
mean and standard deviation of the device's own rows (a zero std divides by 1), and keeps
images (idx, cifar) in the [0, 1] their readers give; ``standardize`` and ``none`` force
it. Devices with differently distributed data standardize differently: for features that
mean the same on every device, preprocess every device's files with one shared transform
and pass ``--scaling none`` everywhere (and on the server's ``--test-data``).

Labels: a table whose labels are all integers is ``classification`` data, else
``regression``. The :class:`LocalData` summary travels in the
worker's Join; :func:`fit_error` is the one check, run by the server at join and by the
worker once it has the spec: feature count, label range ``0..K-1``, task.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._files import DataFileError


@dataclass(frozen=True)
class LocalData:
    """A worker's own data, summarized for the join check (it travels in ``Join.local_data``)."""

    examples: int
    n_features: int
    task: str  # "classification" (integer labels) | "regression"
    label_min: float
    label_max: float
    distinct_labels: int
    sparse: bool = False  # LIBSVM: n_features is the highest index present


NO_DATASET = "none"
"""``--dataset none``: the server holds no training data; every worker brings its own."""

FORMATS = ("auto", "csv", "libsvm", "idx", "cifar")
SCALINGS = ("auto", "standardize", "none")
LABEL_NAMES = ("label", "target", "class", "y")
REFUSED = "local data refused: "
"""Prefix of the server's FAILED_PRECONDITION details when a worker's data does not fit the
run; the worker recognizes it and ends with exit code 2 (the fix is on the device)."""


@dataclass(frozen=True)
class LocalTable:
    """A device's own data, read and scaled.

    Attributes
    ----------
    X : ndarray (n, p) float32, C-contiguous
    y : ndarray (n,) float64 labels as read (class ids for classification data)
    fmt : str
        The format actually read (``auto`` resolved), or the plug-in's name.
    sparse : bool
        LIBSVM: ``p`` is the highest index present; :meth:`fitted` pads to the run's width.
    feature_mean, feature_std : ndarray (p,) float64 or None
        The standardization applied (None when the features are used as read).
    """

    X: np.ndarray
    y: np.ndarray
    fmt: str
    path: Path
    sparse: bool = False
    feature_mean: np.ndarray | None = None
    feature_std: np.ndarray | None = None

    def summary(self) -> LocalData:
        """What the worker's Join says about this table (never the data)."""
        y = self.y
        integral = bool(np.all(y == np.round(y)))
        return LocalData(
            examples=int(y.shape[0]),
            n_features=int(self.X.shape[1]),
            task="classification" if integral else "regression",
            label_min=float(y.min()),
            label_max=float(y.max()),
            distinct_labels=int(np.unique(y).size) if integral else 0,
            sparse=self.sparse,
        )

    def fitted(self, n_features: int, task: str) -> tuple[np.ndarray, np.ndarray]:
        """(X, y) for a run whose model takes ``n_features`` inputs on ``task``.

        A sparse (LIBSVM) table narrower than the run is padded with zero columns; labels
        become int64 class ids for classification. Call after :func:`fit_error` said None.
        """
        X = self.X
        if self.sparse and X.shape[1] < n_features:
            X = np.ascontiguousarray(np.pad(X, ((0, 0), (0, n_features - X.shape[1]))))
        y = self.y.astype(np.int64) if task == "classification" else self.y.astype(np.float64)
        return X, y


def fit_error(
    data: LocalData, n_features: int, n_classes: int, task: str, *, who: str = "the worker's data"
) -> str | None:
    """Why a device's data cannot train a run's model (naming both values), or None.

    Parameters
    ----------
    data : the device's summary (its Join's ``local_data``)
    n_features, n_classes, task : the run's model shape (``n_classes`` 0 for regression)
    """
    if data.examples < 1:
        return f"{who} holds no examples"
    if not (np.isfinite(data.label_min) and np.isfinite(data.label_max)):
        return f"{who} has non-finite labels (in [{data.label_min}, {data.label_max}])"
    if data.sparse:
        if data.n_features > n_features:
            return (
                f"{who} has feature index {data.n_features} (LIBSVM), but the server's model takes "
                f"{n_features} features"
            )
    elif data.n_features != n_features:
        return f"{who} has {data.n_features} features, but the server's model takes {n_features}"
    if task == "classification":
        if data.task != "classification":
            return (
                f"{who} has real-valued labels (regression targets in [{data.label_min:g}, "
                f"{data.label_max:g}]), but the server trains classification with {n_classes} classes"
            )
        if data.label_min < 0 or data.label_max > n_classes - 1:
            return (
                f"{who} has labels in [{data.label_min:g}, {data.label_max:g}], but the server's "
                f"{n_classes} classes are 0..{n_classes - 1}"
            )
    elif task != "regression":
        return f"the server's task {task!r} is neither classification nor regression"
    return None


# ---------------------------------------------------------------------------- reading


def read(
    path: str | Path,
    fmt: str = "auto",
    *,
    label_column: str | None = None,
    scaling: str = "auto",
) -> LocalTable:
    """Read a device's own data (see the module docstring for formats and scaling).

    Raises
    ------
    DataFileError
        (a ValueError) naming the file: missing, unreadable, malformed, no rows,
        non-finite values, a label column that is not there.
    ValueError
        An unknown format or scaling (naming the value and the choices).
    """
    from hgo_common import plugins

    path = Path(path)
    if scaling not in SCALINGS:
        raise ValueError(f"--scaling must be one of {list(SCALINGS)}, got {scaling!r}")
    builtin = fmt in FORMATS
    if not builtin and not (plugins.is_reference(fmt) or fmt in plugins.entry_points("dataset")):
        raise ValueError(
            f"--data-format must be one of {list(FORMATS)}, a dataset plug-in's package.module:Name or an "
            f"installed plug-in's name, got {fmt!r}"
        )
    if not path.exists():
        raise DataFileError(f"--data {str(path)!r} does not exist")
    if label_column is not None and builtin and fmt not in ("auto", "csv"):
        raise ValueError(f"--label-column applies to csv data, not --data-format {fmt}")
    standardize_default = True
    if not builtin:
        X, y, standardize_default = _read_plugin(path, fmt)
        used = fmt
    else:
        used = detect(path) if fmt == "auto" else fmt
        if label_column is not None and used != "csv":
            raise ValueError(f"--label-column applies to csv data, but {str(path)!r} is {used}")
        if used == "csv":
            X, y = _read_csv(path, label_column)
        elif used == "libsvm":
            X, y = _read_libsvm(path)
        elif used == "idx":
            X, y = _read_idx(path)
            standardize_default = False
        else:
            X, y = _read_cifar(path)
            standardize_default = False
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] < 1 or X.shape[1] < 1:
        raise DataFileError(f"{path}: expected a table of n >= 1 rows and p >= 1 features, got {X.shape}")
    if not (np.all(np.isfinite(X)) and np.all(np.isfinite(y))):
        raise DataFileError(f"{path}: non-finite values (nan or inf) in the features or labels")
    mean = std = None
    if scaling == "standardize" or (scaling == "auto" and standardize_default):
        # The device's own rows: what datasets.load does with a training split.
        mean = X.mean(axis=0, dtype=np.float64)
        std = X.std(axis=0, dtype=np.float64)
        std[std == 0] = 1.0
        X = ((X - mean) / std).astype(np.float32)
    return LocalTable(np.ascontiguousarray(X), y, used, path, used == "libsvm", mean, std)


def detect(path: Path) -> str:
    """The format of ``path`` from its name and first bytes (DataFileError when unclear)."""
    if path.is_dir():
        names = [p.name for p in path.iterdir() if p.is_file()]
        if any(n.startswith(("data_batch", "test_batch")) for n in names):
            return "cifar"
        if any("idx3" in n for n in names):
            return "idx"
        raise DataFileError(
            f"--data {str(path)!r} is a directory with neither CIFAR batches (data_batch_*, test_batch) "
            "nor IDX files (*idx3*, *idx1*); give a file, or --data-format"
        )
    name = path.name.lower()
    if "idx3" in name or "idx1" in name:
        return "idx"
    if name.startswith(("data_batch", "test_batch")):
        return "cifar"
    if name.endswith((".csv", ".tsv")):
        return "csv"
    if name.endswith((".libsvm", ".svm")):
        return "libsvm"
    try:
        with path.open("rb") as fh:
            head = fh.read(4096)
    except OSError as exc:
        raise DataFileError(f"{path}: cannot read ({exc.strerror or exc})") from None
    first = next((ln for ln in head.decode("ascii", "replace").splitlines() if ln.strip()), "")
    tokens = first.split("#", 1)[0].split()
    if len(tokens) >= 2 and all(":" in t for t in tokens[1:]):
        return "libsvm"
    if first and all(c.isprintable() or c.isspace() for c in first):
        return "csv"
    raise DataFileError(
        f"{path}: cannot tell its format from the name or content; give --data-format "
        f"({', '.join(FORMATS[1:])})"
    )


def _read_csv(path: Path, label_column: str | None) -> tuple[np.ndarray, np.ndarray]:
    from .csv import read_table

    header, data = read_table(path)
    width = data.shape[1]
    if width < 2:
        raise DataFileError(f"{path}: {width} column; a table needs features and a label column")
    if label_column is None:
        hit = [header.index(n) for n in LABEL_NAMES if header is not None and n in header]
        col = hit[0] if hit else width - 1
    elif header is not None and label_column.strip().lower() in header:
        col = header.index(label_column.strip().lower())
    else:
        try:
            col = int(label_column)
        except ValueError:
            raise DataFileError(
                f"{path}: --label-column {label_column!r} is not a column"
                + (f" of the header {header}" if header is not None else " (the file has no header)")
            ) from None
        if not -width <= col < width:
            raise DataFileError(f"{path}: --label-column {col} is outside the {width} columns")
        col %= width
    return np.delete(data, col, axis=1), data[:, col].copy()


def _read_libsvm(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from .libsvm import read_libsvm

    X, y = read_libsvm(path)
    values = set(np.unique(y).tolist())
    if -1.0 in values and values <= {-1.0, 1.0}:
        y = (y > 0).astype(np.float64)  # LIBSVM's binary convention, the same on every device
    return X, y


def _read_idx(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from .mnist import IMAGES_MAGIC, LABELS_MAGIC, parse_idx, read_idx_bytes

    if path.is_dir():
        img_files = sorted(p for p in path.iterdir() if p.is_file() and "idx3" in p.name)
        lab_files = sorted(p for p in path.iterdir() if p.is_file() and "idx1" in p.name)
        if len(img_files) != 1 or len(lab_files) != 1:
            raise DataFileError(
                f"--data {str(path)!r}: expected one images file (*idx3*) and one labels file (*idx1*), "
                f"found {[p.name for p in img_files]} and {[p.name for p in lab_files]}"
            )
        img_path, lab_path = img_files[0], lab_files[0]
    else:
        img_path = path
        lab_path = path.with_name(path.name.replace("images", "labels").replace("idx3", "idx1"))
        if lab_path == img_path or not lab_path.is_file():
            raise DataFileError(f"{path}: no labels file beside it (expected {lab_path.name})")
    images = parse_idx(read_idx_bytes(img_path), img_path, IMAGES_MAGIC)
    labels = parse_idx(read_idx_bytes(lab_path), lab_path, LABELS_MAGIC)
    if images.ndim < 2 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DataFileError(
            f"{img_path}: {images.shape} images do not match {labels.shape} labels in {lab_path.name}"
        )
    X = images.reshape(images.shape[0], -1).astype(np.float32)
    X /= np.float32(255.0)  # as the MNIST reader: pixels in [0, 1]
    return X, labels.astype(np.float64)


def _read_cifar(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from .cifar10 import read_batch

    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.name.startswith("data_batch"))
        files = files or sorted(p for p in path.iterdir() if p.is_file() and p.name.startswith("test_batch"))
    else:
        files = [path]
    parts = [read_batch(p) for p in files]
    X = np.concatenate([p[0] for p in parts]).astype(np.float32)
    X /= np.float32(255.0)  # as the CIFAR-10 reader: [0, 1]
    return X, np.concatenate([p[1] for p in parts]).astype(np.float64)


def _read_plugin(path: Path, name: str) -> tuple[np.ndarray, np.ndarray, bool]:
    """A dataset plug-in's table from ``path`` (its reader's data_dir), checked as ``load`` does."""
    from hgo_common import datasets

    src = datasets.source(name)
    raw = datasets.read_plugin(name, src, path)  # the plug-in contract, in one place
    if len(raw) == 4:  # an official split: a device trains on all its rows
        return np.concatenate([raw[0], raw[2]]), np.concatenate([raw[1], raw[3]]), src.standardize
    return raw[0], raw[1], src.standardize
