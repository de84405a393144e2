"""Gaussian blobs: a dataset written outside HGO (generated, so it needs no files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hgo_common.datasets import Source

CLASSES, FEATURES, ROWS = 4, 10, 2000


def _read(data_dir: Path | None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1234)  # a fixed table: load() seeds the split, not this
    centers = rng.normal(0.0, 0.7, size=(CLASSES, FEATURES))
    y = rng.integers(0, CLASSES, size=ROWS)
    X = centers[y] + rng.normal(size=(ROWS, FEATURES))
    return X.astype(np.float32), y


blobs = Source(task="classification", n_classes=CLASSES, default_model="softmax", reader=_read)
