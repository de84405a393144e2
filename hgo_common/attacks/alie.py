"""A Little Is Enough (ALIE), in four named variants, each saying which source it follows.

Every variant sends, coordinate by coordinate, the honest mean shifted by z honest standard
deviations: small enough to hide inside the honest spread, the same for every colluder, so
that coordinate-wise robust rules (median, trimmed mean) and Krum are pulled along.
``std`` is the population standard deviation (``ddof=0``), so a single honest row (m = 1,
e.g. a wire Byzantine worker with one mini-batch gradient) gives σ = 0 and v = that row.
The variants differ in z, in the sign of the shift and in which honest values the
statistics are taken over:

``alie-baruch`` (and its deprecated alias ``alie``, the name this attack shipped under)
    Baruch, Baruch, Goldberg, "A Little Is Enough: Circumventing Defenses For Distributed
    Learning", NeurIPS 2019, Algorithm 3 lines 1-2 (the z of the original paper)::

        s = floor(n/2 + 1) - f          # honest workers the attackers must "recruit"
        z = Phi^{-1}((n - s) / n)       # Phi: standard normal CDF
        v_j = mean_j(honest) - z * std_j(honest)

    e.g. n = 50, f = 24: s = 2, z = Phi^{-1}(0.96) ≈ 1.751; n = 100, f = 25: s = 26,
    z = Phi^{-1}(0.74) ≈ 0.643. Sign: minus, as this project has always sent it (a
    positive z pushes each coordinate below the honest mean); the sign Baruch et al.'s
    Algorithm 3 prints was not re-checked here (no copy of the paper was at hand), so
    the minus sign is this project's choice, not a citation.

``alie-hgo-paper``
    The HGO paper's own Algorithm 2 (Boubouh et al., SRDS 2022), as quoted by the audit
    in issue 22 (the paper's PDF could not be read here): the attackers' z counts only
    the n - f honest workers, and the shift is added::

        s = floor(n/2 + 1) - f
        z = Phi^{-1}((n - f - s) / (n - f))
        v_j = mean_j(honest) + z * std_j(honest)

    n = 100, f = 25: s = 26, z = Phi^{-1}(49/75) ≈ 0.394. (The same (n - f - s)/(n - f)
    appears in Karimireddy et al.'s bucketing code, epfml/byzantine-robust-noniid-optimizer.)

``alie-authors``
    The formula of the HGO authors' code (repository ``karimboubouh/HgO``,
    ``src/network.py`` ``Byzantine.little_is_enough``, identical at v1.0 372202e and at
    627b9f7, the newest stored version): z = Phi^{-1}((n - s)/n) only when the constant
    ``LIE_Z`` is falsy, and ``src/config.py`` sets ``LIE_Z = 10`` (both commits), so::

        v_j = mean_j(honest) + 10 * std_j(honest)

    on every coordinate it is given. This is *not* what their code does with partial
    honest gradients; see ``alie-authors-nan``.

``alie-authors-nan``
    The authors' code as it runs on partial gradients (logistic and linear models, both
    commits): the honest rows are NaN-padded to the longest honest prefix
    (``src/utils.py`` ``fill_array``), the mean is ``np.nanmean`` and the deviation plain
    ``np.std``, which is NaN wherever *any* honest row is NaN. So::

        v_j = nanmean_j(honest) + 10 * std_j(honest)   where every honest prefix reaches j
        v_j = NaN                                        past the shortest honest prefix

    Their rules are NaN-aware (``np.nanmedian`` ...), so the attack only touches the
    coordinates every honest worker sent (the first ~100 of d = 785 in Figures 5-8).
    Here the honest matrix must carry NaN past each honest worker's prefix: the
    simulator pads it for attacks whose ``honest_view`` is ``"prefix"``. The server's
    non-finite policy then ends the Byzantine prefix before its first NaN, which skips
    the rest as their rules do; deviation: their server still counts the Byzantine row
    at the longest honest length when it picks b_v, ours at the shortest — except with
    the NaN-aware rules ``average-authors``, ``median-authors``, ``krum-authors`` and
    ``aksel-authors`` (hgo_common/aggregators/nan_authors.py), with which the simulator
    keeps the row, NaN and all, at the longest honest length, as their server. With full
    honest rows (on the wire, or an omniscient attacker without padding) it equals
    ``alie-authors``.

When z's quantile falls outside (0, 1) (s <= 0, i.e. f >= floor(n/2 + 1); s >= n; or
n - f = 0), Phi^{-1} is ±inf or undefined: :func:`alie_z` and :func:`alie_z_hgo` raise a
ValueError naming n, f and s instead of clamping silently; pass ``z`` explicitly then.
"""

from __future__ import annotations

import math
import warnings
from statistics import NormalDist
from typing import Any

import numpy as np

from .base import Attack, Param, real, register

__all__ = ["AUTHORS_Z", "alie", "alie_authors", "alie_authors_nan", "alie_hgo_paper", "alie_z", "alie_z_hgo"]

AUTHORS_Z = 10.0  # LIE_Z in karimboubouh/HgO src/config.py (v1.0 372202e and 627b9f7)


def _check(n: int, f: int) -> None:
    if isinstance(n, bool) or isinstance(f, bool) or int(n) != n or int(f) != f or n < 1 or f < 0:
        raise ValueError(f"ALIE: need integers n >= 1 and f >= 0, got n={n!r}, f={f!r}")


