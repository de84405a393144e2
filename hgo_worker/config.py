"""What ``hgo-worker`` is told on its command line (:class:`WorkerConfig`, see
hgo_worker.cli), checked before anything connects, and the warnings about it."""

from __future__ import annotations

import ipaddress
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hgo_common import profiles
from hgo_common.spec.run import Compute

from . import checks
from .byzantine import parse_behaviour

log = logging.getLogger("hgo_worker")


@dataclass
class WorkerConfig:
    """Everything ``hgo-worker`` is told on its command line (see hgo_worker.cli)."""

    server: str
    profile: str = "average"
    rate: float | None = None  # None: drawn from the profile; 0: unthrottled
    batch_size: int = 32
    byzantine: str | None = None
    attack_params: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    token: str | None = None
    shard: str = "auto"
    data_dir: Path | None = None
    metrics_port: int | None = None
    budget_policy: str = "fixed"
    rho: float = 0.5  # the hybrid budget policy's interpolation (0 = coordinates-first, 1 = data-first)
    name: str = ""
    reconnect_timeout: float = 60.0
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_server_name: str | None = None  # the name checked in the server's certificate
    # Plug-ins (models, datasets) a server's spec may name: compared as given, entry-point
    # names or package.module:Name references. Built-ins are always allowed.
    allow_plugins: tuple[str, ...] = ()
    max_shard_mb: int = checks.DEFAULT_MAX_SHARD_MB
    # --data: the device's own files (hgo_worker.localdata); the server sends no shard
    data: Path | None = None
    data_format: str = "auto"
    label_column: str | None = None
    scaling: str = "auto"

    def validate(self) -> None:
        """Raise ValueError naming the first bad value."""
        host, sep, port = self.server.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"--server must be HOST:PORT with a port in 1..65535, got {self.server!r}")
        if self.profile not in (*profiles.PROFILES, "custom"):
            raise ValueError(
                f"--profile must be one of {sorted(profiles.PROFILES)} or 'custom', got {self.profile!r}"
            )
        if self.profile == "custom" and self.rate is None:
            raise ValueError("--profile custom needs an explicit --rate")
        if self.rate is not None and (math.isnan(self.rate) or self.rate < 0):
            raise ValueError(f"--rate must be >= 0 (0 = unthrottled), got {self.rate}")
        Compute(self.batch_size, self.budget_policy, self.rho).checked()  # declared in hgo_common.spec
        if not self.reconnect_timeout >= 0:
            raise ValueError(f"--reconnect-timeout must be >= 0 seconds, got {self.reconnect_timeout}")
        parse_shard(self.shard)
        if self.metrics_port is not None and not 0 <= self.metrics_port < 65536:
            raise ValueError(f"--metrics-port must be in 0..65535, got {self.metrics_port}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together (mutual TLS)")
        if self.tls_server_name is not None:
            if self.tls_ca is None and self.tls_cert is None:
                raise ValueError("--tls-server-name needs TLS (--tls-ca, or --tls-cert/--tls-key)")
            name = self.tls_server_name
            if not name or any(c.isspace() for c in name) or ":" in name:
                raise ValueError(f"--tls-server-name must be a host name (no port, no spaces), got {name!r}")
        for name in self.allow_plugins:
            if not isinstance(name, str) or not name.strip() or any(c.isspace() for c in name):
                raise ValueError(f"--allow-plugin must be a plug-in name or module:Name, got {name!r}")
        if not 1 <= self.max_shard_mb <= 1 << 20:
            raise ValueError(f"--max-shard-mb must be in [1, {1 << 20}] MiB, got {self.max_shard_mb}")
        if self.byzantine is not None:
            parse_behaviour(self.byzantine, self.attack_params)
        if self.data is not None and self.shard != "auto":
            raise ValueError(f"--data (the device's own files) and --shard {self.shard} exclude each other")


def parse_shard(text: str) -> tuple[int, int] | None:
    """``"auto"`` -> None; ``"i/n"`` -> (i, n) with 0 <= i < n."""
    if text == "auto":
        return None
    i, sep, n = text.partition("/")
    if sep and i.isdigit() and n.isdigit() and 0 <= int(i) < int(n):
        return int(i), int(n)
    raise ValueError(f"--shard must be 'auto' or 'i/n' with 0 <= i < n, got {text!r}")


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1); names are not resolved."""
    host = host.strip().strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere


def plaintext_warning(server: str, tls: bool) -> str | None:
    """The warning a worker logs before connecting to ``server`` (HOST:PORT); None if none is due.

    Without TLS, anyone on the path between worker and server can read the token and
    the data and can stand in for the server; on loopback there is no such path.
    """
    host = server.rpartition(":")[0]
    if tls or is_loopback(host):
        return None
    return (
        f"PLAINTEXT: connecting to {server} without TLS: anyone on the network path can read the "
        "bearer token and the data shard, and can pose as the server (it can only name built-in or "
        "--allow-plugin models and datasets). Use --tls-ca FILE (docs/operations.md)"
    )


_WARNED_PLAINTEXT: set[str] = set()


def warn_plaintext_once(server: str, tls: bool) -> bool:
    """Log :func:`plaintext_warning` for ``server`` once per process (a fleet shares it); True if logged."""
    warning = plaintext_warning(server, tls)
    if warning is None or server in _WARNED_PLAINTEXT:
        return False
    _WARNED_PLAINTEXT.add(server)
    log.warning("%s", warning)
    return True


def resolve_rate(cfg: WorkerConfig, rng: np.random.Generator) -> float:
    """λ_i: ``--rate`` when given, else a draw from the profile's distribution."""
    if cfg.rate is not None:
        return float(cfg.rate)
    return float(profiles.draw_rate(cfg.profile, rng))
