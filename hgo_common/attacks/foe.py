"""Fall of Empires / inner product manipulation (Xie, Koyejo, Gupta, "Fall of Empires:
Breaking Byzantine-tolerant SGD by Inner Product Manipulation", UAI 2019).

Every Byzantine worker sends the honest mean, reversed and scaled::

    v = -eps * mean(honest)

so that the aggregate's inner product with the true gradient turns negative and descent
becomes ascent. ``eps`` > 0 (finite). Small eps (the paper's 0.1) keeps the Byzantine
vectors close to the honest ones and defeats rules that pick "central" vectors (Krum);
large eps overwhelms averaging. The default ``eps = 10`` is the HGO authors' ``FOE_EPS = 10``
(repository ``karimboubouh/HgO``, ``src/config.py``; used by ``src/network.py``
``Byzantine.fall_of_empires``, which returns ``-eps * nanmean`` of the honest gradients
received in the round): with eps > 1 the vector points opposite to the mean with eps
times its norm.
"""

from __future__ import annotations

import numpy as np

from . import Attack, Param, real, register

__all__ = ["DEFAULT_EPS", "foe"]

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


register(
    Attack(
        name="foe",
        kind="gradient",
        summary="Fall of Empires / inner product manipulation: -eps * honest mean (Xie et al. 2019)",
        params=(Param("eps", DEFAULT_EPS, real(positive=True), "scale of the reversed mean, > 0"),),
        fn=foe,
    )
)