def alie_z(n: int, f: int) -> float:
    """Baruch et al.'s z_max for n workers of which f are Byzantine: Phi^-1((n - s)/n).

    Raises
    ------
    ValueError
        If (n - s)/n is not in (0, 1), with s = floor(n/2 + 1) - f.
    """
    _check(n, f)
    s = math.floor(n / 2 + 1) - f
    p = (n - s) / n
    if not 0.0 < p < 1.0:
        raise ValueError(
            f"ALIE: z = Phi^-1((n - s)/n) is undefined for n={n}, f={f} "
            f"(s = floor(n/2 + 1) - f = {s}, (n - s)/n = {p:g} not in (0, 1)); pass z explicitly"
        )
    return NormalDist().inv_cdf(p)


def alie_z_hgo(n: int, f: int) -> float:
    """The HGO paper's z (its Algorithm 2): Phi^-1((n - f - s)/(n - f)), s = floor(n/2 + 1) - f.

    Raises
    ------
    ValueError
        If n - f = 0 or (n - f - s)/(n - f) is not in (0, 1).
    """
    _check(n, f)
    s = math.floor(n / 2 + 1) - f
    p = (n - f - s) / (n - f) if n > f else math.nan
    if not 0.0 < p < 1.0:
        raise ValueError(
            f"ALIE: z = Phi^-1((n - f - s)/(n - f)) is undefined for n={n}, f={f} "
            f"(s = floor(n/2 + 1) - f = {s}, quantile {p:g} not in (0, 1)); pass z explicitly"
        )
    return NormalDist().inv_cdf(p)


def alie(
    honest: np.ndarray, *, n: int, f: int, rng: np.random.Generator, z: float | None = None
) -> np.ndarray:
    """``alie-baruch``: ``mean(honest) - z * std(honest)`` per column, z from :func:`alie_z`.

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


def alie_hgo_paper(
    honest: np.ndarray, *, n: int, f: int, rng: np.random.Generator, z: float | None = None
) -> np.ndarray:
    """``alie-hgo-paper``: ``mean(honest) + z * std(honest)``, z from :func:`alie_z_hgo`."""
    zz = alie_z_hgo(n, f) if z is None else z
    return np.asarray(honest.mean(axis=0) + zz * honest.std(axis=0))


def alie_authors(
    honest: np.ndarray, *, n: int, f: int, rng: np.random.Generator, z: float = AUTHORS_Z
) -> np.ndarray:
    """``alie-authors``: ``mean(honest) + z * std(honest)`` per column, z = 10 by default.

    Parameters
    ----------
    honest : ndarray, shape (m, k)
    n, f, rng
        Unused (z is a constant in the authors' code).
    z : float
        Shift in honest standard deviations (default :data:`AUTHORS_Z`).
    """
    return np.asarray(honest.mean(axis=0) + z * honest.std(axis=0))


def alie_authors_nan(
    honest: np.ndarray, *, n: int, f: int, rng: np.random.Generator, z: float = AUTHORS_Z
) -> np.ndarray:
    """``alie-authors-nan``: ``nanmean(honest) + z * std(honest)`` over NaN-padded rows.

    Parameters
    ----------
    honest : ndarray, shape (m, k)
        Honest values, NaN past each honest worker's prefix.

    Returns
    -------
    ndarray, shape (k,)
        NaN wherever any honest row is NaN (``np.std`` propagates NaN, as in the
        authors' code), finite elsewhere.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of an all-NaN column
        mean = np.nanmean(honest, axis=0)
    return np.asarray(mean + z * honest.std(axis=0))


def _z(v: Any) -> Any:
    return real(optional=True)(v)


_BARUCH_Z = Param("z", None, _z, "shift in honest std; none: Phi^-1((n-s)/n), s=floor(n/2+1)-f")

register(
    Attack(
        name="alie-baruch",
        kind="gradient",
        summary="A Little Is Enough, Baruch et al. 2019's z = Phi^-1((n-s)/n): mean - z*std",
        params=(_BARUCH_Z,),
        fn=alie,
    )
)

register(
    Attack(
        name="alie",
        kind="gradient",
        summary="deprecated alias of alie-baruch (same values): mean - z*std, z = Phi^-1((n-s)/n)",
        params=(_BARUCH_Z,),
        fn=alie,
    )
)

register(
    Attack(
        name="alie-hgo-paper",
        kind="gradient",
        summary="ALIE as the HGO paper's Algorithm 2: mean + z*std, z = Phi^-1((n-f-s)/(n-f))",
        params=(Param("z", None, _z, "shift in honest std; none: Phi^-1((n-f-s)/(n-f))"),),
        fn=alie_hgo_paper,
    )
)

register(
    Attack(
        name="alie-authors",
        kind="gradient",
        summary="the HGO authors' ALIE formula (karimboubouh/HgO LIE_Z = 10): mean + 10*std, "
        "on every coordinate",
        params=(Param("z", AUTHORS_Z, real(), "shift in honest std (the authors' LIE_Z = 10)"),),
        fn=alie_authors,
    )
)

register(
    Attack(
        name="alie-authors-nan",
        kind="gradient",
        summary="the HGO authors' ALIE as their code runs: nanmean + 10*std over NaN-padded prefixes "
        "(NaN past the shortest honest prefix)",
        params=(Param("z", AUTHORS_Z, real(), "shift in honest std (the authors' LIE_Z = 10)"),),
        fn=alie_authors_nan,
        honest_view="prefix",
    )
)
