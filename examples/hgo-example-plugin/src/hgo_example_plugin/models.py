"""Softmax (multinomial logistic) regression: an HGO model written outside HGO.

Parameters ``[W (c x p, row-major), b (c)]``; loss the mean softmax cross-entropy plus
``l2/2 * ||W||^2``. Subclassing ``hgo_common.models.Model`` gives ``evaluate`` and the
argument checks; the factory HGO calls is the class itself:
``SoftmaxRegression(n_features=..., n_classes=..., l2=...)``.
"""

from __future__ import annotations

import numpy as np

from hgo_common.models import Model


class SoftmaxRegression(Model):
    name = "softmax"
    task = "classification"

    def __init__(self, n_features: int, n_classes: int, l2: float = 1e-4) -> None:
        p, c = int(n_features), int(n_classes)
        if p < 1 or c < 2:
            raise ValueError(f"softmax: need n_features >= 1 and n_classes >= 2, got {p}, {c}")
        self.layer_sizes = (p, c)
        self.n_classes = c
        self.dim = c * p + c
        self.groups = (c * p, c)  # weights and biases: the stratified order balances both
        self.l2 = float(l2)

    def _split(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c, p = self.n_classes, self.layer_sizes[0]
        return w[: c * p].reshape(c, p), w[c * p :]

    def init(self, rng: np.random.Generator) -> np.ndarray:
        w = np.zeros(self.dim)
        w[: -self.n_classes] = rng.normal(0.0, 0.01, size=self.dim - self.n_classes)
        return w

    def _logp(self, w: np.ndarray, X: np.ndarray) -> np.ndarray:
        W, b = self._split(w)
        z = np.asarray(X, dtype=np.float64) @ W.T + b
        z -= z.max(axis=1, keepdims=True)
        return np.asarray(z - np.log(np.exp(z).sum(axis=1, keepdims=True)))

    def loss(self, w: np.ndarray, X: np.ndarray, y: np.ndarray) -> float:
        w, X = self._check_w(w), self._check_X(X)
        y = self._check_labels(y, X.shape[0])
        W, _ = self._split(w)
        reg = 0.5 * self.l2 * float(np.sum(W * W))
        if not len(y):
            return reg
        return float(-np.mean(self._logp(w, X)[np.arange(len(y)), y])) + reg

    def gradient(
        self, w: np.ndarray, X: np.ndarray, y: np.ndarray, coords: np.ndarray | None = None
    ) -> np.ndarray:
        w, X = self._check_w(w), self._check_X(X)
        y = self._check_labels(y, X.shape[0])
        W, _ = self._split(w)
        delta = np.exp(self._logp(w, X))
        delta[np.arange(len(y)), y] -= 1.0
        delta /= max(len(y), 1)
        g = np.concatenate([(delta.T @ X + self.l2 * W).ravel(), delta.sum(axis=0)])
        return g if coords is None else g[self._check_coords(coords)]

    def predict(self, w: np.ndarray, X: np.ndarray) -> np.ndarray:
        return np.asarray(np.argmax(self._logp(self._check_w(w), self._check_X(X)), axis=1), dtype=np.int64)
