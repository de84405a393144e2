"""Random sign: an attack written outside HGO.

Send the honest mean with each coordinate's sign flipped with probability ``p``.
"""

from __future__ import annotations

import numpy as np

from hgo_common.attacks import Attack, Param, real


def _random_sign(honest: np.ndarray, *, n: int, f: int, rng: np.random.Generator, p: float) -> np.ndarray:
    mean = honest.mean(axis=0)
    flip = rng.random(mean.shape[0]) < p
    return np.where(flip, -mean, mean) * 5.0


random_sign = Attack(
    name="random-sign",
    kind="gradient",
    summary="5 x the honest mean, each coordinate's sign flipped with probability p",
    params=(Param("p", 0.5, real(nonnegative=True), "flip probability"),),
    fn=_random_sign,
)
