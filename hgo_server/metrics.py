"""Prometheus metrics of the parameter server (names in docs/operations.md, "Metrics").

One :class:`ServerMetrics` per server object, each on its own registry unless told
otherwise, so several in-process servers (the tests) never share counters. The CLI
registers on prometheus_client's default registry and serves it with
``hgo_common.metrics_http.serve`` (bounded connections) on ``--metrics-bind`` (default
``--bind``) : ``--metrics-port``.

The round-duration buckets are cut around the deadline τ (:func:`round_buckets`): a
round lasts about τ (a little more: the broadcast, the last chunks, the update) or less
(closed early when every sampled worker finished), so fixed decade buckets put every
round into one wide bucket and the dashboard's quantiles fall between its edges (at
τ = 100 ms the old 0.1 s / 0.25 s edges read p50 ≈ 175 ms for rounds of 102 ms).
"""

from __future__ import annotations

import math
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

# Aggregation durations, and rounds when τ is infinite: from sub-millisecond rounds in
# tests to minute-long sgd rounds with tau = inf.
_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Multiples of τ: coarse below (early closes), fine just above τ, where rounds that ran to
# the deadline end (τ plus the round's own overhead), coarse again for lagging rounds.
TAU_FACTORS = (
    0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.98, 1.0, 1.01, 1.02, 1.03, 1.05, 1.075, 1.1, 1.15,
    1.2, 1.3, 1.5, 2.0, 3.0, 5.0, 10.0,
)  # fmt: skip


def round_buckets(tau_ms: float | None, tau_min_ms: float | None = None) -> tuple[float, ...]:
    """Upper bounds (seconds) of the round-duration histogram for the deadline ``tau_ms``.

    ``TAU_FACTORS`` x τ, plus 1, 2.5 and 5 ms below them for sub-τ rounds of fast tests;
    :data:`_SECONDS` when τ is infinite or unknown. With ``--tau auto`` (``tau_min_ms`` given,
    ``tau_ms`` = ``--tau-max``) each round's deadline moves within [τ_min, τ_max]: edges
    spaced geometrically from τ_min / 2 to 1.25 τ_max, 6 % apart, or wider when 48 edges do
    not reach (12 % for the default 10 ms .. 1 s).
    """
    if tau_ms is None or not math.isfinite(tau_ms) or tau_ms <= 0:
        return _SECONDS
    if tau_min_ms is not None and 0 < tau_min_ms < tau_ms:
        lo, hi = tau_min_ms / 2000.0, tau_ms * 1.25 / 1000.0
        n = max(2, min(48, math.ceil(math.log(hi / lo) / math.log(1.06)) + 1))
        ratio = (hi / lo) ** (1.0 / (n - 1))
        auto = {round(lo * ratio**i, 9) for i in range(n)}
        auto |= {e for e in (0.001, 0.0025, 0.005) if e < lo}
        return tuple(sorted(auto))
    tau = tau_ms / 1000.0
    edges = {round(f * tau, 9) for f in TAU_FACTORS}
    edges |= {e for e in (0.001, 0.0025, 0.005) if e < TAU_FACTORS[0] * tau}
    return tuple(sorted(edges))


_COORDS = (0, 1, 10, 100, 1_000, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000)
_RATES = (0.1, 1.0, 10.0, 100.0, 1_000.0, 10_000.0, 100_000.0, 1_000_000.0)  # coordinates per ms


RUN_LABELS = ("rule", "f", "q", "tau", "dataset", "algorithm", "model", "seed", "rounds")


def run_labels(cfg: Any, model: str) -> dict[str, str]:
    """The ``hgo_run_info`` labels of a ServerConfig (τ in ms, ``inf`` when infinite)."""
    tau = "inf" if math.isinf(cfg.tau_ms) else f"{cfg.tau_ms:g}ms"
    if getattr(cfg, "tau_auto", False):
        tau = f"auto:{cfg.tau_min:g}ms-{cfg.tau_max:g}ms"
    return {
        "rule": str(cfg.rule), "f": str(cfg.f), "q": str(cfg.q), "tau": tau, "dataset": str(cfg.dataset),
        "algorithm": str(cfg.algorithm), "model": model, "seed": str(cfg.seed), "rounds": str(cfg.rounds),
    }  # fmt: skip


