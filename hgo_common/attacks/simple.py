"""Simple gradient attacks: sign-flip, Gaussian noise, large values, NaN/Inf.

Folklore attacks of the Byzantine-robustness literature (e.g. the baselines in Blanchard
et al., "Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent",
NeurIPS 2017, and Xie et al., UAI 2019). Formulas, per coordinate j of the k sent:

* ``sign-flip``:   v_j = -mean_j(honest). On the wire a Byzantine worker passes its own
  mini-batch gradient(s), so this is "-own gradient"; with one row (m = 1) the two
  readings coincide. (FOE with eps = 1.)
* ``gaussian``:    v_j ~ N(0, sigma^2) i.i.d., independent of the honest values.
  ``sigma`` default 200, an absolute scale of the order used in common benchmarks: far
  above typical gradient coordinates (|g_j| << 1 for the MLP), so averaging breaks.
* ``large-value``: v_j = value for every j, ``value`` finite (default 1e6: representable
  in float32 on the wire; the aggregate of an averaging server moves by ~value/q).
* ``nan``:         v_j = value for every j with ``value`` non-finite: "nan" (default),
  "inf" or "-inf". It exercises the server's non-finite policy (a prefix ends before its
  first non-finite value), not the robust rule.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .base import Attack, Param, real, register

__all__ = ["DEFAULT_LARGE_VALUE", "DEFAULT_SIGMA", "gaussian", "large_value", "nan_values", "sign_flip"]

DEFAULT_SIGMA = 200.0
DEFAULT_LARGE_VALUE = 1e6


def sign_flip(honest: np.ndarray, *, n: int, f: int, rng: np.random.Generator) -> np.ndarray:
    """``-mean(honest)`` per column; shape (m, k) -> (k,)."""
    return np.asarray(-honest.mean(axis=0))


def gaussian(
    honest: np.ndarray, *, n: int, f: int, rng: np.random.Generator, sigma: float = DEFAULT_SIGMA
) -> np.ndarray:
    """k i.i.d. N(0, sigma^2) values drawn from ``rng``; shape (m, k) -> (k,)."""
    return np.asarray(rng.normal(0.0, sigma, size=honest.shape[1]), dtype=np.float64)


def large_value(
    honest: np.ndarray, *, n: int, f: int, rng: np.random.Generator, value: float = DEFAULT_LARGE_VALUE
) -> np.ndarray:
    """``value`` on every coordinate; shape (m, k) -> (k,)."""
    return np.full(honest.shape[1], value, dtype=np.float64)


def nan_values(
    honest: np.ndarray, *, n: int, f: int, rng: np.random.Generator, value: float = math.nan
) -> np.ndarray:
    """The non-finite ``value`` (NaN, +inf or -inf) on every coordinate; shape (m, k) -> (k,)."""
    return np.full(honest.shape[1], value, dtype=np.float64)


def _non_finite(v: Any) -> float:
    if isinstance(v, str):
        try:
            x = float(v.strip())
        except ValueError:
            raise ValueError("expected 'nan', 'inf' or '-inf'") from None
    elif isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
        x = float(v)
    else:
        raise ValueError("expected 'nan', 'inf' or '-inf'")
    if math.isfinite(x):
        raise ValueError("expected 'nan', 'inf' or '-inf' (use large-value for finite values)")
    return x


register(
    Attack(
        name="sign-flip",
        kind="gradient",
        summary="-mean of the honest gradients (on the wire: -own gradient)",
        fn=sign_flip,
    )
)
register(
    Attack(
        name="gaussian",
        kind="gradient",
        summary="i.i.d. N(0, sigma^2) noise on every coordinate",
        params=(Param("sigma", DEFAULT_SIGMA, real(positive=True), "noise standard deviation, > 0"),),
        fn=gaussian,
    )
)
register(
    Attack(
        name="large-value",
        kind="gradient",
        summary="the same large finite value on every coordinate",
        params=(Param("value", DEFAULT_LARGE_VALUE, real(), "finite value sent on every coordinate"),),
        fn=large_value,
    )
)
register(
    Attack(
        name="nan",
        kind="gradient",
        summary="NaN (or +/-inf) on every coordinate: tests the server's non-finite policy",
        params=(Param("value", math.nan, _non_finite, "'nan', 'inf' or '-inf'"),),
        fn=nan_values,
    )
)
