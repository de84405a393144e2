"""CIFAR-10 from its python batches (Krizhevsky, "Learning Multiple Layers of Features
from Tiny Images", tech. report, U. Toronto, 2009; https://www.cs.toronto.edu/~kriz/cifar.html).

Layout of ``cifar-10-python.tar.gz`` once extracted: ``cifar-10-batches-py/`` holding
``data_batch_1`` .. ``data_batch_5`` (10000 images each, the official training set) and
``test_batch`` (10000, the test set). Each file is a pickled dict (written by Python 2,
so read with ``encoding="bytes"``) with ``b"data"``: (10000, 3072) uint8, each row the
1024 red, then 1024 green, then 1024 blue values of a 32x32 image in row-major order,
and ``b"labels"``: 10000 ints in 0..9.

Unpickling runs code named by the file, so these files are read with a restricted
unpickler that only resolves the few numpy functions needed to rebuild an array; any
other global in the file is refused with an error naming it. Features are the rows as
stored (channel-major, 3072 values) scaled to [0, 1].
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from ._files import DataFileError

BATCH_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
N_FEATURES = 3072

# (module, name) pairs an ndarray pickle may reference, across numpy 1.x and 2.x.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    # Protocol-2 pickles written by Python 3 encode bytes objects through this.
    ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    def __init__(self, fh: Any, path: Path) -> None:
        super().__init__(fh, encoding="bytes")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise DataFileError(f"{self._path}: refusing to unpickle global {module}.{name}")
        # numpy 2 renamed numpy.core to numpy._core; old pickles name the old path.
        if module.startswith("numpy.core"):
            module = "numpy._core" + module[len("numpy.core") :]
        return super().find_class(module, name)


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file: data (n, 3072) uint8 and labels (n,) int64.

    Raises
    ------
    DataFileError
        For a file that is not a readable pickle, lacks ``data``/``labels``, has the
        wrong shapes or labels outside 0..9.
    """
    path = Path(path)
    try:
        with path.open("rb") as fh:
            obj = _ArrayUnpickler(fh, path).load()
    except DataFileError:
        raise
    except Exception as exc:  # pickle raises many types for damaged input
        raise DataFileError(
            f"{path}: not a readable CIFAR-10 python batch ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(obj, dict):
        raise DataFileError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    d = {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}
    if "data" not in d or "labels" not in d:
        raise DataFileError(f"{path}: batch lacks 'data' or 'labels' (keys: {sorted(d)})")
    data = np.asarray(d["data"])
    labels = np.asarray(d["labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != N_FEATURES:
        raise DataFileError(f"{path}: data must be (n, {N_FEATURES}) uint8, got {data.shape} {data.dtype}")
    if labels.shape != (data.shape[0],):
        raise DataFileError(
            f"{path}: {labels.shape[0] if labels.ndim else 0} labels for {data.shape[0]} images"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataFileError(f"{path}: labels outside 0..9 (range {labels.min()}..{labels.max()})")
    return data, labels.astype(np.int64)


def _batch_dir(data_dir: Path) -> Path:
    for d in (data_dir / BATCH_DIR, data_dir):
        if (d / TEST_BATCH).is_file() or (d / TRAIN_BATCHES[0]).is_file():
            return d
    raise DataFileError(
        f"cifar10: no batches found; expected {[*TRAIN_BATCHES, TEST_BATCH]} "
        f"in {data_dir / BATCH_DIR} or {data_dir}"
    )


def load_cifar10(data_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Official split: X_train (50000, 3072) float32 in [0, 1], y_train (50000,) int64,
    X_test (10000, 3072), y_test (10000,); all six batch files are required."""
    d = _batch_dir(Path(data_dir))
    missing = [n for n in (*TRAIN_BATCHES, TEST_BATCH) if not (d / n).is_file()]
    if missing:
        raise DataFileError(f"cifar10: missing {missing} in {d}; expected {[*TRAIN_BATCHES, TEST_BATCH]}")
    parts = [read_batch(d / n) for n in TRAIN_BATCHES]
    test_data, y_te = read_batch(d / TEST_BATCH)
    # In-place scaling: the float32 training matrix alone is 614 MB, avoid a second one.
    X_tr = np.concatenate([p[0] for p in parts]).astype(np.float32)
    X_tr /= np.float32(255.0)
    y_tr = np.concatenate([p[1] for p in parts])
    X_te = test_data.astype(np.float32)
    X_te /= np.float32(255.0)
    return X_tr, y_tr, X_te, y_te
