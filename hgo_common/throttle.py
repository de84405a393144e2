"""The throttle model: how many coordinates a worker may have released by a given time.

HGO (Boubouh et al., SRDS 2022, §4.2) gives worker i with compute rate λ_i (partial
derivatives per millisecond per data point) and mini-batch size s_i a prefix of
``b_i = min(λ_i·τ / s_i, d)`` coordinates per round of length τ. The worker's pacing
(hgo_worker) and the in-process simulator's prefix model use these same pure functions, so
that a real run and a simulated one release identical prefixes for identical rates.

Conventions
-----------
* Time is in milliseconds from the moment the worker received the round's task.
* ``rate <= 0`` or ``rate == inf`` means *unthrottled*: everything (``d``) is released at
  once and :func:`release_time_ms` is 0. This is what ``hgo-worker --rate 0`` asks for.
* Counts are floored: a coordinate is released only once its whole cost
  (``batch_size / rate`` ms) has elapsed.
"""

from __future__ import annotations

import math

__all__ = ["expected_prefix", "is_unthrottled", "release_time_ms", "released"]


def is_unthrottled(rate: float) -> bool:
    """True when ``rate`` means "no throttle" (``rate <= 0`` or ``rate == inf``).

    Raises
    ------
    ValueError
        If ``rate`` is NaN.
    """
    if math.isnan(rate):
        raise ValueError(f"rate must be a number (<= 0 or inf for unthrottled), got {rate!r}")
    return rate <= 0 or math.isinf(rate)


def _check_batch(batch_size: int) -> None:
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")


def _check_d(d: int) -> None:
    if isinstance(d, bool) or int(d) != d or d < 0:
        raise ValueError(f"d must be an integer >= 0, got {d!r}")


def released(elapsed_ms: float, rate: float, batch_size: int, d: int) -> int:
    """Number of coordinates a worker may have released ``elapsed_ms`` into a round.

    ``min(d, floor(rate * elapsed_ms / batch_size))``; ``d`` when unthrottled.

    Parameters
    ----------
    elapsed_ms : float
        Time since the round's task arrived, in ms (>= 0; ``inf`` allowed).
    rate : float
        λ_i, partial derivatives per ms per data point. ``<= 0`` or ``inf``: unthrottled.
    batch_size : int
        s_i, the mini-batch size (>= 1): each coordinate costs ``batch_size`` partial derivatives.
    d : int
        Model dimension, the cap.

    Returns
    -------
    int
        In ``[0, d]``.

    Raises
    ------
    ValueError
        Negative or NaN ``elapsed_ms``, NaN ``rate``, ``batch_size < 1``, ``d < 0``.
    """
    if math.isnan(elapsed_ms) or elapsed_ms < 0:
        raise ValueError(f"elapsed_ms must be >= 0, got {elapsed_ms!r}")
    _check_batch(batch_size)
    _check_d(d)
    if is_unthrottled(rate):
        return int(d)
    if math.isinf(elapsed_ms):
        return int(d)
    x = rate * elapsed_ms / batch_size
    # Compare before flooring: x may be huge (or inf) for tiny batch sizes and long times.
    return int(d) if x >= d else math.floor(x)


def expected_prefix(rate: float, tau_ms: float, batch_size: int, d: int) -> int:
    """Prefix length b_i a worker reaches by the deadline: ``released(tau_ms, ...)``.

    ``tau_ms = inf`` (SGD with τ = ∞) gives ``d``.
    """
    return released(tau_ms, rate, batch_size, d)


def release_time_ms(n_coords: int, rate: float, batch_size: int) -> float:
    """Earliest time (ms into the round) at which ``n_coords`` coordinates may be out.

    ``n_coords * batch_size / rate``; 0 when unthrottled or ``n_coords == 0``. Inverse of
    :func:`released`: ``released(release_time_ms(n, r, s), r, s, d) == min(n, d)``.

    Raises
    ------
    ValueError
        ``n_coords < 0``, ``batch_size < 1`` or NaN ``rate``.
    """
    if isinstance(n_coords, bool) or int(n_coords) != n_coords or n_coords < 0:
        raise ValueError(f"n_coords must be an integer >= 0, got {n_coords!r}")
    _check_batch(batch_size)
    if is_unthrottled(rate) or n_coords == 0:
        return 0.0
    t = float(n_coords) * float(batch_size) / float(rate)
    # n*s/rate can round so that rate*t/s lands just below n; step up by ulps until
    # released() agrees (at most a couple of steps), so a worker sleeping until t never
    # wakes one coordinate short.
    while math.isfinite(t) and math.floor(rate * t / batch_size) < n_coords:
        t = math.nextafter(t, math.inf)
    return t
