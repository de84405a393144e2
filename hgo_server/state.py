"""The state the parts of :class:`hgo_server.server.Server` share, and its two lifecycles.

The server is one object assembled from three parts, one concern per module
(paper §3, Algorithm 1 on the wall clock):

* ``hgo_server.admission`` — identities, Join/Leave, shards, heartbeats, eviction;
* ``hgo_server.roundloop`` — the run and each round: broadcast, collect until τ, close;
* ``hgo_server.persistence`` — checkpoints, ``--resume`` and ``--export``.

:class:`ServerState` declares, once, the attributes and cross-part methods every part
may use (for the type checker; ``Server.__init__`` sets them). The lifecycle that used to
be spread over seven interacting flags is two explicit states:

* :class:`Phase` — the run: ``waiting`` → ``training`` → ``done``, or ``stopping``
  from either of the first two once a stop was requested (SIGTERM, ``request_stop``);
  a stop never leaves ``done``. ``Server.stopping`` is ``phase in (stopping, done)``.
* :class:`Collection` — the open round's collection: ``open`` from the broadcast until
  it closes; then ``deadline`` (its timer fired), ``target`` (``--tau auto``'s block
  target was met) or ``idle`` (early close, a stop, or no round yet). Chunks are stored
  only while ``open``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from enum import StrEnum
from types import ModuleType
from typing import Any

import numpy as np

from hgo_common import collector
from hgo_common.driver import RoundDriver
from hgo_common.roundlog import RoundLog

from .config import ServerConfig
from .messages import ShardSlice, Spec
from .metrics import ServerMetrics
from .sessions import SessionRecord, TokenBucket
from .setup import Setup


class Phase(StrEnum):
    """Where the run is (reported by ``Status`` and the health service)."""

    WAITING = "waiting"
    TRAINING = "training"
    STOPPING = "stopping"
    DONE = "done"


class Collection(StrEnum):
    """The state of the current round's collection (see the module docstring)."""

    IDLE = "idle"
    OPEN = "open"
    DEADLINE = "deadline"
    TARGET = "target"


class ServerState:
    """Attributes and cross-part methods shared by the parts of the server (declarations only)."""

    cfg: ServerConfig
    metrics: ServerMetrics
    setup: Setup
    spec: Spec
    d: int
    driver: RoundDriver
    secret_seed: int  # the driver's streams; never on the wire
    collector: collector.RoundCollector
    roundlog: RoundLog
    sessions: dict[str, SessionRecord]
    phase: Phase
    collection: Collection
    round: int
    start_round: int
    last_eval: dict[str, float]
    metric_name: str
    # admission
    by_identity: dict[str, SessionRecord]
    known_identities: dict[str, int]
    shard_map: dict[str, int]
    f_enforceable: bool
    session_msg_rate: float
    session_byte_rate: float
    _join_buckets: dict[str, TokenBucket]
    _peer_sessions: dict[str, int]
    _pending: dict[str, int]
    _next_worker_id: int
    _shard_cache: dict[int, list[ShardSlice]]
    _shard_holders: np.ndarray
    # the round loop
    _changed: asyncio.Event
    _wake: asyncio.Event
    _executor: concurrent.futures.ThreadPoolExecutor
    _t_start: float
    _t_deadline: float
    _last_chunk: np.ndarray
    _evaluated_round: int
    _checkpointed: int
    _heap_frozen: bool = False  # gc.freeze() was called (RoundLoop._freeze_heap)
    # persistence
    _checkpoint: ModuleType | None

    @property
    def stopping(self) -> bool:
        """Whether a stop was requested or the run is over (no new round starts)."""
        return self.phase in (Phase.STOPPING, Phase.DONE)

    @property
    def weights(self) -> np.ndarray:
        """The current model w_k, shape (d,), float64 (a copy)."""
        return self.driver.w.copy()

    def reject(self, reason: str) -> None:
        """Count one rejected message (also used by the transport for its own checks)."""
        self.metrics.rejected.labels(reason=reason).inc()

    # Implemented by one part, used by another.
    def leave(self, sess: SessionRecord, reason: str = "left", error: Any = None) -> None:
        raise NotImplementedError

    def _maybe_wake(self) -> None:
        raise NotImplementedError

    def account_round(self, sampled: list[SessionRecord], prefixes: np.ndarray) -> None:
        raise NotImplementedError

    @property
    def eval_share(self) -> float:  # hgo_server.fedeval.Reports
        raise NotImplementedError

    def federated_round(self, k: int) -> bool:
        raise NotImplementedError

    def ask_evaluation(self, k: int, sampled: list[SessionRecord]) -> None:
        raise NotImplementedError

    def federated_record(self, k: int) -> dict[str, Any] | None:
        raise NotImplementedError

    def rates_record(
        self, k: int, sampled: list[SessionRecord], prefixes: np.ndarray, delivered_ms: np.ndarray,
        record: dict[str, Any],
    ) -> None:
        raise NotImplementedError

    async def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        raise NotImplementedError

    async def _save_checkpoint(self, next_round: int) -> None:
        raise NotImplementedError

    async def export_model(self, k: int, *, completed: bool) -> Any:
        raise NotImplementedError