class ServerMetrics:
    """The server's metric objects, registered on ``registry``."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        tau_ms: float | None = None,
        tau_min_ms: float | None = None,
    ) -> None:
        r = CollectorRegistry() if registry is None else registry
        self.registry = r
        self.round_buckets = round_buckets(tau_ms, tau_min_ms)
        self.rounds = Counter("hgo_rounds", "Rounds closed", registry=r)
        self.rounds_without_quorum = Counter(
            "hgo_rounds_without_quorum", "Rounds closed without a quorum (model unchanged)", registry=r
        )
        self.round_duration = Histogram(
            "hgo_round_duration_seconds", "Wall time of a round, set-up to model update (buckets around tau)",
            buckets=self.round_buckets,
            registry=r,
        )  # fmt: skip
        self.round = Gauge("hgo_round", "Current round k", registry=r)
        self.tau = Gauge("hgo_tau_seconds", "Round deadline tau (+Inf for sgd with tau = inf)", registry=r)
        self.block = Gauge("hgo_block_coordinates", "Block size b_v of the last round", registry=r)
        self.prefix = Histogram(
            "hgo_prefix_coordinates", "Prefix length each sampled worker delivered", ["profile"],
            buckets=_COORDS, registry=r,
        )  # fmt: skip
        self.sampled = Gauge("hgo_sampled_workers", "Workers sampled in the last round", registry=r)
        self.responded = Gauge("hgo_responded_workers", "Sampled workers with a non-empty prefix", registry=r)
        self.late_chunks = Counter(
            "hgo_late_chunks", "Chunks that arrived after their round closed", registry=r
        )
        self.rejected = Counter(
            "hgo_rejected_messages", "Worker messages rejected, by reason", ["reason"], registry=r
        )
        self.active_sessions = Gauge("hgo_active_sessions", "Active worker sessions", ["profile"], registry=r)
        self.test_accuracy = Gauge(
            "hgo_test_accuracy", "Accuracy on the test split (last evaluation)", registry=r
        )
        self.test_loss = Gauge("hgo_test_loss", "Loss on the test split (last evaluation)", registry=r)
        self.aggregation = Histogram(
            "hgo_aggregation_seconds", "Time to aggregate a closed round", buckets=_SECONDS, registry=r
        )
        self.received_bytes = Counter("hgo_received_bytes", "Bytes of worker messages received", registry=r)
        self.sent_bytes = Counter("hgo_sent_bytes", "Bytes of server messages sent", registry=r)
        self.run = Gauge(
            "hgo_run_info", "The run's settings as labels (value 1)", list(RUN_LABELS), registry=r
        )
        self.bounded_rows = Counter(
            "hgo_bounded_rows", "Rows the row bound (--row-bound) clipped before aggregation", registry=r
        )
        self.refused_updates = Counter(
            "hgo_refused_updates", "Updates refused because w would become non-finite in float32", registry=r
        )
        self.rate_limited = Counter(
            "hgo_rate_limited",
            "Times a session's stream was paused by its rate limit, by kind",
            ["kind"],
            registry=r,
        )
        # Issue 21: federated evaluation (claims of the workers, never acted on) and measured rates.
        self.federated = Gauge(
            "hgo_federated_metric",
            "Federated evaluation of the last evaluation round: workers' self-reported metric, by statistic "
            "(mean: example-weighted, weights bounded; median: of the per-device values, the robust one)",
            ["metric", "stat"], registry=r,
        )  # fmt: skip
        self.federated_reports = Gauge(
            "hgo_federated_reports", "Evaluation reports accepted in the last evaluation round", registry=r
        )
        self.observed_rate = Histogram(
            "hgo_observed_rate_coords_per_ms",
            "Rate the server observed per sampled worker: prefix / ms from the task sent to its last chunk",
            ["profile"], buckets=_RATES, registry=r,
        )  # fmt: skip
        self.reported_rate = Histogram(
            "hgo_self_reported_rate_coords_per_ms",
            "Release rate a worker reported for a round (self-reported: a claim)",
            ["profile"], buckets=_RATES, registry=r,
        )  # fmt: skip

    def set_run_info(self, cfg: Any, *, model: str) -> None:
        """Export ``hgo_run_info{rule, f, q, tau, dataset, algorithm, model, ...} 1`` for ``cfg``."""
        self.run.clear()
        self.run.labels(**run_labels(cfg, model)).set(1)

    @classmethod
    def default(cls, tau_ms: float | None = None, tau_min_ms: float | None = None) -> ServerMetrics:
        """Metrics on prometheus_client's global registry (one per process: the CLI)."""
        return cls(REGISTRY, tau_ms=tau_ms, tau_min_ms=tau_min_ms)

    @classmethod
    def for_config(cls, cfg: Any, registry: CollectorRegistry | None = None) -> ServerMetrics:
        """Metrics with round buckets for ``cfg``'s τ (or its ``--tau auto`` range)."""
        tau_min = cfg.tau_min if getattr(cfg, "tau_auto", False) else None
        return cls(registry, tau_ms=cfg.tau_ms, tau_min_ms=tau_min)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        """Expose /metrics on ``port`` (a daemon thread; connections bounded, hgo_common.metrics_http)."""
        from hgo_common import metrics_http

        metrics_http.serve(self.registry, port, addr)
