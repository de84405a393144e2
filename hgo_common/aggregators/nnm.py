"""Nearest-neighbour mixing, NNM (Allouah, Farhadkhani, Guerraoui, Gupta, Pinot,
Stephan, "Fixing by Mixing: A Recipe for Optimal Byzantine ML under Heterogeneity",
AISTATS 2023). A pre-aggregation step: compose it as ``get("nnm+krum")``.

Variant: every row x_i is replaced by the mean of its m - f nearest rows in
Euclidean distance, itself included (ties in distance broken by input order). The
output has the same m rows. Distances from one Gram product; the mixing is one
(m x m) @ (m x k) product. Needs m > f.
"""

from __future__ import annotations

import numpy as np

from ._common import pairwise_sq_distances
from .base import register_pre


@register_pre("nnm")
def nnm(x: np.ndarray, *, f: int = 0) -> np.ndarray:
    """Replace each row by the mean of its m - f nearest rows (itself included).

    Parameters
    ----------
    x : ndarray of shape (m, k)
    f : int

    Returns
    -------
    ndarray of shape (m, k), dtype of ``x``
    """
    m = x.shape[0]
    if m <= f:
        raise ValueError(f"nnm needs m > f, got m={m}, f={f}")
    d = pairwise_sq_distances(x)
    np.fill_diagonal(d, -1.0)  # a row is always its own nearest neighbour
    nearest = np.argsort(d, axis=1, kind="stable")[:, : m - f]
    mix = np.zeros((m, m), dtype=x.dtype)
    np.put_along_axis(mix, nearest, 1.0 / (m - f), axis=1)
    return np.asarray(mix @ x)
