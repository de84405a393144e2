"""Adaptive deadline (``--tau auto``): choose τ each round from what the fleet delivers.

HGO's round (paper §3, Algorithm 1) waits a fixed τ, and the block is the v-th longest
prefix held then: b_v(τ). Too long a τ wastes every round on the slowest devices; too
short a τ drops devices about to finish. Every round the server sees how far each sampled
worker's prefix got, and by when — that is a measured delivery rate per worker, and the
smallest τ that meets a coverage target follows from it.

Target (:class:`AutoTau`): a block fraction ``b_v / d >= target`` (e.g. 0.5), with τ kept
in ``[tau_min, tau_max]``.

Per worker i the policy keeps an estimate r_i of its delivery rate in C_k positions per
ms, measured as (prefix delivered) / (time of its last delivered chunk since the broadcast),
smoothed over the rounds it was sampled in (an exponential moving average with weight
``memory`` on the newest round). Round k's deadline, for the sampled workers S_k:

    r_(j) = the j-th largest r_i over S_k        (unknown workers: the median of the known)
    j     = min(max(v, f + 1), |S_k| - f)          (f: the Byzantine workers the rule tolerates)
    τ_k   = clamp((1 + headroom) · ceil(target · d) / r_(j), tau_min, tau_max)

since a worker delivering r_i positions per ms holds min(d, r_i·τ) by τ, and b_v(τ) is
the v-th largest of those. The round also closes as soon as the target is met (the v-th
longest prefix reaches ``ceil(target · d)``): the block is built from the prefixes held
then, exactly as at a fixed deadline (:meth:`DeadlinePolicy.met`). That early close is why
the deadline carries ``headroom`` (default 25 %) past the estimate: when the estimate is
right the round ends at the estimate anyway, and when the v-th worker is a little slower
this round the target is still met instead of missed by a few coordinates.

Robustness: r_i is computed from worker i's own row only, and τ_k from an order statistic
of the sampled rows that ignores the f fastest and the f slowest rates: with f = 0 it is
r_(v), the rate that decides b_v. Up to f Byzantine workers that deliver slowly on purpose
(one value just before τ, every round) are then never the rank τ is taken from, as they
were when fewer than v honest workers were sampled (issue 20: two identities kept every
round at ``tau_max``); the configuration check ``q - f >= v``
(``hgo_common.spec.RunSpec.checked``) makes the rank exist. A Byzantine worker cannot
stretch τ beyond ``tau_max`` nor shrink it below ``tau_min``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["AutoTau", "Choice", "DeadlinePolicy"]

MIN_DELIVERY_MS = 1e-3  # a delivery timed at 0 ms (the simulator's unthrottled worker) counts as 1 µs


@dataclass(frozen=True)
class AutoTau:
    """The adaptive deadline's settings (milliseconds)."""

    target: float = 0.5
    tau_min: float = 10.0
    tau_max: float = 1000.0
    memory: float = 0.5
    headroom: float = 0.25

    def __post_init__(self) -> None:
        if not 0.0 < self.target <= 1.0:
            raise ValueError(f"tau target (block fraction b_v/d) must be in (0, 1], got {self.target}")
        if not (0.0 < self.tau_min <= self.tau_max and math.isfinite(self.tau_max)):
            raise ValueError(
                f"tau bounds need 0 < tau_min <= tau_max < inf (ms), got tau_min={self.tau_min}, "
                f"tau_max={self.tau_max}"
            )
        if not 0.0 < self.memory <= 1.0:
            raise ValueError(f"tau memory must be in (0, 1], got {self.memory}")
        if not 0.0 <= self.headroom < math.inf:
            raise ValueError(f"tau headroom must be a finite fraction >= 0, got {self.headroom}")


@dataclass(frozen=True)
class Choice:
    """Round k's deadline and why: the record's ``tau_ms`` and ``tau_auto`` fields."""

    tau_ms: float
    estimate_ms: float  # (1 + headroom) target / r_(v) before clamping (inf: none known to deliver)
    reason: str  # "estimate" | "tau-min" | "tau-max" | "no-estimate"
    known: int  # sampled workers with a rate estimate

    def as_record(self, target: float) -> dict[str, object]:
        est = self.estimate_ms if math.isfinite(self.estimate_ms) else None
        return {"target": target, "estimate_ms": est, "reason": self.reason, "known": self.known}


class DeadlinePolicy:
    """Learns each worker's delivery rate and picks the smallest τ meeting the target.

    Parameters
    ----------
    spec : AutoTau
    d : int
        Model dimension.
    v : int
        The quorum: the block is the v-th longest prefix.
    f : int, optional
        Byzantine workers tolerated: the f fastest and f slowest rates are not used.
    """

    def __init__(self, spec: AutoTau, d: int, v: int, f: int = 0) -> None:
        if d < 1 or v < 1 or f < 0:
            raise ValueError(f"need d >= 1, v >= 1 and f >= 0, got d={d}, v={v}, f={f}")
        self.spec = spec
        self.d = int(d)
        self.v = int(v)
        self.f = int(f)
        self.target_coords = max(1, math.ceil(spec.target * d))
        self.rates: dict[int, float] = {}

    def rate_of(self, worker: int) -> float | None:
        """r_i in C_k positions per ms (None before worker i was observed)."""
        return self.rates.get(int(worker))

    def choose(self, workers: Sequence[int]) -> Choice:
        """τ_k for the sampled ``workers`` (ids), from their rate estimates."""
        known = [self.rates[w] for w in map(int, workers) if w in self.rates]
        if not known:
            return Choice(self.spec.tau_max, math.inf, "no-estimate", 0)
        prior = float(np.median(list(self.rates.values())))
        rates = np.array([self.rates.get(int(w), prior) for w in workers], dtype=np.float64)
        rank = max(1, min(max(self.v, self.f + 1), rates.size - self.f, rates.size))
        r_v = float(np.sort(rates)[::-1][rank - 1])
        estimate = (1.0 + self.spec.headroom) * self.target_coords / r_v if r_v > 0 else math.inf
        tau = min(max(estimate, self.spec.tau_min), self.spec.tau_max)
        reason = "estimate"
        if estimate < self.spec.tau_min:
            reason = "tau-min"
        elif estimate > self.spec.tau_max:
            reason = "tau-max"
        return Choice(tau, estimate, reason, len(known))

    def met(self, prefixes: np.ndarray) -> bool:
        """Whether the prefixes held now already give b_v >= ceil(target · d)."""
        p = np.asarray(prefixes)
        if p.size < self.v:
            return False
        return bool(np.partition(p, p.size - self.v)[p.size - self.v] >= self.target_coords)

    def observe(self, workers: Sequence[int], prefixes: np.ndarray, delivered_ms: np.ndarray) -> None:
        """Fold in round k: worker ``workers[i]`` held ``prefixes[i]`` positions, the last of
        them delivered ``delivered_ms[i]`` after the broadcast (the close time when nothing
        came: its rate is then measured as 0)."""
        m = self.spec.memory
        for w, p, t in zip(map(int, workers), np.asarray(prefixes), np.asarray(delivered_ms), strict=True):
            if not math.isfinite(float(t)) or (t <= 0 and p == 0):
                continue
            r = float(p) / max(float(t), MIN_DELIVERY_MS)  # all at once (unthrottled): very fast
            old = self.rates.get(w)
            self.rates[w] = r if old is None else (1.0 - m) * old + m * r
