"""Prometheus metrics of one worker process (names in docs/operations.md, "Metrics").

Every ``hgo_worker_*`` metric carries a ``profile`` label; the served endpoint also holds
prometheus_client's process collector (``process_cpu_seconds_total``,
``process_resident_memory_bytes``, ...), because what a worker's hardware gives is the
point of HGO. Rates are in base units: ``hgo_worker_rate_per_second`` is λ_i in partial
derivatives per second per data point (the CLI's ``--rate`` is per millisecond,
docs/design.md §3).

prometheus_client is imported only when a metrics port is asked for, so a worker
without ``--metrics-port`` starts faster (docs/design.md §8), and each ``WorkerMetrics`` owns
its registry, so many sessions hosted in one process (bench/bench_network.py) do not collide.
"""

from __future__ import annotations

from typing import Any


class WorkerMetrics:
    """Counters and gauges of a worker; a no-op sink when ``enabled`` is False."""

    def __init__(self, profile: str, *, enabled: bool = False) -> None:
        self.profile = profile
        self.registry: Any = None
        self._m: dict[str, Any] = {}
        self._process = False
        if not enabled:
            return
        from prometheus_client import CollectorRegistry, Counter, Gauge

        reg = CollectorRegistry()
        self.registry = reg
        lab = ["profile"]
        self._m = {
            "rounds": Counter("hgo_worker_rounds", "Rounds served", lab, registry=reg),
            "computed": Counter(
                "hgo_worker_coordinates_computed", "Gradient coordinates computed", lab, registry=reg
            ),
            "sent": Counter("hgo_worker_coordinates_sent", "Gradient coordinates sent", lab, registry=reg),
            "rate": Gauge(
                "hgo_worker_rate_per_second",
                "lambda_i: partial derivatives per second per data point",
                lab,
                registry=reg,
            ),
            "reconnects": Counter(
                "hgo_worker_reconnects",
                "Sessions re-established after a lost one (successes, not attempts)",
                lab,
                registry=reg,
            ),
            "connected": Gauge("hgo_worker_connected", "1 while a session is open", lab, registry=reg),
        }
        for m in self._m.values():
            m.labels(profile=profile)  # export every series from the start, at 0

    def serve(self, port: int, addr: str = "127.0.0.1") -> int:
        """Expose /metrics on ``addr:port`` (0 picks a free port); returns the bound port.

        Loopback by default (a device's metrics are for its operator, ``--metrics-bind``
        widens it); at most ``hgo_common.metrics_http.MAX_CONNECTIONS`` connections are
        served at once, idle ones dropped after ``TIMEOUT_S``.
        """
        if self.registry is None:
            raise ValueError("metrics are disabled; create WorkerMetrics(enabled=True) to serve them")
        from prometheus_client import ProcessCollector

        from hgo_common import metrics_http

        if not self._process:
            # CPU seconds, resident memory, open fds: once per served endpoint (a fleet's
            # combined /metrics adds its own), not once per session
            ProcessCollector(registry=self.registry)
            self._process = True
        server = metrics_http.serve(self.registry, port, addr)
        return int(server.server_port)

    def _inc(self, key: str, amount: float = 1.0) -> None:
        m = self._m.get(key)
        if m is not None and amount:
            m.labels(profile=self.profile).inc(amount)

    def _set(self, key: str, value: float) -> None:
        m = self._m.get(key)
        if m is not None:
            m.labels(profile=self.profile).set(value)

    def round_served(self) -> None:
        self._inc("rounds")

    def computed(self, n: int) -> None:
        self._inc("computed", n)

    def sent(self, n: int) -> None:
        self._inc("sent", n)

    def rate(self, per_ms: float) -> None:
        """λ_i given per millisecond (the worker's unit); exported per second."""
        self._set("rate", per_ms * 1000.0)

    def reconnect(self) -> None:
        """A session was welcomed after an earlier one was lost."""
        self._inc("reconnects")

    def connected(self, up: bool) -> None:
        self._set("connected", 1.0 if up else 0.0)
