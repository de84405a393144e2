"""Release schedule of one round: when the worker emits which part of its prefix.

HGO (Boubouh et al., SRDS 2022, §3 and §4.2) gives worker i a prefix of
``b_i = min(λ_i·τ / s_i, d)`` coordinates per round. On the wire that is a *release*
limit (docs/design.md §3): by time t into the round the worker never has more than
``throttle.released(t, λ_i, s_i, d)`` coordinates out. It may compute faster; a worker
whose real CPU is slower than λ_i emits less, which is real heterogeneity.

Chunking trades deadline granularity against throughput (docs/design.md §8: grpc.aio moves
50–80 MB/s in 4 KiB messages but 0.5–0.8 GB/s in 64 KiB–1 MiB ones). The schedule
therefore wakes

* whenever a full chunk (``max_chunk`` values) has become releasable,
* on a tick of ``clamp(τ/8, 5 ms, 50 ms)`` to send what has been released so far
  (spreads the load over the round instead of one burst at the deadline),
* once at the *flush* time ``τ - margin`` (margin ``clamp(τ/20, 1 ms, 5 ms)``) so that
  what is released just before the deadline still reaches the server in time, and
* when the whole cap has been released (``release_time_ms(cap)``).

After the local deadline τ the worker stops: the server closed the round by then (its
clock started earlier, when it broadcast the task), so anything later would only be
counted as late.

``hgo-worker --throttle off`` (issue 21, real constraints) drops the emulated rate: the
schedule is unthrottled, so each piece of the gradient is released as soon as it is
computed and the prefix by τ is what the device (e.g. under a CPU quota,
``hgo_lab.constraints``) really computes. :class:`RoundMeter` measures that rate, so λ is an
observation rather than an assumption.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hgo_common import throttle

MIN_TICK_MS = 5.0
MAX_TICK_MS = 50.0
INF_TICK_MS = 20.0  # tick for tau = inf (SGD(τ=∞)): only the granularity of progress
MIN_MARGIN_MS = 1.0
MAX_MARGIN_MS = 5.0
THROTTLE_MODES = ("on", "off")
UNTHROTTLED = 0.0  # the rate that means "no throttle" (hgo_common.throttle.is_unthrottled)


def throttle_rate(mode: str, rate: float | None, budget_policy: str = "fixed") -> float | None:
    """The ``--rate`` a worker runs with under ``--throttle MODE``.

    ``on``: ``rate`` unchanged (``None``: drawn from the profile). ``off``: unthrottled, so
    the release follows the real computation. ``off`` refuses an explicit rate (two
    contradicting sources of λ) and the adaptive budget policies (they size s_i and b_i
    from an assumed λ, which ``off`` is meant to stop assuming).

    Raises
    ------
    ValueError
        Naming the offending setting.
    """
    if mode not in THROTTLE_MODES:
        raise ValueError(f"--throttle must be one of {list(THROTTLE_MODES)}, got {mode!r}")
    if mode == "on":
        return rate
    if rate is not None:
        raise ValueError(
            f"--throttle off releases coordinates as fast as the device computes them; --rate {rate:g} "
            "asks for an emulated rate: give one or the other"
        )
    if budget_policy != "fixed":
        raise ValueError(
            f"--throttle off needs --budget-policy fixed: {budget_policy!r} plans the batch and the prefix "
            "from an assumed rate, which --throttle off does not have"
        )
    return UNTHROTTLED


def measured_rate(coords: int, elapsed_ms: float) -> float:
    """Coordinates per ms: ``coords / elapsed_ms`` (0 when nothing was delivered or no time passed)."""
    if coords < 0 or math.isnan(elapsed_ms) or elapsed_ms < 0:
        raise ValueError(f"need coords >= 0 and elapsed_ms >= 0, got {coords}, {elapsed_ms}")
    if coords == 0 or elapsed_ms == 0:
        return 0.0
    return coords / elapsed_ms


@dataclass
class RoundMeter:
    """What one round really computed and released, and when (ms since the task arrived).

    The release loop calls :meth:`on_compute` around each piece it computes and
    :meth:`on_release` when it queues chunks. ``release_rate`` is the delivered rate
    (coordinates per ms up to the last release); ``lam`` is the compute rate in λ's unit
    (partial derivatives per ms per data point: coordinates per ms of compute × s_i),
    directly comparable to a profile's λ.
    """

    batch_size: int
    computed: int = 0
    compute_ms: float = 0.0
    released: int = 0
    last_release_ms: float = 0.0

    def on_compute(self, coords: int, ms: float) -> None:
        """``coords`` new values took ``ms`` of wall time to compute."""
        self.computed += int(coords)
        self.compute_ms += max(0.0, float(ms))

    def on_release(self, upto: int, at_ms: float) -> None:
        """The prefix ``[0, upto)`` is out ``at_ms`` into the round."""
        if upto > self.released:
            self.released = int(upto)
            self.last_release_ms = float(at_ms)

    @property
    def release_rate(self) -> float:
        return measured_rate(self.released, self.last_release_ms)

    @property
    def compute_rate(self) -> float:
        return measured_rate(self.computed, self.compute_ms)

    @property
    def lam(self) -> float:
        return self.compute_rate * self.batch_size

    def as_dict(self) -> dict[str, float]:
        """The fields a round-log entry can carry: ``computed``, ``released``, ``compute_ms``,
        ``release_ms``, ``rate`` (coordinates per ms released) and ``lambda``."""
        return {
            "computed": self.computed,
            "released": self.released,
            "compute_ms": round(self.compute_ms, 3),
            "release_ms": round(self.last_release_ms, 3),
            "rate": self.release_rate,
            "lambda": self.lam,
        }


@dataclass(frozen=True)
class Schedule:
    """The release limit of one round.

    Parameters
    ----------
    rate : float
        λ_i in partial derivatives per ms per data point; ``<= 0`` or ``inf``: unthrottled.
    batch_size : int
        s_i (each coordinate costs ``batch_size`` partial derivatives).
    d : int
        Model dimension.
    tau_ms : float
        The round deadline in ms (``inf`` for SGD(τ=∞)).
    max_chunk : int
        The most values one chunk may carry (``TrainingSpec.max_chunk_values``).
    cap : int | None
        Never send more than this many coordinates in the round (a budget policy's
        coordinate count, or a Byzantine worker's planned prefix); ``None``: d.
    """

    rate: float
    batch_size: int
    d: int
    tau_ms: float
    max_chunk: int
    cap: int | None = None

    def __post_init__(self) -> None:
        if self.max_chunk < 1:
            raise ValueError(f"max_chunk must be >= 1, got {self.max_chunk}")
        if not self.tau_ms > 0:
            raise ValueError(f"tau_ms must be > 0 (or inf), got {self.tau_ms}")
        if self.cap is not None and not 0 <= self.cap <= self.d:
            raise ValueError(f"cap must be in [0, d={self.d}], got {self.cap}")
        throttle.released(0.0, self.rate, self.batch_size, self.d)  # validates rate/batch/d

    @property
    def limit(self) -> int:
        """The most coordinates the round can ever send: min(cap, d)."""
        return self.d if self.cap is None else self.cap

    @property
    def tick_ms(self) -> float:
        if math.isinf(self.tau_ms):
            return INF_TICK_MS
        return min(MAX_TICK_MS, max(MIN_TICK_MS, self.tau_ms / 8.0))

    @property
    def margin_ms(self) -> float:
        if math.isinf(self.tau_ms):
            return 0.0
        return min(MAX_MARGIN_MS, max(MIN_MARGIN_MS, self.tau_ms / 20.0))

    def allowed(self, elapsed_ms: float) -> int:
        """Coordinates that may be out ``elapsed_ms`` into the round (the throttle, capped)."""
        return min(self.limit, throttle.released(max(0.0, elapsed_ms), self.rate, self.batch_size, self.d))

    def expected(self) -> int:
        """The prefix this schedule reaches by the deadline (``limit`` for τ = ∞)."""
        return self.allowed(self.tau_ms)

    def finished(self, sent: int, elapsed_ms: float) -> bool:
        """True when nothing more is worth sending: all out, or the local deadline passed."""
        return sent >= self.limit or elapsed_ms >= self.tau_ms

    def next_wake_ms(self, sent: int, elapsed_ms: float) -> float | None:
        """When (ms into the round) to wake next to send, given ``sent`` values out.

        Returns ``None`` when the round is finished for this worker. The result is never
        earlier than ``elapsed_ms``.
        """
        if self.finished(sent, elapsed_ms):
            return None
        limit = self.limit
        s, r = self.batch_size, self.rate
        candidates = [
            throttle.release_time_ms(limit, r, s),
            throttle.release_time_ms(min(limit, sent + self.max_chunk), r, s),
            elapsed_ms + self.tick_ms,
        ]
        if not math.isinf(self.tau_ms):
            flush = self.tau_ms - self.margin_ms
            if flush > elapsed_ms:
                candidates.append(flush)
            else:
                # Past the flush point: one last wake at the deadline itself, then stop.
                candidates.append(self.tau_ms)
        return max(elapsed_ms, min(candidates))

    def chunks(self, sent: int, upto: int) -> list[tuple[int, int]]:
        """Split positions ``[sent, upto)`` into contiguous (offset, end) chunks of <= max_chunk."""
        return [(a, min(upto, a + self.max_chunk)) for a in range(sent, upto, self.max_chunk)]
