"""Fall of Empires / inner product manipulation (Xie, Koyejo, Gupta, "Fall of Empires:
Breaking Byzantine-tolerant SGD by Inner Product Manipulation", UAI 2019), in two named
variants.

``foe`` (Xie et al.'s attack): every Byzantine worker sends the honest mean, reversed and
scaled::

    v = -eps * mean(honest)

so that the aggregate's inner product with the true gradient turns negative and descent
becomes ascent. ``eps`` > 0 (finite). Small eps (the paper's 0.1) keeps the Byzantine
vectors close to the honest ones and defeats rules that pick "central" vectors (Krum);
large eps overwhelms averaging. The default ``eps = 10`` is the HGO authors' ``FOE_EPS = 10``
(repository ``karimboubouh/HgO``, ``src/config.py``; used by ``src/network.py``
``Byzantine.fall_of_empires``, which returns ``-eps * nanmean`` of the honest gradients
received in the round; ``FOE_EPS = 10`` at v1.0 372202e and at 627b9f7, the newest
stored version): with eps > 1 the vector points opposite to the mean with eps times its
norm.

``foe-authors`` is the same formula over the statistics the authors' server holds
(``src/network.py`` ``Byzantine.fall_of_empires``, logistic/linear branch, both commits):
the honest prefixes NaN-padded to the longest one (``src/utils.py`` ``fill_array``) and
``np.nanmean`` per coordinate, so each coordinate's mean is over the honest workers that
sent it and the Byzantine row ends where the longest honest prefix ends (``nanmean`` of an
all-NaN column is NaN; the server's non-finite policy ends the prefix there). It needs the
NaN-padded honest matrix (``honest_view = "prefix"``, padded by the simulator); with full
honest rows it equals ``foe``.
"""

from __future__ import annotations

import warnings

import numpy as np

from .base import Attack, Param, real, register

__all__ = ["DEFAULT_EPS", "foe", "foe_authors"]

DEFAULT_EPS = 10.0


def foe(
    honest: np.ndarray, *, n: int, f: int, rng: np.random.Generator, eps: float = DEFAULT_EPS
) -> np.ndarray:
    """FOE vector ``-eps * mean(honest)`` per column.

    Parameters
    ----------
    honest : ndarray, shape (m, k)
    n, f : int
        Unused.
    rng : numpy.random.Generator
        Unused (deterministic attack).
    eps : float
        Scale, > 0.

    Returns
    -------
    ndarray, shape (k,)
    """
    return np.asarray(-eps * honest.mean(axis=0))


def foe_authors(
    honest: np.ndarray, *, n: int, f: int, rng: np.random.Generator, eps: float = DEFAULT_EPS
) -> np.ndarray:
    """``foe-authors``: ``-eps * nanmean(honest)`` over NaN-padded honest prefixes.

    Parameters
    ----------
    honest : ndarray, shape (m, k)
        Honest values, NaN past each honest worker's prefix.

    Returns
    -------
    ndarray, shape (k,)
        NaN where no honest row has a value (past the longest honest prefix).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of an all-NaN column
        return np.asarray(-eps * np.nanmean(honest, axis=0))


register(
    Attack(
        name="foe",
        kind="gradient",
        summary="Fall of Empires / inner product manipulation: -eps * honest mean (Xie et al. 2019)",
        params=(Param("eps", DEFAULT_EPS, real(positive=True), "scale of the reversed mean, > 0"),),
        fn=foe,
    )
)

register(
    Attack(
        name="foe-authors",
        kind="gradient",
        summary="Fall of Empires as the HGO authors' code runs it: -eps * nanmean over NaN-padded "
        "honest prefixes",
        params=(Param("eps", DEFAULT_EPS, real(positive=True), "scale of the reversed mean, > 0"),),
        fn=foe_authors,
        honest_view="prefix",
    )
)
