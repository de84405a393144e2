"""The HGO parameter server: sessions and the round loop (paper §3, Algorithm 1), transport-free.

These modules know nothing about gRPC or protobuf. Each connected worker is a
:class:`~hgo_server.sessions.SessionRecord` with a bounded, coalescing outbox of plain
message dataclasses (``hgo_server.messages``); ``hgo_server.servicer`` turns those into
protobuf on the wire and turns wire messages into calls of :meth:`Server.join`,
:meth:`Server.on_chunk`, :meth:`Server.on_heartbeat` and :meth:`Server.leave`. Protocol
violations raise ``hgo_server.errors``; the servicer maps each to one gRPC status code.

:class:`Server` is assembled from one part per concern (``hgo_server.state`` draws the
layout and the two lifecycle states):

* ``hgo_server.admission`` — identities, Join/Leave, shards, heartbeats, eviction;
* ``hgo_server.roundloop`` — the run and each round on the wall clock (the round itself
  is ``hgo_common.driver.RoundDriver``, shared with the simulator);
* ``hgo_server.persistence`` — checkpoints, ``--resume`` and ``--export``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import math
import secrets
import time

import numpy as np

from hgo_common import collector, driver
from hgo_common.driver import RoundDriver
from hgo_common.roundlog import RoundLog
from hgo_common.spec import driver_settings

from . import checkpoint
from .admission import HEARTBEAT_BATCH, JOIN_BURST, KNOWN_PROFILES, Admission
from .config import ConfigError, ServerConfig
from .fedeval import Reports
from .messages import Outgoing, ShardSlice, StatusInfo, Task
from .metrics import ServerMetrics
from .persistence import Persistence
from .roundloop import RoundLoop
from .sessions import SessionRecord
from .setup import Setup, load_setup
from .state import Collection, Phase

__all__ = ["HEARTBEAT_BATCH", "JOIN_BURST", "KNOWN_PROFILES", "Collection", "Phase", "Server"]


class Server(Admission, RoundLoop, Persistence, Reports):
    """Sessions, the round loop and the model; one instance per training run.

    Parameters
    ----------
    cfg : ServerConfig
        A resolved config (``hgo_server.config.resolve``).
    metrics : ServerMetrics, optional
        Defaults to metrics on a private registry.
    setup : Setup, optional
        Preloaded data and model (tests reuse one); default ``load_setup(cfg)``.
    """

    def __init__(
        self, cfg: ServerConfig, *, metrics: ServerMetrics | None = None, setup: Setup | None = None
    ):
        self.cfg = cfg
        self.metrics = metrics or ServerMetrics()
        self.setup = setup or load_setup(cfg)
        self.spec = self.setup.spec
        self.d = self.spec.dim
        # The driver's streams (who is sampled, C_k, aggregation randomness) come from a seed
        # the workers never see (issue 20): --secret-seed, or drawn now; it is written to the
        # round log's first record and to every checkpoint, never to the wire.
        self.secret_seed = cfg.secret_seed if cfg.secret_seed is not None else secrets.randbits(32)
        settings = driver_settings(cfg, self.setup.run, cfg.q_for(), self.secret_seed)
        self.driver = RoundDriver(settings, self.setup.w0)
        self.collector = collector.RoundCollector(self.d, cfg.max_chunk_values)
        self.sessions: dict[str, SessionRecord] = {}
        self.phase = Phase.WAITING
        self.collection = Collection.IDLE
        self.round = 0
        self.start_round = 0
        self.last_eval: dict[str, float] = {}
        self.metric_name = driver.metric_name(self.setup.model)
        self._next_worker_id = 0
        self._shard_cache: dict[int, list[ShardSlice]] = {}
        # Active sessions per shard, kept up to date on join/leave (O(1) per join).
        self._shard_holders = np.zeros(self.spec.num_shards, dtype=np.int64)
        self._init_identities()
        self._init_reports()
        self._changed = asyncio.Event()
        self._wake = asyncio.Event()
        self._t_start = time.monotonic()
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="hgo-agg")
        self._t_deadline = 0.0  # when the timer (or --tau auto's target) closed the collection
        self._last_chunk = np.zeros(0)  # per slot: monotonic time of its last accepted chunk
        self._evaluated_round = -1
        self._checkpointed = -1
        try:
            self.roundlog = RoundLog(cfg.log)
        except OSError as exc:
            self._executor.shutdown(wait=False)
            why = exc.strerror or exc
            raise ConfigError(f"--log {cfg.log!r}: cannot create the round log ({why})") from None
        self.metrics.tau.set(cfg.tau_ms / 1000.0)
        self._checkpoint = checkpoint if cfg.checkpoint_dir else None
        if cfg.resume:
            self._resume()

    # ------------------------------------------------------------------ accessors

    @property
    def state(self) -> str:
        """The run's :class:`~hgo_server.state.Phase` as its string (``Status``, health)."""
        return str(self.phase)

    @state.setter
    def state(self, value: str) -> None:
        self.phase = Phase(value)

    @property
    def last_block(self) -> int:
        """b_v of the last closed round (0 without quorum)."""
        return self.driver.last_block

    @property
    def rounds_without_quorum(self) -> int:
        """Rounds so far that did not update the model (too few rows for the quorum)."""
        return self.driver.rounds_without_quorum

    def status(self) -> StatusInfo:
        """What the ``Status`` call reports about the run."""
        return StatusInfo(
            state=self.state,
            round=self.round,
            active_sessions=len(self.sessions),
            dim=self.d,
            rule=self.cfg.rule,
            algorithm=self.cfg.algorithm,
            last_metric=self.last_eval.get(self.metric_name, math.nan),
            # "none": no test split to evaluate on (--dataset none without --test-data)
            metric_name=self.metric_name if self.setup.evaluates else "none",
            last_block=self.last_block,
            rounds_without_quorum=self.rounds_without_quorum,
        )

    def outdated(self, msg: Outgoing) -> bool:
        """True for a queued Task whose round is over: a worker that reads slower than the
        rounds go skips it, so its outbox stays bounded (one Task per round at most)."""
        return isinstance(msg, Task) and msg.round < self.round

    def close(self) -> None:
        """Release the aggregation thread and the log (after :meth:`run`)."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.roundlog.close()
        if self._heap_frozen:
            self._heap_frozen = False
            gc.unfreeze()
