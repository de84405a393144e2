"""Worker budget policies: how a worker splits its per-round compute budget between data
points (batch size s) and coordinates (prefix length b).

HGO (Boubouh et al., SRDS 2022, §4.2.2–4.2.3): in a round of τ ms a worker with rate λ_i
(partial derivatives per ms per data point) can compute ``B = λ_i·τ`` partial derivatives x
data points; any (s, b) with ``s·b <= B``, ``1 <= s``, ``b <= d`` is feasible. More data
points per coordinate lower the variance of each sent value; more coordinates cover more
of the gradient. The paper fixes s and lets b follow; the policies below are the natural
alternatives. Let ``s0`` be the requested batch size, ``M`` the optional ``max_batch``
(typically the shard size; no cap when None), ``clip(s) = max(1, min(M, s))``:

``fixed``
    ``s = s0``, ``b = min(d, floor(B / s0))``: the paper's model and the throttle's
    (:func:`hgo_common.throttle.expected_prefix`).
``data-first``
    Data before coordinates: keep at least ``s0`` data points and spend any budget beyond
    a full gradient on more data: ``s = clip(max(s0, floor(B / d)))``,
    ``b = min(d, floor(B / s))``.
``coordinates-first``
    Coordinates before data: shrink the batch down to 1 to cover as many coordinates as
    possible (``b = min(d, floor(B))``), then spend the rest on data:
    ``s = clip(max(1, floor(B / d)))`` (= 1 unless the budget covers d), ``b = min(d, floor(B / s))``.
    This is the default policy of the authors' code (repository ``karimboubouh/HgO``,
    ``src/utils.py`` ``--block_strategy`` default ``"CoordinatesFirst"``;
    ``src/network.py`` ``Worker.get_block_coordinates_first``: if λτ >= d then b = d and
    s = min(int(λτ / d), |S_i|), else b = int(λτ) and s = 1), with ``max_batch`` = |S_i|.
``hybrid`` (``rho`` in [0, 1])
    Geometric interpolation between the two batch sizes, since s spans orders of
    magnitude: ``s = clip(floor(s_cf^(1 - rho) · s_df^rho))`` with ``s_cf``, ``s_df`` the
    coordinates-first and data-first batch sizes, ``b = min(d, floor(B / s))``.
    ``rho = 0`` is coordinates-first, ``rho = 1`` is data-first.

The authors' SGD baselines do not use a policy: a worker whose full gradient at the
requested batch size does not fit the budget (d·s0 > λτ) is "incapable" and sends
nothing (``src/network.py`` ``Worker.round_complexity``). Here that is ``fixed`` with the
server's rule that SGD counts only complete gradients.

Every plan satisfies ``s >= 1``, ``0 <= b <= d`` and ``s·b <= B`` (b may be 0 when the
budget cannot pay for one coordinate at that batch size). Unthrottled workers
(``rate <= 0`` or ``inf``) and ``tau_ms = inf`` (SGD with τ = ∞) get ``Plan(s0, d)`` for
every policy: the budget is unbounded and the full gradient at the requested batch size is
what SGD computes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .throttle import is_unthrottled

__all__ = ["POLICIES", "Plan", "budget", "plan"]

POLICIES: tuple[str, ...] = ("fixed", "data-first", "coordinates-first", "hybrid")


@dataclass(frozen=True)
class Plan:
    """A worker's choice for one round: mini-batch size and number of coordinates."""

    batch_size: int
    coords: int


def budget(rate: float, tau_ms: float) -> float:
    """``B = rate * tau_ms`` (inf when unthrottled or ``tau_ms`` is inf)."""
    if math.isnan(tau_ms) or tau_ms < 0:
        raise ValueError(f"tau_ms must be >= 0 (or inf), got {tau_ms!r}")
    if is_unthrottled(rate) or math.isinf(tau_ms):
        return math.inf
    return rate * tau_ms


def _coords(b_budget: float, s: int, d: int) -> int:
    x = b_budget / s
    if x >= d:
        return d
    b = math.floor(x)
    # Safety net: fl(B/s) cannot round up onto an integer while k*s < 2**53, but keep
    # s*b <= B exact beyond that too.
    while b > 0 and s * b > b_budget:
        b -= 1
    return b


def _int_at_least(name: str, v: int | None, lo: int) -> None:
    if v is None:
        return
    if isinstance(v, bool) or int(v) != v or v < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")


def plan(
    policy: str,
    *,
    rate: float,
    tau_ms: float,
    d: int,
    batch_size: int,
    rho: float = 0.5,
    max_batch: int | None = None,
) -> Plan:
    """Batch size and prefix length for one round under ``policy`` (see the module docstring).

    Parameters
    ----------
    policy : str
        One of :data:`POLICIES`.
    rate : float
        λ_i, partial derivatives per ms per data point; ``<= 0`` or inf: unthrottled.
    tau_ms : float
        Round length τ in ms (inf allowed).
    d : int
        Model dimension (>= 1).
    batch_size : int
        Requested batch size s0 (>= 1).
    rho : float
        hybrid only: 0 = coordinates-first ... 1 = data-first.
    max_batch : int or None
        Upper bound on s for the adaptive policies (e.g. the shard size).

    Returns
    -------
    Plan
        ``batch_size >= 1``, ``0 <= coords <= d``, ``batch_size * coords <= rate * tau_ms``.

    Raises
    ------
    ValueError
        Unknown policy, or a parameter out of range (the message names it).
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown budget policy {policy!r}; expected one of {list(POLICIES)}")
    _int_at_least("d", d, 1)
    _int_at_least("batch_size", batch_size, 1)
    _int_at_least("max_batch", max_batch, 1)
    if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not 0.0 <= rho <= 1.0:
        raise ValueError(f"rho must be a number in [0, 1], got {rho!r}")
    d, s0 = int(d), int(batch_size)
    bud = budget(rate, tau_ms)
    if math.isinf(bud):
        return Plan(s0, d)
    if policy == "fixed":
        return Plan(s0, _coords(bud, s0, d))

    cap = math.inf if max_batch is None else int(max_batch)

    def clip(s: float) -> int:
        return int(max(1, min(cap, s)))

    per_full = math.floor(bud / d)  # data points a full gradient can afford
    s_df = clip(max(s0, per_full))
    s_cf = clip(max(1, per_full))
    if policy == "data-first":
        s = s_df
    elif policy == "coordinates-first":
        s = s_cf
    else:
        s = clip(math.floor(s_cf ** (1.0 - rho) * s_df**rho + 1e-9))  # 1e-9: 4**0.5 * 9**0.5 = 5.999...
        s = min(max(s, min(s_cf, s_df)), max(s_cf, s_df))
    return Plan(s, _coords(bud, s, d))
