"""A Little Is Enough (Baruch, Baruch, Goldberg, "A Little Is Enough: Circumventing Defenses
For Distributed Learning", NeurIPS 2019), in two named variants.

``alie`` is the formula of Baruch et al. (below). ``alie-authors`` is ALIE as the HGO
authors' code runs it (repository ``karimboubouh/HgO``): ``src/network.py``
``Byzantine.little_is_enough`` computes z from Φ⁻¹ only when the constant ``LIE_Z`` is
falsy, and ``src/config.py`` sets ``LIE_Z = 10``, so it sends::

    v_j = mean_j(honest) + 10 * std_j(honest)

(plus sign, population std as ``np.std``). With z = 10 the vectors are far outside the
honest spread, so averaging breaks; with Baruch's z (≈ 0.64 at n = 100, f = 25) it cannot.

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

__all__ = ["AUTHORS_Z", "alie", "alie_authors", "alie_z"]

AUTHORS_Z = 10.0  # src/config.py LIE_Z in karimboubouh/HgO


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


def alie_authors(
    honest: np.ndarray, *, n: int, f: int, rng: np.random.Generator, z: float = AUTHORS_Z
) -> np.ndarray:
    """The authors' ALIE vector ``mean(honest) + z * std(honest)`` per column, z = 10 by default.

    Parameters
    ----------
    honest : ndarray, shape (m, k)
    n, f, rng
        Unused (z is a constant in the authors' code).
    z : float
        Shift in honest standard deviations (default :data:`AUTHORS_Z`).
    """
    return np.asarray(honest.mean(axis=0) + z * honest.std(axis=0))


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

register(
    Attack(
        name="alie-authors",
        kind="gradient",
        summary="ALIE as the HGO authors' code runs it: mean + 10*std of the honest gradients",
        params=(Param("z", AUTHORS_Z, real(), "shift in honest std (the authors' LIE_Z = 10)"),),
        fn=alie_authors,
    )
)
