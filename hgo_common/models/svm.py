"""L2-regularized linear SVM with the hinge loss (the paper's LIBSVM phishing model, §6).

With labels y in {0, 1} mapped to t = 2y - 1 in {-1, +1} and score z = x . w + b::

    L(w, b) = mean_i max(0, 1 - t_i z_i)  +  l2/2 * ||w||^2

The hinge is not differentiable at t z = 1; we use the subgradient
``dL/dz_i = -t_i / n`` where ``t_i z_i < 1`` and 0 elsewhere (including the kink),
the choice of Pegasos (Shalev-Shwartz et al., ICML 2007).

Default regularization: ``l2 = 1e-4`` (about 1/n for phishing's 8844 training rows;
Pegasos' usual lambda). The SVM is the only model regularized by default because the
regularizer is part of its definition (the margin objective); pass ``l2=0`` for the
bare hinge loss.
"""

from __future__ import annotations

import numpy as np

from .base import LinearModel

DEFAULT_L2 = 1e-4


class LinearSVM(LinearModel):
    """Hinge-loss linear SVM; parameters ``[w (p), b]``; predicts 1 when z > 0."""

    name = "svm"
    task = "classification"
    n_classes = 2

    def _loss_terms(self, z: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.asarray(np.maximum(0.0, 1.0 - (2.0 * y - 1.0) * z))

    def _dloss(self, z: np.ndarray, y: np.ndarray) -> np.ndarray:
        t = 2.0 * y - 1.0
        return np.asarray(np.where(t * z < 1.0, -t, 0.0))

    def predict(self, w: np.ndarray, X: np.ndarray) -> np.ndarray:
        """Class ids (n,) int64: 1 where the score is positive."""
        return np.asarray(self._scores(self._check_w(w), self._check_X(X)) > 0, dtype=np.int64)
