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
