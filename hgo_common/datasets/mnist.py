"""MNIST from the four standard IDX files (LeCun, Bottou, Bengio & Haffner, Proc. IEEE 1998).

File format (http://yann.lecun.com/exdb/mnist/): a big-endian header — two zero bytes,
a type byte (0x08 = unsigned byte), a dimension count, then one uint32 size per
dimension — followed by the data. Magic numbers: 2051 (0x00000803) for images
(n x 28 x 28), 2049 (0x00000801) for labels (n). Files may be gzip-compressed (``.gz``)
or raw; what is checked is the *decompressed* content (a re-compressed file with a
different gzip wrapper holds the same data; see ../shared/data/SOURCES.md).

The official split is used: 60000 training and 10000 test images. Pixels are scaled to
[0, 1] (divided by 255) and flattened to 784 features in row-major (row, column) order.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from ._files import DataFileError, find_file

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
_SUBDIRS = ("mnist", "MNIST", "MNIST/raw")
_STEMS = {
    "train-images": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "train-labels": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "test-images": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "test-labels": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}


def read_idx_bytes(path: Path) -> bytes:
    """The decompressed content of an IDX file (gzip detected by its magic bytes 1f 8b)."""
    data = Path(path).read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataFileError(f"{path}: corrupt or truncated gzip data ({exc})") from exc
    return data


def parse_idx(data: bytes, path: Path | str, magic: int) -> np.ndarray:
    """Parse decompressed IDX bytes into a uint8 array of the header's shape.

    Raises
    ------
    DataFileError
        On a wrong magic number (naming both), a truncated header or body, or trailing bytes.
    """
    if len(data) < 4:
        raise DataFileError(f"{path}: truncated IDX file ({len(data)} bytes, no header)")
    got = int.from_bytes(data[:4], "big")
    if got != magic:
        kind = "images" if magic == IMAGES_MAGIC else "labels"
        raise DataFileError(f"{path}: wrong IDX magic number {got}, expected {magic} (MNIST {kind})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataFileError(f"{path}: truncated IDX header ({len(data)} bytes, need {header})")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    need = int(np.prod(shape, dtype=np.int64))
    body = len(data) - header
    if body != need:
        what = "truncated" if body < need else "has trailing bytes"
        raise DataFileError(
            f"{path}: IDX file {what}: header says shape {shape} = {need} bytes of data, file has {body}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _read(data_dir: Path, which: str, magic: int) -> np.ndarray:
    stems = _STEMS[which]
    names = [s + ext for s in stems for ext in (".gz", "")]
    path = find_file(data_dir, names, _SUBDIRS, "mnist")
    return parse_idx(read_idx_bytes(path), path, magic)


def _images_labels(data_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    images = _read(data_dir, f"{split}-images", IMAGES_MAGIC)
    labels = _read(data_dir, f"{split}-labels", LABELS_MAGIC)
    if images.ndim != 3 or labels.ndim != 1:
        raise DataFileError(
            f"mnist {split}: expected images (n, rows, cols) and labels (n,), "
            f"got {images.shape} and {labels.shape}"
        )
    if images.shape[0] != labels.shape[0]:
        raise DataFileError(
            f"mnist {split}: {images.shape[0]} images but {labels.shape[0]} labels in {data_dir}"
        )
    if labels.size and int(labels.max()) > 9:
        raise DataFileError(f"mnist {split}: label {int(labels.max())} out of range 0..9 in {data_dir}")
    X = images.reshape(images.shape[0], -1).astype(np.float32)
    X /= 255.0
    return X, labels.astype(np.int64)


def load_mnist(data_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Official MNIST split.

    Returns
    -------
    X_train : (60000, 784) float32 in [0, 1]
    y_train : (60000,) int64 in 0..9
    X_test : (10000, 784) float32
    y_test : (10000,) int64
    """
    X_tr, y_tr = _images_labels(Path(data_dir), "train")
    X_te, y_te = _images_labels(Path(data_dir), "test")
    return X_tr, y_tr, X_te, y_te
