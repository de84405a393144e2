"""Geometric median by the smoothed Weiszfeld algorithm (Pillutla, Kakade, Harchaoui,
"Robust Aggregation for Federated Learning" (RFA), arXiv:1912.13445, 2019; IEEE TSP 2022).

Variant: equal weights alpha_i = 1/m; start at the mean (as RFA); iterate

    beta_i = alpha_i / max(nu, |z - x_i|),    z <- sum_i beta_i x_i / sum_i beta_i

with smoothing ``nu = 1e-6``, at most ``max_iter = 100`` iterations, stopping when
the smoothed objective sum_i alpha_i max(nu, |z - x_i|) improves by less than
``tol = 1e-6`` relative (RFA's ``ftol``). No precondition beyond m >= 1; the
breakdown point is 1/2, so ``min_rows`` is 2f + 1.

Speed: every iterate is a convex combination z = w @ x of the rows, so the distances
|z - x_i|^2 = G_ii - 2 (G w)_i + w G w come from the (m x m) Gram matrix G computed
ONCE; the iterations cost O(m^2) and the (m x k) data is read twice in total.
"""

from __future__ import annotations

import numpy as np

from . import register
from ._common import weighted_rows


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
        Relative objective improvement below which the iteration stops.

    Returns
    -------
    ndarray of shape (k,), float64
    """
    if not nu > 0 or max_iter < 1 or not tol >= 0:
        raise ValueError(
            f"geometric-median: need nu > 0, max_iter >= 1, tol >= 0; got {nu=}, {max_iter=}, {tol=}"
        )
    m = x.shape[0]
    g = (x @ x.T).astype(np.float64)
    sq = np.diag(g)
    w = np.full(m, 1.0 / m)

    def distances(w: np.ndarray) -> np.ndarray:
        gw = g @ w
        return np.asarray(np.sqrt(np.maximum(sq - 2.0 * gw + w @ gw, 0.0)))

    dist = np.maximum(distances(w), nu)
    obj = dist.mean()
    for _ in range(max_iter):
        beta = 1.0 / dist
        w = beta / beta.sum()
        dist = np.maximum(distances(w), nu)
        new = dist.mean()
        if obj - new <= tol * obj:
            obj = new
            break
        obj = new
    return weighted_rows(w, x)
