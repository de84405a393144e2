"""Geometric median by the smoothed Weiszfeld algorithm (Pillutla, Kakade, Harchaoui,
"Robust Aggregation for Federated Learning" (RFA), arXiv:1912.13445, 2019; IEEE TSP 2022).

Variant: equal weights alpha_i = 1/m; iterate

    beta_i = alpha_i / max(nu, |z - x_i|),    z <- sum_i beta_i x_i / sum_i beta_i

with smoothing ``nu = 1e-6``, at most ``max_iter = 100`` iterations, stopping when an
iteration moves z by at most ``tol = 1e-6`` times the median distance of the rows to
the start point (a scale-free step criterion; RFA's relative-objective ``ftol`` stops far too early
when a few huge Byzantine rows dominate the objective).

Start: RFA starts at the mean, which f rows at 1e6 drag far away; Weiszfeld then needs
about log(1e6 / precision) / log((m - f) / f) iterations to come back. We start instead
at the mean of the ceil(m / 2) rows with the smallest sum of distances to all rows (a
robust point from the same Gram matrix; never a single data point, where the smoothed
iteration would stall). The limit is the same smoothed geometric median.

No precondition beyond m >= 1; the breakdown point is 1/2, so ``min_rows`` is 2f + 1.

Speed: every iterate is a convex combination z = w @ x of the rows, so the distances
|z - x_i|^2 = G_ii - 2 (G w)_i + w G w come from the (m x m) Gram matrix G computed
ONCE; the iterations cost O(m^2) and the (m x k) data is read twice in total.
"""

from __future__ import annotations

import numpy as np

from ._common import gram, median_1d, select_lowest, weighted_rows
from .base import register


@register("geometric-median", coordinatewise=False, min_rows=lambda f: 2 * f + 1, condition="m >= 2f+1")
def geometric_median(
    x: np.ndarray, *, f: int = 0, nu: float = 1e-6, max_iter: int = 100, tol: float = 1e-6
) -> np.ndarray:
    """Smoothed Weiszfeld approximation of the geometric median of the rows.

    Parameters
    ----------
    x : ndarray of shape (m, k)
    f : int
        Only checked against m >= 2f + 1.
    nu : float
        Smoothing: distances below ``nu`` count as ``nu`` (avoids division by 0).
    max_iter : int
        Iteration cap.
    tol : float
        Stop when a step moves z by at most ``tol`` times the median distance of the rows
        to the start point.

    Returns
    -------
    ndarray of shape (k,), float64
    """
    if not nu > 0 or max_iter < 1 or not tol >= 0:
        raise ValueError(
            f"geometric-median: need nu > 0, max_iter >= 1, tol >= 0; got {nu=}, {max_iter=}, {tol=}"
        )
    m = x.shape[0]
    g = gram(x)
    sq = np.diag(g).copy()

    pair = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * g, 0.0))
    start = select_lowest(pair.sum(axis=1), x, (m + 1) // 2)
    w = np.zeros(m)
    w[start] = 1.0 / start.size
    gw = g @ w
    dist = np.sqrt(np.maximum(sq - 2.0 * gw + w @ gw, 0.0))
    # squared step threshold, scaled by the spread of the rows around the start
    limit = (tol * max(median_1d(dist), nu)) ** 2
    # Small arrays only in here (m values): the loop costs a few microseconds a turn.
    for _ in range(max_iter):
        beta = 1.0 / np.maximum(dist, nu)
        w_new = beta / beta.sum()
        gw_new = g @ w_new
        # |z_new - z|^2 = (w_new - w) G (w_new - w)
        step2 = float((w_new - w) @ (gw_new - gw))
        w, gw = w_new, gw_new
        dist = np.sqrt(np.maximum(sq - 2.0 * gw + w @ gw, 0.0))
        if step2 <= limit:
            break
    return weighted_rows(w, x)
