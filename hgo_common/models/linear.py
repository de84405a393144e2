"""Linear regression with squared loss (the paper's Boston housing model, §6).

Loss, for n rows, weights w (p,) and bias b::

    L(w, b) = 1/(2n) * sum_i (x_i . w + b - y_i)^2  +  l2/2 * ||w||^2

i.e. half the mean squared error, so that ``dL/dz_i = (z_i - y_i) / n`` with no factor 2.
"""

from __future__ import annotations

import numpy as np

from .base import LinearModel


class LinearRegression(LinearModel):
    """Least squares on ``z = X @ w + b``; parameters ``[w (p), b]``."""

    name = "linear"
    task = "regression"
    n_classes = 0

    def _loss_terms(self, z: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.asarray(0.5 * (z - y) ** 2)

    def _dloss(self, z: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.asarray(z - y)

    def predict(self, w: np.ndarray, X: np.ndarray) -> np.ndarray:
        """Predicted values, shape (n,) float64."""
        return self._scores(self._check_w(w), self._check_X(X))
