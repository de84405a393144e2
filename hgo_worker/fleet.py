"""Many device sessions in one process: ``hgo-worker --sessions K`` and ``--fleet FILE``.

A real deployment runs one worker per device (the default, and the container's). A lab
that emulates a fleet of n devices on a few hosts cannot afford n interpreters (each
40-135 MiB and about a second to start), so one process may host several independent
:class:`~hgo_worker.client.Worker` identities on one event loop. Each has its own
session, profile draw of λ_i, seed (so its own mini-batch stream), shard, throttle clock
and reconnects; nothing is shared but the loop and the process.

``--sessions K`` makes K copies of the command line's worker with seeds ``seed + j`` (or
K random seeds) and names ``NAME-j``; each draws its own rate from ``--profile``.
``--fleet FILE`` reads a JSON file ``{"sessions": [{...}, ...]}`` whose objects override
the command line's settings for one session each (keys: :data:`FLEET_KEYS`); ``hgo-run``
writes one per worker process.

Metrics: each session keeps its own :class:`~hgo_worker.metrics.WorkerMetrics`; with
``--metrics-port`` one endpoint serves them all, every sample labelled with its session's
``device`` name (:class:`FleetCollector`).

The exit code is the worst of the sessions': 3 (rejected) over 2 (local data) over 1
(gave up) over 0 (done).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from hgo_common.errors import SpecError

from .client import EXIT_DONE, EXIT_GAVE_UP, EXIT_LOCAL_DATA, EXIT_REJECTED, Worker, WorkerConfig
from .metrics import WorkerMetrics

FLEET_KEYS = (
    "profile", "rate", "seed", "name", "attack", "byzantine", "attack_params", "batch_size", "token", "shard",
    "budget_policy", "rho", "allow_plugins", "data", "data_format", "label_column", "scaling",
)  # fmt: skip
MAX_SESSIONS = 10_000
_SEVERITY = {EXIT_DONE: 0, EXIT_GAVE_UP: 1, EXIT_LOCAL_DATA: 2, EXIT_REJECTED: 3}


class FleetError(SpecError):
    """A bad ``--sessions`` / ``--fleet`` setting; the message names the file, entry and key."""


def replicate(base: WorkerConfig, k: int) -> list[WorkerConfig]:
    """``--sessions K``: K configs of ``base`` with seeds ``seed + j`` and names ``name-j``."""
    if not 1 <= k <= MAX_SESSIONS:
        raise FleetError(f"--sessions must be in 1..{MAX_SESSIONS}, got {k}")
    if k == 1:
        return [base]
    out = []
    for j in range(k):
        seed = None if base.seed is None else (base.seed + j) % 2**32
        name = f"{base.name}-{j}" if base.name else ""
        out.append(dataclasses.replace(base, seed=seed, name=name))
    return out


def load_fleet(path: Path, base: WorkerConfig) -> list[WorkerConfig]:
    """``--fleet FILE``: one config per entry of the file's ``sessions`` list, over ``base``."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise FleetError(f"--fleet {str(path)!r}: cannot read ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FleetError(f"--fleet {str(path)!r}: not a JSON file ({exc})") from None
    entries = doc.get("sessions") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        shape = '{"sessions": [{...}, ...]}'
        raise FleetError(f"--fleet {str(path)!r}: expected {shape} with at least one entry")
    if len(entries) > MAX_SESSIONS:
        raise FleetError(f"--fleet {str(path)!r}: {len(entries)} sessions, at most {MAX_SESSIONS}")
    out = []
    for i, entry in enumerate(entries):
        where = f"--fleet {str(path)!r}, session {i}"
        if not isinstance(entry, dict):
            raise FleetError(f"{where}: expected an object, got {type(entry).__name__}")
        unknown = sorted(set(entry) - set(FLEET_KEYS))
        if unknown:
            raise FleetError(f"{where}: unknown key {unknown[0]!r}; known: {list(FLEET_KEYS)}")
        allow = entry.get("allow_plugins", [])
        if not isinstance(allow, list) or not all(isinstance(a, str) for a in allow):
            raise FleetError(f"{where}: allow_plugins must be a list of plug-in names, got {allow!r}")
        if "attack" in entry:  # the attack's name ("byzantine" is its old spelling)
            entry = {**{k: v for k, v in entry.items() if k != "attack"}, "byzantine": entry["attack"]}
        if isinstance(entry.get("data"), str):  # the device's own files (hgo-worker --data)
            entry = {**entry, "data": Path(entry["data"])}
        if "allow_plugins" in entry:  # the session's own list, added to the command line's --allow-plugin
            entry = {**entry, "allow_plugins": (*base.allow_plugins, *allow)}
        try:
            cfg = dataclasses.replace(base, **entry)
            if "rate" in entry and "profile" not in entry and base.profile == "average":
                cfg = dataclasses.replace(cfg, profile="custom")
            cfg.validate()
        except (TypeError, ValueError) as exc:
            raise FleetError(f"{where}: {exc}") from None
        out.append(cfg)
    return out


def write_fleet(path: Path, sessions: Sequence[dict[str, Any]]) -> Path:
    """Write a ``--fleet`` file (what ``hgo-run`` gives each worker process)."""
    path.write_text(json.dumps({"sessions": list(sessions)}, indent=1) + "\n", encoding="utf-8")
    return path


class FleetCollector:
    """One Prometheus collector over many sessions' registries, labelled by ``device``.

    Families of the same name from different sessions merge into one family, each sample
    gaining the ``device`` label of its session.
    """

    def __init__(self, members: Iterable[tuple[str, Any]]) -> None:
        self.members = list(members)  # (device name, CollectorRegistry)

    def collect(self) -> Iterator[Any]:
        from prometheus_client.metrics_core import Metric

        merged: dict[str, Any] = {}
        for device, registry in self.members:
            for family in registry.collect():
                out = merged.get(family.name)
                if out is None:
                    out = merged[family.name] = Metric(family.name, family.documentation, family.type)
                for sample in family.samples:
                    out.samples.append(sample._replace(labels={**sample.labels, "device": device}))
        yield from merged.values()


def serve_metrics(workers: Sequence[Worker], port: int, addr: str = "0.0.0.0") -> int:
    """Serve every session's metrics on one ``/metrics``; returns the bound port."""
    from prometheus_client import CollectorRegistry, ProcessCollector

    from hgo_common import metrics_http

    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector((w.name, w.metrics.registry) for w in workers))
    ProcessCollector(registry=registry)  # the one process hosting every session
    server = metrics_http.serve(registry, port, addr)  # bounded connections (issue 20)
    return int(server.server_port)


def build(cfgs: Sequence[WorkerConfig], *, metrics: bool) -> list[Worker]:
    """One Worker per config, each with its own metrics (enabled when ``metrics``)."""
    workers = []
    for j, cfg in enumerate(cfgs):
        w = Worker(cfg, metrics=WorkerMetrics(cfg.profile, enabled=metrics))
        if len(cfgs) > 1 and not cfg.name:
            w.name = f"{w.name}-{j}"  # host-pid-j: distinct in the server's logs and in metrics
        workers.append(w)
    return workers


async def run(workers: Sequence[Worker]) -> int:
    """Serve with every session until each has ended; the worst exit code."""
    codes = await asyncio.gather(*(w.run() for w in workers))
    return max(codes, key=lambda c: _SEVERITY.get(c, 4))
