"""Bucketing (Karimireddy, He, Jaggi, "Byzantine-Robust Learning on Heterogeneous
Datasets via Bucketing", ICLR 2022). A pre-aggregation step: compose it as
``get("bucketing+median")``.

Variant: shuffle the m rows with a random permutation, cut them into ceil(m / s)
consecutive buckets of s rows (the last bucket holds the remainder when s does not
divide m) and replace each bucket by its mean. The rule after it still tolerates f
(a Byzantine row spoils at most one bucket), so with the default s = 2 a composed
rule needs twice as many rows: ``get("bucketing+krum").min_rows(f) == 2 (2f+2) + 1``.

Randomness: ``rng`` is a ``np.random.Generator`` or an int seed, default 0 — the
same permutation on every call unless the caller passes its own generator. The server
and the simulator pass ``hgo_common.rounds.aggregation_rng(seed, k)`` through
``rounds.close_round`` / ``blocks.aggregate``, so the buckets change every round and
replay exactly for the same (run seed, round).
"""

from __future__ import annotations

import numpy as np

from .base import register_pre

DEFAULT_S = 2


def _rows_needed(f: int, need: int) -> int:
    # ceil(m / s) >= need  <=>  m >= s * (need - 1) + 1
    return DEFAULT_S * (need - 1) + 1


@register_pre("bucketing", rows_needed=_rows_needed)
def bucketing(
    x: np.ndarray, *, f: int = 0, s: int = DEFAULT_S, rng: np.random.Generator | int = 0
) -> np.ndarray:
    """Means of random buckets of ``s`` rows.

    Parameters
    ----------
    x : ndarray of shape (m, k)
    f : int
        Unused (the bucket size does not depend on it).
    s : int
        Bucket size >= 1.
    rng : np.random.Generator or int
        Source of the permutation; an int is a seed (default 0: deterministic).

    Returns
    -------
    ndarray of shape (ceil(m / s), k), float64
    """
    if isinstance(s, bool) or not isinstance(s, int | np.integer) or s < 1:
        raise ValueError(f"bucketing: bucket size s must be an integer >= 1, got {s!r}")
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    m = x.shape[0]
    shuffled = x[gen.permutation(m)]
    starts = np.arange(0, m, s)
    counts = np.minimum(starts + s, m) - starts
    sums = np.add.reduceat(shuffled, starts, axis=0, dtype=np.float64)
    return np.asarray(sums / counts[:, None])
