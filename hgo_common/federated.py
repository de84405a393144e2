"""Federated evaluation, the parts both ends agree on: the validation hold-out and the aggregate.

HGO's premise (Boubouh et al., SRDS 2022, §1) is devices that hold data nobody else has;
evaluating the model there, as federated-learning systems do (McMahan et al., AISTATS 2017,
§3: clients report example-weighted metrics), is issue 21's "federated evaluation". A
worker holds out a seeded share of its local data as its validation split
(:func:`holdout_split`; never trained on) and, when a round's task asks, reports the loss
(and accuracy) of the task's weights on it with the example count.

The paper's threat model (§2) lets a Byzantine device send anything, its metrics included.
:func:`aggregate` therefore reports, beside the example-weighted mean, the **median of the
per-device values** (unweighted): while fewer than half of the reports lie it stays within
the range of the honest values, whatever the liars claim, and it needs no assumed f (a
trimmed mean would). The weighted mean is kept because it is what honest federated
evaluation means; every weight is bounded (:func:`bounded_weights`) so that a lie about
the count cannot buy more than a typical device's say. The server decides nothing on
either value (docs/operations.md "Federated evaluation").
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["MAX_EVAL_FRACTION", "aggregate", "bounded_weights", "holdout_count", "holdout_split"]

MAX_EVAL_FRACTION = 0.5
"""The largest validation share a server may ask for: a device keeps at least half its data to train on."""


def holdout_count(rows: int, fraction: float) -> int:
    """Rows held out for validation from ``rows``: ``floor(fraction * rows)``, leaving >= 1 to train.

    Both ends compute it: the worker to split, the server to know the most a device that
    received its shard from the server can have evaluated.
    """
    if rows < 0:
        raise ValueError(f"rows must be >= 0, got {rows}")
    if not (math.isfinite(fraction) and 0.0 <= fraction <= MAX_EVAL_FRACTION):
        raise ValueError(f"eval fraction must be in [0, {MAX_EVAL_FRACTION}], got {fraction}")
    return max(0, min(math.floor(fraction * rows), rows - 1))


def holdout_split(rows: int, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices), a seeded partition of ``range(rows)``.

    Returns
    -------
    train, validation : ndarray of int64, sorted
        ``len(validation) == holdout_count(rows, fraction)``.
    """
    n_val = holdout_count(rows, fraction)
    perm = rng.permutation(rows)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def bounded_weights(claimed: Sequence[int], known: Sequence[int | None]) -> np.ndarray:
    """The weight each report gets in the mean: its claimed count, bounded.

    A device whose count the server knows (it shipped the shard) weighs at most that; one
    whose count it cannot know (device-local data) weighs at most the median of the
    round's bounded counts, which a minority of liars cannot raise above the honest ones.

    Returns
    -------
    weights : ndarray of shape (m,), float64
    """
    if len(claimed) != len(known):
        raise ValueError(f"{len(claimed)} counts for {len(known)} known sizes")
    bounded = [c if k is None else min(c, k) for c, k in zip(claimed, known, strict=True)]
    w = np.array(bounded, dtype=np.float64)
    if len(w) and any(k is None for k in known):
        cap = float(np.median(w))
        unknown = np.array([k is None for k in known])
        w[unknown] = np.minimum(w[unknown], cap)
    return w


def aggregate(values: Sequence[float], weights: Sequence[float] | np.ndarray) -> dict[str, float | int]:
    """The round's aggregate of one metric over the accepted reports.

    Returns
    -------
    dict
        ``mean`` (weighted by ``weights``), ``median`` (of the per-device values, unweighted:
        the robust one), ``min``, ``max`` and ``reports``; NaN statistics without reports.
    """
    v = np.asarray(values, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if v.shape != w.shape:
        raise ValueError(f"{v.shape} values for {w.shape} weights")
    if not len(v) or not w.sum() > 0:
        nan = math.nan
        return {"mean": nan, "median": nan, "min": nan, "max": nan, "reports": len(v)}
    return {
        "mean": float(np.dot(v, w) / w.sum()),
        "median": float(np.median(v)),
        "min": float(v.min()),
        "max": float(v.max()),
        "reports": len(v),
    }
