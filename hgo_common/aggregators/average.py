"""Arithmetic mean: the non-robust baseline (plain distributed SGD)."""

from __future__ import annotations

import numpy as np

from . import register


@register("average", coordinatewise=True)
def average(x: np.ndarray, *, f: int = 0) -> np.ndarray:
    """Column mean of an (m x k) array; ``f`` is ignored (no robustness)."""
    return np.asarray(x.mean(axis=0))
