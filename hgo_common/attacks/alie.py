"""A Little Is Enough (Baruch, Baruch, Goldberg, "A Little Is Enough: Circumventing Defenses
For Distributed Learning", NeurIPS 2019).

Every Byzantine worker sends, coordinate by coordinate, the honest mean shifted by z honest
standard deviations, small enough to hide inside the honest spread yet consistent across
the colluders, so that coordinate-wise robust rules (median, trimmed mean) and Krum pick it::

    v_j = mean_j(honest) - z * std_j(honest)

Sign convention: we *subtract* z·σ (z > 0 pushes each coordinate below the honest mean),
as the widely used reference implementations do; the paper's Algorithm 3 leaves the
direction of the shift to the attacker. ``std`` is the population standard deviation
(``ddof=0``), so a single honest row (m = 1, e.g. a wire Byzantine worker with one
mini-batch gradient) gives σ = 0 and v = that row.

z defaults to the paper's Algorithm 2 (``z=None``)::

    s = floor(n/2 + 1) - f          # honest workers the attacker needs to "recruit"
    z = Phi^{-1}((n - s) / n)       # Phi: standard normal CDF

e.g. n = 50, f = 24: s = 2, z = Phi^{-1}(0.96) ≈ 1.751; n = 100, f = 25: s = 26,
z = Phi^{-1}(0.74) ≈ 0.643. (Some later code uses (n - f - s)/(n - f) instead; we follow
the paper.) When (n - s)/n falls outside (0, 1) — s <= 0, i.e. f >= floor(n/2 + 1), or
s >= n, i.e. tiny n with f = 0 — Phi^{-1} is ±inf or undefined: :func:`alie_z` raises a
ValueError naming n, f and s instead of clamping silently; pass ``z`` explicitly then.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

import numpy as np

from . import Attack, Param, real, register

__all__ = ["alie", "alie_z"]


def alie_z(n: int, f: int) -> float:
    """The paper's z_max for n workers of which f are Byzantine (Algorithm 2).

    Raises
    ------
    ValueError
        If (n - s)/n is not in (0, 1), with s = floor(n/2 + 1) - f.
    """
    if isinstance(n, bool) or isinstance(f, bool) or int(n) != n or int(f) != f or n < 1 or f < 0:
        raise ValueError(f"ALIE: need integers n >= 1 and f >= 0, got n={n!r}, f={f!r}")
    s = math.floor(n / 2 + 1) - f
    p = (n - s) / n
    if not 0.0 < p < 1.0:
        raise ValueError(
            f"ALIE: z = Phi^-1((n - s)/n) is undefined for n={n}, f={f} "
            f"(s = floor(n/2 + 1) - f = {s}, (n - s)/n = {p:g} not in (0, 1)); pass z explicitly"
        )
    return NormalDist().inv_cdf(p)


def alie(
    honest: np.ndarray, *, n: int, f: int, rng: np.random.Generator, z: float | None = None
) -> np.ndarray:
    """ALIE vector ``mean(honest) - z * std(honest)`` per column.

    Parameters
    ----------
    honest : ndarray, shape (m, k)
    n, f : int
        Used for z when ``z`` is None.
    rng : numpy.random.Generator
        Unused (deterministic attack).
    z : float or None
        Shift in honest standard deviations; None: :func:`alie_z` (n, f).

    Returns
    -------
    ndarray, shape (k,)
    """
    zz = alie_z(n, f) if z is None else z
    return np.asarray(honest.mean(axis=0) - zz * honest.std(axis=0))


def _z(v: Any) -> Any:
    return real(optional=True)(v)


register(
    Attack(
        name="alie",
        kind="gradient",
        summary="A Little Is Enough: mean - z*std of the honest gradients (Baruch et al. 2019)",
        params=(Param("z", None, _z, "shift in honest std; none: Phi^-1((n-s)/n), s=floor(n/2+1)-f"),),
        fn=alie,
    )
)
