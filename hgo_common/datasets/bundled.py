"""Datasets that ship inside scikit-learn: zero set-up, no files, no network.

scikit-learn is imported lazily inside each loader (workers must start fast without
paying for it; docs/design.md §8). Every loader returns the *full* table ``(X, y)`` with
X float64 (n, p) and y int64 class ids or float64 targets; splitting and scaling
happen in ``hgo_common.datasets.load``.

* digits: 1797 8x8 images of handwritten digits (UCI optdigits test set), 64 features
  with values 0..16, 10 classes (Alpaydin & Kaynak 1995).
* digits-binary: digits labelled by parity, 1 = odd digit, 0 = even (nearly balanced: 891 even,
  906 odd); the same split we use for mnist-binary.
* breast-cancer: Wisconsin diagnostic breast cancer, 569 x 30, label 1 = benign
  (357), 0 = malignant (212) as scikit-learn ships it.
* diabetes: 442 x 10 regression, target a disease-progression score (Efron et al. 2004),
  in scikit-learn's scaled feature form.
"""

from __future__ import annotations

import numpy as np


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: X (1797, 64) float64 in [0, 16], y (1797,) int64 in 0..9."""
    from sklearn.datasets import load_digits as _load

    bunch = _load()
    return np.asarray(bunch.data, dtype=np.float64), np.asarray(bunch.target, dtype=np.int64)


def load_digits_binary() -> tuple[np.ndarray, np.ndarray]:
    """Digits by parity: y = digit % 2 (1 = odd)."""
    X, y = load_digits()
    return X, y % 2


def load_breast_cancer() -> tuple[np.ndarray, np.ndarray]:
    """Wisconsin breast cancer: X (569, 30) float64, y (569,) int64 (1 = benign)."""
    from sklearn.datasets import load_breast_cancer as _load

    bunch = _load()
    return np.asarray(bunch.data, dtype=np.float64), np.asarray(bunch.target, dtype=np.int64)


def load_diabetes() -> tuple[np.ndarray, np.ndarray]:
    """Diabetes regression: X (442, 10) float64, y (442,) float64."""
    from sklearn.datasets import load_diabetes as _load

    bunch = _load()
    return np.asarray(bunch.data, dtype=np.float64), np.asarray(bunch.target, dtype=np.float64)
