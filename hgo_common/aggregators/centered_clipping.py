"""Centered clipping (Karimireddy, He, Jaggi, "Learning from History for Byzantine
Robust Optimization", ICML 2021).

Variant (stateless: the server keeps no momentum between calls, so the paper's
center — the previous aggregate momentum — is not available): start from the
coordinate-wise median v_0 (mean of the two middles for an even m) and iterate

    v_{l+1} = v_l + (1/m) sum_i (x_i - v_l) * min(1, tau / |x_i - v_l|)

``iterations`` times (default 3; the paper uses 1 with a momentum center, more
iterations make up for the weaker start). The clipping radius ``tau`` defaults to
the median of the distances |x_i - v_0| (scale-free; an honest majority keeps it at
the scale of the honest spread); pass ``tau`` to fix it. Precondition m >= 2f + 1
(for the median start).

Speed: with y_i = x_i - v_0, every iterate is v_0 + w @ y, so distances come from the
(m x m) Gram matrix of y computed once (centering at the median also keeps that
product well conditioned when Byzantine rows are huge).
"""

from __future__ import annotations

import numpy as np

from ._common import gram, median_1d, median_of_sorted, sorted_columns, weighted_rows
from .base import register


@register("centered-clipping", coordinatewise=False, min_rows=lambda f: 2 * f + 1, condition="m >= 2f+1")
def centered_clipping(
    x: np.ndarray, *, f: int = 0, tau: float | None = None, iterations: int = 3
) -> np.ndarray:
    """Centered clipping around the coordinate-wise median.

    Parameters
    ----------
    x : ndarray of shape (m, k)
    f : int
    tau : float, optional
        Clipping radius (> 0); default: median distance of the rows to the median.
    iterations : int
        Clipping iterations L >= 1.

    Returns
    -------
    ndarray of shape (k,), float64
    """
    if iterations < 1:
        raise ValueError(f"centered-clipping: iterations must be >= 1, got {iterations}")
    if tau is not None and not tau > 0:
        raise ValueError(f"centered-clipping: tau must be > 0, got {tau}")
    m = x.shape[0]
    v0 = median_of_sorted(sorted_columns(x))
    y = x - v0.astype(x.dtype)
    h = gram(y)
    sq = np.diag(h)
    radius = median_1d(np.sqrt(np.maximum(sq, 0.0))) if tau is None else float(tau)
    w = np.zeros(m)
    for _ in range(iterations):
        hw = h @ w
        dist = np.sqrt(np.maximum(sq - 2.0 * hw + w @ hw, 0.0))
        with np.errstate(divide="ignore"):
            alpha = np.where(dist > radius, radius / np.where(dist > 0, dist, 1.0), 1.0)
        # sum_i alpha_i (y_i - u) with u = w @ y, in weight space
        w = w + (alpha - alpha.sum() * w) / m
    return np.asarray(v0 + weighted_rows(w, y))
