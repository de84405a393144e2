"""Random sign: an attack written outside HGO.

Send ``scale`` times the honest mean with each coordinate's sign flipped with
probability ``p`` (defaults: p = 0.9, scale = 10): mostly the opposite of the honest
direction, with random coordinates left alone so that a sign check alone does not catch it.
"""

from __future__ import annotations

import numpy as np

from hgo_common.attacks import Attack, Param, real


def _random_sign(
    honest: np.ndarray, *, n: int, f: int, rng: np.random.Generator, p: float, scale: float
) -> np.ndarray:
    mean = honest.mean(axis=0)
    flip = rng.random(mean.shape[0]) < p
    return np.asarray(scale * np.where(flip, -mean, mean))


random_sign = Attack(
    name="random-sign",
    kind="gradient",
    summary="scale x the honest mean, each coordinate's sign flipped with probability p",
    params=(
        Param("p", 0.9, real(nonnegative=True), "flip probability"),
        Param("scale", 10.0, real(positive=True), "multiplier of the honest mean"),
    ),
    fn=_random_sign,
)
