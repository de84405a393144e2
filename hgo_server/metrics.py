"""Prometheus metrics of the parameter server (names fixed by docs/protocol.md).

One :class:`ServerMetrics` per server object, each on its own registry unless told
otherwise, so several in-process servers (the tests) never share counters. The CLI
registers on prometheus_client's default registry and serves it with
``start_http_server`` on ``--metrics-port``.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# Round and aggregation durations: from sub-millisecond rounds in tests to minute-long
# sgd rounds with tau = inf.
_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_COORDS = (0, 1, 10, 100, 1_000, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000)


class ServerMetrics:
    """The server's metric objects, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = CollectorRegistry() if registry is None else registry
        self.registry = r
        self.rounds = Counter("hgo_rounds", "Rounds closed", registry=r)
        self.rounds_without_quorum = Counter(
            "hgo_rounds_without_quorum", "Rounds closed without a quorum (model unchanged)", registry=r
        )
        self.round_duration = Histogram(
            "hgo_round_duration_seconds", "Wall time from task broadcast to model update", buckets=_SECONDS,
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

    @classmethod
    def default(cls) -> ServerMetrics:
        """Metrics on prometheus_client's global registry (one per process: the CLI)."""
        return cls(REGISTRY)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        """Expose /metrics on ``port`` (a daemon thread of prometheus_client)."""
        start_http_server(port, addr=addr, registry=self.registry)
