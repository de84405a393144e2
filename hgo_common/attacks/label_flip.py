"""Label flipping, a data-poisoning attack (e.g. Allen-Zhu et al., "Byzantine-Resilient
Non-Convex Stochastic Gradient Descent", ICLR 2021; Karimireddy et al., ICML 2021).

The Byzantine worker trains honestly on poisoned labels::

    classification (n_classes >= 2):  y' = n_classes - 1 - y
    regression     (n_classes == 0):  y' = -y

For binary models ({0, 1}) this swaps the two classes. The gradients it then sends are
honest gradients of the wrong objective, so they pass any sanity check on their scale.
"""

from __future__ import annotations

import numpy as np

from .base import Attack, register

__all__ = ["flip_labels"]


def flip_labels(y: np.ndarray, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Flipped labels, same shape and dtype as ``y``.

    Parameters
    ----------
    y : ndarray, shape (N,)
        Class ids in [0, n_classes) or, for regression, real values.
    n_classes : int
        >= 2 for classification, 0 for regression.
    rng : numpy.random.Generator
        Unused (deterministic attack).

    Raises
    ------
    ValueError
        ``n_classes`` not 0 and not >= 2, or a class id outside [0, n_classes).
    """
    if isinstance(n_classes, bool) or int(n_classes) != n_classes or n_classes < 0 or n_classes == 1:
        raise ValueError(f"label-flip: n_classes must be 0 (regression) or >= 2, got {n_classes!r}")
    y = np.asarray(y)
    if n_classes == 0:
        return np.asarray(-y)
    if y.size and (y.min() < 0 or y.max() >= n_classes or not np.all(np.equal(np.mod(y, 1), 0))):
        bad = y[(y < 0) | (y >= n_classes) | (np.mod(y, 1) != 0)][0]
        raise ValueError(f"label-flip: class ids must be integers in [0, {n_classes}), got {bad!r}")
    return np.asarray((n_classes - 1) - y).astype(y.dtype, copy=False)


register(
    Attack(
        name="label-flip",
        kind="data",
        summary="train on flipped labels: y -> n_classes - 1 - y (regression: -y)",
        labels_fn=flip_labels,
    )
)
