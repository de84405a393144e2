"""Prometheus metrics of one worker process (names fixed in docs/protocol.md).

Every metric carries a ``profile`` label. prometheus_client is imported only when a
metrics port is asked for, so a worker without ``--metrics-port`` starts faster
(docs/design.md §8), and each ``WorkerMetrics`` owns its registry, so many sessions hosted
in one process (bench/bench_network.py) do not collide.
"""

from __future__ import annotations

from typing import Any


class WorkerMetrics:
    """Counters and gauges of a worker; a no-op sink when ``enabled`` is False."""

    def __init__(self, profile: str, *, enabled: bool = False) -> None:
        self.profile = profile
        self.registry: Any = None
        self._m: dict[str, Any] = {}
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
                "hgo_worker_rate", "lambda_i: partial derivatives per ms per point", lab, registry=reg
            ),
            "reconnects": Counter("hgo_worker_reconnects", "Reconnections to the server", lab, registry=reg),
            "connected": Gauge("hgo_worker_connected", "1 while a session is open", lab, registry=reg),
        }
        for m in self._m.values():
            m.labels(profile=profile)  # export every series from the start, at 0

    def serve(self, port: int, addr: str = "0.0.0.0") -> int:
        """Expose /metrics on ``port`` (0 picks a free one); returns the bound port."""
        if self.registry is None:
            raise ValueError("metrics are disabled; create WorkerMetrics(enabled=True) to serve them")
        from prometheus_client import start_http_server

        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
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

    def rate(self, value: float) -> None:
        self._set("rate", value)

    def reconnect(self) -> None:
        self._inc("reconnects")

    def connected(self, up: bool) -> None:
        self._set("connected", 1.0 if up else 0.0)
