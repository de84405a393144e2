"""Binary logistic regression (the paper's MNIST-binary model under attack, §6, Figs. 5-7).

Loss with labels y in {0, 1} and score z = x . w + b::

    L(w, b) = mean_i [ log(1 + exp(z_i)) - y_i z_i ]  +  l2/2 * ||w||^2

which is the mean log-loss ``-y log s(z) - (1-y) log(1 - s(z))`` with s the sigmoid.
``log(1 + exp(z))`` is computed as ``np.logaddexp(0, z)`` and ``s(z)`` as
``exp(-logaddexp(0, -z))``, both exact and overflow-free for any finite z.
``dL/dz_i = (s(z_i) - y_i) / n``.
"""

from __future__ import annotations

import numpy as np

from .base import LinearModel


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function (no overflow warnings for large |z|)."""
    return np.asarray(np.exp(-np.logaddexp(0.0, -z)))


class LogisticRegression(LinearModel):
    """Binary logistic regression; parameters ``[w (p), b]``; predicts 1 when z > 0."""

    name = "logistic"
    task = "classification"
    n_classes = 2

    def _loss_terms(self, z: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.asarray(np.logaddexp(0.0, z) - y * z)

    def _dloss(self, z: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.asarray(sigmoid(z) - y)

    def predict(self, w: np.ndarray, X: np.ndarray) -> np.ndarray:
        """Class ids (n,) int64: 1 where the score is positive."""
        return np.asarray(self._scores(self._check_w(w), self._check_X(X)) > 0, dtype=np.int64)

    def predict_proba(self, w: np.ndarray, X: np.ndarray) -> np.ndarray:
        """P(y = 1 | x), shape (n,)."""
        return sigmoid(self._scores(self._check_w(w), self._check_X(X)))
