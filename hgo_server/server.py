"""The HGO parameter server: sessions and the round loop (paper §3, Algorithm 1), transport-free.

This module knows nothing about gRPC or protobuf. Each connected worker is a
:class:`~hgo_server.sessions.SessionRecord` with a bounded, coalescing outbox of plain
message dataclasses (``hgo_server.messages``); ``hgo_server.servicer`` turns those into
protobuf on the wire and turns wire messages into calls of :meth:`Server.join`,
:meth:`Server.on_chunk`, :meth:`Server.on_heartbeat` and :meth:`Server.leave`. Protocol
violations raise ``hgo_server.errors``; the servicer maps each to one gRPC status code.

The round itself — sample, C_k, close, update, record, the quorum and the evaluation
schedule — is ``hgo_common.driver.RoundDriver``, the same code the simulator drives on
a virtual clock. This module adds the wall clock and the network:

1. the driver samples the round's sessions and derives C_k's seed (the seed travels;
   the permutation is expanded in the aggregation thread while the round runs);
2. w_k is encoded to float32 bytes once; the same :class:`~hgo_server.messages.Task`
   goes to every sampled session's outbox (the servicer also serializes it once);
3. chunks go into the preallocated (q x d) buffer of ``hgo_common.collector``;
4. the round closes at the deadline tau, counted from the moment the task is queued on
   every sampled stream (the timer's callback closes the collector itself), or earlier
   when every sampled worker is finished and early close is on. With tau = inf the
   round waits for every sampled worker, bounded by ``--sgd-timeout``;
5. ``RoundClosed`` to the sampled workers; the driver closes the round (Algorithm 1
   steps 4-6) in a single worker thread, so the event loop keeps serving heartbeats and
   late chunks meanwhile, and builds the round-log record.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import hashlib
import logging
import math
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from hgo_common import collector, driver, profiles, rounds, wire
from hgo_common.driver import RoundDriver, RoundPlan, Timing, WorkerEntry
from hgo_common.net.protocol import PROTOCOL_VERSION
from hgo_common.roundlog import RoundLog
from hgo_common.spec import driver_settings

from . import checkpoint
from .config import ConfigError, ServerConfig
from .errors import (
    Aborted,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    ProtocolError,
    ResourceExhausted,
)
from .logsafe import RateLimitedLog, escape
from .messages import (
    Beat,
    Closed,
    End,
    JoinRequest,
    Outgoing,
    ShardSlice,
    StatusInfo,
    Stop,
    Summary,
    Task,
    Welcome,
)
from .metrics import ServerMetrics
from .sessions import SessionRecord, TokenBucket
from .setup import Setup, load_setup, shard_slices

log = logging.getLogger("hgo.server")
_limited = RateLimitedLog(log, interval=10.0)
JOIN_BURST = 5  # Joins an identity may make at once before --join-rate applies

KNOWN_PROFILES = frozenset({*profiles.PROFILES, "custom"})
HEARTBEAT_BATCH = 200  # sessions beaten per loop turn (see Server.heartbeats)


class Server:
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
        settings = driver_settings(cfg, self.setup.run, cfg.q_for())
        self.driver = RoundDriver(settings, self.setup.w0)
        self.collector = collector.RoundCollector(self.d, cfg.max_chunk_values)
        self.sessions: dict[str, SessionRecord] = {}
        self.state = "waiting"
        self.round = 0
        self.start_round = 0
        self.last_eval: dict[str, float] = {}
        self.metric_name = driver.metric_name(self.setup.model)
        self._next_worker_id = 0
        self._shard_cache: dict[int, list[ShardSlice]] = {}
        # Active sessions per shard, kept up to date on join/leave (O(1) per join).
        self._shard_holders = np.zeros(self.spec.num_shards, dtype=np.int64)
        self._init_identities()
        self._changed = asyncio.Event()
        self._wake = asyncio.Event()
        self._stopping = False
        self._t_start = time.monotonic()
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="hgo-agg")
        self._round_open = False
        self._deadline_hit = False  # the round's collection was closed by its timer (or target)
        self._t_deadline = 0.0
        self._closed_by = ""  # "deadline" | "target" | "" (early close or stop)
        self._last_chunk = np.zeros(0)  # per slot: monotonic time of its last accepted chunk
        self._evaluated_round = -1
        self._checkpointed = -1
        self.roundlog = RoundLog(cfg.log)
        self.metrics.tau.set(cfg.tau_ms / 1000.0)
        self._checkpoint = checkpoint if cfg.checkpoint_dir else None
        if cfg.resume:
            self._resume()

    # ------------------------------------------------------------------ accessors

    @property
    def weights(self) -> np.ndarray:
        """The current model w_k, shape (d,), float64 (a copy)."""
        return self.driver.w.copy()

    @property
    def last_block(self) -> int:
        """b_v of the last closed round (0 without quorum)."""
        return self.driver.last_block

    @property
    def rounds_without_quorum(self) -> int:
        """Rounds so far that did not update the model (too few rows for the quorum)."""
        return self.driver.rounds_without_quorum

    @property
    def stopping(self) -> bool:
        """Whether a stop was requested (no new round starts)."""
        return self._stopping

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
            metric_name=self.metric_name,
            last_block=self.last_block,
            rounds_without_quorum=self.rounds_without_quorum,
        )

    def outdated(self, msg: Outgoing) -> bool:
        """True for a queued Task whose round is over: a worker that reads slower than the
        rounds go skips it, so its outbox stays bounded (one Task per round at most)."""
        return isinstance(msg, Task) and msg.round < self.round

    def reject(self, reason: str) -> None:
        """Count one rejected message (also used by the transport for its own checks)."""
        self.metrics.rejected.labels(reason=reason).inc()

    # ------------------------------------------------------------------ sessions

    # ------------------------------------------------------------------ identities

    def _init_identities(self) -> None:
        self.by_identity: dict[str, SessionRecord] = {}
        self.known_identities: dict[str, int] = {}  # identity -> rank in the tokens file
        self.shard_map: dict[str, int] = {}
        self.f_enforceable = False
        self._join_buckets: dict[str, TokenBucket] = {}
        self._peer_sessions: dict[str, int] = {}
        self.session_msg_rate = float(self.cfg.session_msg_rate)
        mb = self.cfg.session_byte_rate_mb
        if mb is None:
            # A worker sends at most one gradient (4d bytes) per round; allow two per shortest
            # round (10 ms or more) plus 1 MiB of everything else. With early close a round
            # ends as soon as every sampled worker delivered, however long tau is, so the
            # shortest round is then 10 ms (a long tau must not throttle fast honest workers).
            tau = self.cfg.tau_min if self.cfg.tau_auto else self.cfg.tau_ms
            if self.cfg.early_close or not math.isfinite(tau):
                tau = 10.0
            per_s = 1000.0 / max(10.0, tau)
            self.session_byte_rate = 2 * 4 * self.d * per_s + 2**20
        else:
            self.session_byte_rate = mb * 2**20

    def set_identities(
        self, identities: list[str], shard_map: dict[str, int] | None = None, *, enforceable: bool
    ) -> None:
        """The known per-worker identities (tokens file order) and whether f is enforceable.

        Called by the transport before serving. A known identity's shard is its explicit
        ``shard_map`` entry, else its rank modulo the number of shards; an identity not
        known in advance (a client certificate) gets a stable hash of its name.
        """
        n = self.spec.num_shards
        self.known_identities = {ident: i for i, ident in enumerate(identities)}
        self.shard_map = dict(shard_map or {})
        for ident, shard in self.shard_map.items():
            if not 0 <= shard < n:
                raise ConfigError(f"--tokens-file: {ident!r} has shard={shard}, outside [0, {n}) shards")
        self.f_enforceable = bool(enforceable)

    def identity_shard(self, identity: str) -> int:
        """The data shard of ``identity``: a stable function of it (never of who else joined)."""
        n = self.spec.num_shards
        if identity in self.shard_map:
            return self.shard_map[identity]
        if identity in self.known_identities:
            return self.known_identities[identity] % n
        digest = hashlib.sha256(identity.encode("utf-8", "surrogateescape")).digest()
        return int.from_bytes(digest[:8], "big") % n

    def _admit(self, identity: str | None, peer: str) -> None:
        """Join rate per identity and the per-peer session cap; ResourceExhausted when over."""
        if identity is not None and self.cfg.join_rate > 0:
            bucket = self._join_buckets.get(identity)
            if bucket is None:
                if len(self._join_buckets) > 100_000:  # bounded even with an unbounded CA
                    self._join_buckets.clear()
                bucket = self._join_buckets[identity] = TokenBucket(
                    self.cfg.join_rate, max(JOIN_BURST, self.cfg.join_rate)
                )
            if not bucket.allow():
                self.reject("join-rate")
                raise ResourceExhausted(
                    "join-rate",
                    f"identity {identity!r} joins faster than --join-rate {self.cfg.join_rate:g}/s",
                )
        cap = self.cfg.max_sessions_per_peer
        if cap and peer and self._peer_sessions.get(peer, 0) >= cap:
            self.reject("peer-cap")
            raise ResourceExhausted(
                "peer-cap", f"peer {peer} already holds {cap} sessions (--max-sessions-per-peer)"
            )

    # ------------------------------------------------------------------ sessions

    def join(self, req: JoinRequest, identity: str | None = None, peer: str = "") -> SessionRecord:
        """Validate a Join and open a session; its outbox already holds Welcome (+ shard).

        ``identity`` None means anonymous (shared token or no auth): the session counts on
        its own. Otherwise the identity holds at most one active session: a new Join
        replaces the old one (ended with ABORTED, as a reconnect would leave it), and the
        shard is :meth:`identity_shard`. Raises InvalidArgument naming the bad field,
        ResourceExhausted over the join rate or the per-peer cap.
        """
        if req.protocol_version != PROTOCOL_VERSION:
            self.reject("bad-join")
            raise InvalidArgument(
                "bad-join", f"protocol_version must be {PROTOCOL_VERSION}, got {req.protocol_version}"
            )
        if req.profile not in KNOWN_PROFILES:
            self.reject("bad-join")
            raise InvalidArgument(
                "bad-join",
                f"profile must be one of {sorted(KNOWN_PROFILES)}, got {escape(req.profile, 40)!r}",
            )
        if not (math.isfinite(req.rate) and req.rate >= 0):
            self.reject("bad-join")
            raise InvalidArgument("bad-join", f"rate must be a finite number >= 0, got {req.rate}")
        if req.batch_size < 1:
            self.reject("bad-join")
            raise InvalidArgument("bad-join", f"batch_size must be >= 1, got {req.batch_size}")
        self._admit(identity, peer)
        if identity is not None:
            old = self.by_identity.get(identity)
            if old is not None:
                self.reject("replaced")
                _limited.log(
                    logging.WARNING, "replaced", "identity %s joined again: session of worker %d replaced",
                    escape(identity), old.worker_id,
                )  # fmt: skip
                self.leave(
                    old, "replaced",
                    Aborted("replaced", f"a newer session of identity {identity!r} replaced this one"),
                )  # fmt: skip
        worker_id = self._next_worker_id
        self._next_worker_id += 1
        shard = self._pick_shard() if identity is None else self.identity_shard(identity)
        sess = SessionRecord(
            session_id=secrets.token_hex(16),
            worker_id=worker_id,
            name=req.name[:128],
            profile=req.profile,
            rate=float(req.rate),
            batch_size=int(req.batch_size),
            byzantine=bool(req.byzantine),
            shard_index=shard,
            identity=identity,
            last_seen=time.monotonic(),
            peer=peer,
            first_round=self.round,
        )
        sess.send(Welcome(sess.session_id, worker_id, self.spec, shard, int(self.cfg.heartbeat_ms)))
        if req.wants_shard:
            for part in self._shard_parts(shard):
                sess.send(part)
        if self.state == "done":
            sess.send(Stop("done"))
        elif self._stopping:
            sess.send(Stop("shutdown"))
        else:
            self.sessions[sess.session_id] = sess
            if identity is not None:
                self.by_identity[identity] = sess
            if peer:
                self._peer_sessions[peer] = self._peer_sessions.get(peer, 0) + 1
            self._shard_holders[shard] += 1
            self.metrics.active_sessions.labels(profile=sess.profile).inc()
            self._changed.set()
        log.info(
            # %r escapes control characters in the peer's name (repr quotes non-printables)
            "join worker=%d name=%r profile=%s rate=%g batch=%d shard=%d declared-byzantine=%s identity=%s",
            worker_id, sess.name, sess.profile, sess.rate, sess.batch_size, shard, sess.byzantine,
            escape(identity),
        )  # fmt: skip
        return sess

    def _pick_shard(self) -> int:
        """For an anonymous session: the shard held by the fewest active sessions (lowest index on ties).

        With workers joining one by one this gives the i-th worker shard i, then
        round-robin; a worker that replaces a dropped one inherits its free shard. (A
        Sybil can steer this; with identities the shard is :meth:`identity_shard`.)
        """
        return int(np.argmin(self._shard_holders))

    def _shard_parts(self, shard: int) -> list[ShardSlice]:
        """Shard ``shard`` as ShardSlices, encoded once and cached."""
        if shard not in self._shard_cache:
            ds = self.setup.dataset
            idx = self.setup.shards[shard]
            self._shard_cache[shard] = shard_slices(ds.X_train[idx], ds.y_train[idx])
        return self._shard_cache[shard]

    def leave(self, sess: SessionRecord, reason: str = "left", error: ProtocolError | None = None) -> None:
        """End a session (stream ended, Leave, heartbeat timeout, fatal rejection); idempotent.

        A sampled worker's prefix stays what it delivered before it left.
        """
        if not sess.active:
            return
        sess.active = False
        if self.sessions.pop(sess.session_id, None) is not None:
            self._shard_holders[sess.shard_index] -= 1
            self.metrics.active_sessions.labels(profile=sess.profile).dec()
            if sess.identity is not None and self.by_identity.get(sess.identity) is sess:
                del self.by_identity[sess.identity]
            if sess.peer:
                left = self._peer_sessions.get(sess.peer, 1) - 1
                if left > 0:
                    self._peer_sessions[sess.peer] = left
                else:
                    self._peer_sessions.pop(sess.peer, None)
        if self._round_open and sess.slot is not None:
            self.collector.drop_slot(sess.slot)
            self._maybe_wake()
        sess.end_error = error
        sess.send(End(error))
        sess.ended.set()
        self._changed.set()
        log.info("leave worker=%d reason=%s", sess.worker_id, escape(reason))

    def on_heartbeat(self, sess: SessionRecord) -> None:
        """A Heartbeat from ``sess``: it is alive."""
        sess.last_seen = time.monotonic()

    def on_chunk(
        self, sess: SessionRecord, round_index: int, offset: int, values: bytes, session_id: str
    ) -> None:
        """Validate and store one gradient chunk of ``sess``.

        Non-fatal outcomes (late, non-finite tail) are counted and return normally;
        fatal ones are counted and raised as a ProtocolError subclass.
        """
        sess.last_seen = time.monotonic()
        if session_id != sess.session_id:
            self.reject("session-id")
            raise PermissionDenied("session-id", "chunk names a session_id other than this stream's session")
        try:  # size and length first: a late or unsampled chunk is no excuse for a bad one
            self.collector.check_values(values)
            sess.round_bytes += len(values)
            sess.round_chunks += 1
        except collector.ChunkRejected as exc:
            self.reject(exc.reason)
            if exc.reason == collector.OVERSIZED:
                raise ResourceExhausted(exc.reason, str(exc)) from exc
            raise InvalidArgument(exc.reason, str(exc)) from exc
        current = self.collector.round
        if sess.slot is None or round_index != current:
            if sess.was_sampled(round_index):
                self._late()
                return
            self.reject("not-sampled")
            raise FailedPrecondition(
                "not-sampled", f"chunk for round {round_index}, which this worker was not sampled into"
            )
        try:
            res = self.collector.add(sess.slot, round_index, offset, values)
        except collector.ChunkRejected as exc:
            self.reject(exc.reason)
            if exc.reason == collector.OVERSIZED:
                raise ResourceExhausted(exc.reason, str(exc)) from exc
            raise InvalidArgument(exc.reason, str(exc)) from exc
        if res.accepted:
            self._last_chunk[sess.slot] = time.monotonic()
        if res.reason == collector.LATE:
            self._late()
        elif res.reason == collector.NON_FINITE:
            self.reject(collector.NON_FINITE)
        if res.finished:
            self._maybe_wake()
        elif self._target_met_now(res.accepted):
            self._close_collection("target")

    @staticmethod
    def _entry(s: SessionRecord) -> WorkerEntry:
        """The round-log row of a sampled session: declared (Join) and measured (stream) apart."""
        return WorkerEntry(
            s.worker_id, s.profile, s.byzantine, identity=s.identity, rate=s.rate,
            batch_size=s.batch_size, bytes=s.round_bytes, chunks=s.round_chunks,
        )  # fmt: skip

    def _guarded(self, k: int, outcome: rounds.RoundOutcome) -> None:
        """Count what the poison guard did this round (rows bounded, update refused)."""
        if outcome.bounded:
            self.metrics.bounded_rows.inc(outcome.bounded)
        if outcome.refused is not None:
            self.metrics.refused_updates.inc()
            _limited.log(logging.WARNING, "refused-update", "round %d: update refused (%s); w unchanged",
                         k, outcome.refused)  # fmt: skip

    def _late(self) -> None:
        """Count a chunk that arrived after its round closed (never fatal)."""
        self.metrics.late_chunks.inc()
        self.reject(collector.LATE)

    def _target_met_now(self, accepted: int) -> bool:
        """--tau auto: whether the chunk just stored made the prefixes meet the block target."""
        if not accepted or not self._round_open or self.driver.deadline is None:
            return False  # the fixed-τ hot path pays one test
        return self.driver.target_met(self.collector.prefixes)

    def _on_deadline(self) -> None:
        """The round's deadline timer: chunks handled from now on are late."""
        self._close_collection("deadline")

    def _close_collection(self, why: str) -> None:
        """Close the collection now (the deadline fired, or ``--tau auto``'s target is met):
        the block is built from the prefixes held at this instant; later chunks are late."""
        if self._round_open:
            self._round_open = False
            self.collector.close()
            self._deadline_hit = True
            self._closed_by = why
            self._t_deadline = time.monotonic()
        self._wake.set()

    def _maybe_wake(self) -> None:
        """Early close (Algorithm 1, step 3): end collection once every sampled worker is done."""
        early = self.cfg.early_close or math.isinf(self.cfg.tau_ms)
        if self._round_open and early and self.collector.all_finished():
            self._wake.set()

    def sweep(self, batch: list[SessionRecord] | None = None) -> None:
        """Send heartbeats; drop sessions silent for more than 3 intervals.

        ``batch``: only these sessions (those that left meanwhile are skipped); default all.
        """
        now = time.monotonic()
        limit = 3 * self.cfg.heartbeat_ms / 1000.0
        beat = Beat(time.time_ns())
        for sess in list(self.sessions.values()) if batch is None else batch:
            if self.sessions.get(sess.session_id) is not sess:
                continue
            if now - sess.last_seen > limit:
                self.reject("heartbeat-timeout")
                self.leave(
                    sess,
                    "heartbeat-timeout",
                    DeadlineExceeded("heartbeat-timeout", f"no message for {now - sess.last_seen:.1f} s"),
                )
            else:
                sess.send(beat)

    def account_round(self, sampled: list[SessionRecord], prefixes: np.ndarray) -> None:
        """After a round: count sampled sessions that sent nothing; evict the persistently silent.

        A session sampled into ``--evict-after`` rounds in a row without delivering one
        value, and silent for at least 3 heartbeat intervals since the first of them, is
        ended with DEADLINE_EXCEEDED (reason ``evicted``): it holds a sampling slot and
        the quorum hostage (a stalled process, a reader that never reads its tasks).
        """
        n = self.cfg.evict_after
        now = time.monotonic()
        grace = 3 * self.cfg.heartbeat_ms / 1000.0
        for sess, p in zip(sampled, prefixes, strict=True):
            if int(p) > 0:
                sess.silent_rounds = 0
                continue
            if sess.silent_rounds == 0:
                sess.silent_since = now
            sess.silent_rounds += 1
            if n and sess.active and sess.silent_rounds >= n and now - sess.silent_since >= grace:
                self.reject("evicted")
                self.leave(
                    sess, "evicted",
                    DeadlineExceeded(
                        "evicted", f"sampled into {sess.silent_rounds} rounds in a row, no value sent"
                    ),
                )  # fmt: skip

    async def heartbeats(self) -> None:
        """Run :meth:`sweep` every heartbeat interval until cancelled.

        With more than :data:`HEARTBEAT_BATCH` sessions the interval is cut into equal
        slices and each slice beats one batch: a beat wakes every session's stream writer
        at once, and asyncio runs all ready callbacks before it looks at its timers, so
        4,000 beats in one sweep held the round's deadline timer for hundreds of ms
        (bench/bench_sessions.py, docs/benchmarks.md).
        """
        period = self.cfg.heartbeat_ms / 1000.0
        while True:
            sessions = list(self.sessions.values())
            batches = [sessions[i : i + HEARTBEAT_BATCH] for i in range(0, len(sessions), HEARTBEAT_BATCH)]
            for batch in batches or [[]]:
                await asyncio.sleep(period / max(1, len(batches)))
                self.sweep(batch)

    # ------------------------------------------------------------------ stop

    def request_stop(self) -> None:
        """Stop sampling: the open round closes now (its update is applied), then the run ends."""
        if self._stopping:
            return
        self._stopping = True
        if self.state != "done":
            self.state = "stopping"
        self._wake.set()
        self._changed.set()

    # ------------------------------------------------------------------ round loop

    async def _wait_sessions(self, n: int) -> bool:
        """Wait until ``n`` sessions are active; False when a stop was requested first."""
        while len(self.sessions) < n and not self._stopping:
            self._changed.clear()
            await self._changed.wait()
        return not self._stopping

    def _needed_workers(self) -> int:
        """Sessions a round needs to be worth running: min(--min-workers, the quorum)."""
        return max(1, min(int(self.cfg.min_workers or 1), self.driver.quorum))

    async def run(self) -> Summary:
        """Wait for --min-workers sessions, train --rounds rounds, evaluate, send Stop."""
        cfg = self.cfg
        log.info("waiting for %d workers", cfg.min_workers)
        nothing_left = self.start_round >= cfg.rounds  # resumed from a finished run
        started = nothing_left or await self._wait_sessions(int(cfg.min_workers or 1))
        self._freeze_heap()
        self._t_start = time.monotonic()
        k = self.start_round
        if started:
            self.state = "training"
            log.info(
                "training: %d rounds, d=%d, q=%d, v=%s, rule=%s", cfg.rounds, self.d, cfg.q, cfg.v, cfg.rule
            )
            while k < cfg.rounds and not self._stopping:
                if not await self._wait_sessions(self._needed_workers()):
                    break
                await self._run_round(k)
                k += 1
                if self._checkpoint is not None and (k % cfg.checkpoint_every == 0 or k == cfg.rounds):
                    await self._save_checkpoint(k)
                    self._checkpointed = k
                if cfg.export_every and k % cfg.export_every == 0 and k < cfg.rounds:
                    await self.export_model(k, completed=False)
        completed = k >= cfg.rounds
        if self._evaluated_round != k - 1 or not self.last_eval:  # the last round was not evaluated
            await self._evaluate()
        if self._checkpoint is not None and self._checkpointed != k and k > self.start_round:
            await self._save_checkpoint(k)
        self.state = "done" if completed else "stopping"
        reason = "done" if completed else "shutdown"
        for sess in list(self.sessions.values()):
            sess.send(Stop(reason))
        wall = time.monotonic() - self._t_start
        self.roundlog.close()
        return Summary(
            rounds=k,
            completed=completed,
            wall_s=wall,
            metric_name=self.metric_name,
            metric=self.last_eval.get(self.metric_name, math.nan),
            evaluation=dict(self.last_eval),
        )

    async def export_model(self, k: int, *, completed: bool) -> Path | None:
        """Write w after ``k`` rounds to ``--export`` (hgo_common.models.save); None without it."""
        target = self.cfg.export
        if target is None:
            return None
        from hgo_common.models import save

        ds = self.setup.dataset
        meta = {
            "dataset": self.cfg.dataset, "round": k, "completed": completed,
            "evaluation": dict(self.last_eval), "settings": self.cfg.as_dict(),
        }  # fmt: skip
        w = self.weights  # a copy, taken between rounds
        path: Path = await self._in_thread(
            lambda: save(
                target, self.setup.model, w, meta=meta,
                feature_mean=ds.feature_mean, feature_std=ds.feature_std,
            )
        )  # fmt: skip
        log.info("model after %d rounds written to %s", k, path)
        return path

    def close(self) -> None:
        """Release the aggregation thread and the log (after :meth:`run`)."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.roundlog.close()
        if self._heap_frozen:
            self._heap_frozen = False
            gc.unfreeze()

    _heap_frozen = False

    def _freeze_heap(self) -> None:
        """Training starts: collect once, then keep what is alive now (data, model, every
        session's objects) out of all later garbage collections until :meth:`close`.

        A full collection walks every tracked object while holding the event loop; with
        4,000 sessions those pauses (100-500 ms here) made round deadlines fire late
        (bench/bench_sessions.py, docs/benchmarks.md). Objects frozen here that later
        become cyclic garbage are reclaimed only after :meth:`close`.
        """
        if not self._heap_frozen:
            gc.collect()
            gc.freeze()
            self._heap_frozen = True

    async def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` in the aggregation thread.

        One worker thread: numpy releases the GIL in sorts and matrix products, so the
        event loop keeps answering heartbeats while a round aggregates.
        """
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _evaluate(self) -> dict[str, float]:
        """Evaluate w_k on the test split (in the aggregation thread); update the gauges."""
        ds, model = self.setup.dataset, self.setup.model
        res: dict[str, float] = await self._in_thread(
            driver.evaluate, model, self.driver.w.copy(), ds.X_test, ds.y_test
        )
        if not all(math.isfinite(v) for v in res.values()):
            log.warning("evaluation at round %d is not finite: %s", self.round, res)
        self.last_eval = res
        if "accuracy" in res:
            self.metrics.test_accuracy.set(res["accuracy"])
        if "loss" in res:
            self.metrics.test_loss.set(res["loss"])
        return res

    async def _run_round(self, k: int) -> None:
        """Round k of Algorithm 1 on the wall clock: broadcast, collect until τ, close, record."""
        t0 = time.monotonic()
        plan, sampled = self._broadcast(k)
        # C_k is needed only at the close (the seed travels): expand it in the aggregation
        # thread while the round runs, not on the loop before the broadcast (a stratified
        # order of d = 38,410 takes ~4 ms).
        c_k_future = asyncio.get_running_loop().run_in_executor(self._executor, self.driver.order, plan)
        # The deadline counts from here: the task is queued on every sampled stream and the
        # transport writes it as soon as this coroutine yields. A worker's own clock starts
        # when it reads the task, later by the broadcast and network latency.
        t_sent = time.monotonic()
        await self._collect(plan.tau_ms)
        prefixes = self.collector.close()
        t_close = self._t_deadline if self._deadline_hit else time.monotonic()
        for sess in sampled:
            sess.send(Closed(k))
        c_k = await c_k_future
        t_agg = time.perf_counter()
        close_ms = (t_close - t_sent) * 1000.0
        delivered = np.where(prefixes > 0, (self._last_chunk[: len(sampled)] - t_sent) * 1000.0, close_ms)
        outcome = await self._in_thread(
            self.driver.close, plan, self.collector.values, prefixes, c_k, delivered
        )
        self.metrics.aggregation.observe(time.perf_counter() - t_agg)
        self._guarded(k, outcome)
        self.account_round(sampled, prefixes)
        if not outcome.quorum:
            self.metrics.rounds_without_quorum.inc()
        t_done = time.monotonic()
        timing = Timing(
            t_s=t_close - self._t_start, round_ms=(t_done - t_sent) * 1000.0,
            close_ms=(t_close - t_sent) * 1000.0, prepare_ms=(t_sent - t0) * 1000.0,
            early_close=(not self._deadline_hit or self._closed_by == "target") and not self._stopping,
        )  # fmt: skip
        workers = [self._entry(s) for s in sampled]
        record = self.driver.record(
            plan, outcome, prefixes, workers, timing, nonfinite=self.collector.truncated(),
            f_enforceable=self.f_enforceable,
        )  # fmt: skip
        if self.driver.evaluates(k):
            record.update(await self._evaluate())
            self._evaluated_round = k
            log.info(
                "round %d/%d: block=%d responded=%d/%d %s=%.4f (%.1f s)", k + 1, self.cfg.rounds,
                outcome.block, record["responded"], len(sampled), self.metric_name,
                record.get(self.metric_name, math.nan), record["t"],
            )  # fmt: skip
        self.roundlog.write(record)
        self._observe_round(record, sampled, prefixes, t_done - t0)

    def _broadcast(self, k: int) -> tuple[RoundPlan, list[SessionRecord]]:
        """Steps 1-2: the driver samples the active sessions (in worker-id order); the same
        Task (w_k encoded once, C_k's seed) goes to every sampled session's outbox."""
        active = sorted(self.sessions.values(), key=lambda s: s.worker_id)
        plan = self.driver.begin(k, len(active), ids=[s.worker_id for s in active])
        sampled = [active[int(i)] for i in plan.sampled]
        self.round = k
        self.metrics.round.set(k)
        self.metrics.tau.set(plan.tau_ms / 1000.0)
        self.collector.start(k, len(sampled))
        self._last_chunk = np.zeros(len(sampled))
        for sess in self.sessions.values():
            sess.slot = None
        task = Task(k, plan.order_seed, wire.encode(self.driver.w), plan.tau_ms)
        self._wake.clear()
        self._round_open = True
        for slot, sess in enumerate(sampled):
            sess.slot = slot
            sess.round_bytes = sess.round_chunks = 0
            sess.sampled_rounds.append(k)
            sess.send(task)
        return plan, sampled

    async def _collect(self, tau_ms: float) -> None:
        """Step 3: let chunks flow into the collector until the deadline τ_k (or early close).

        With τ = inf the round waits for every sampled worker, bounded by --sgd-timeout.
        """
        cfg = self.cfg
        timeout = tau_ms if math.isfinite(tau_ms) else cfg.sgd_timeout
        self._deadline_hit = False
        self._closed_by = ""
        deadline = None
        if not self._stopping:
            if math.isfinite(timeout):
                # The timer callback itself closes the collection: asyncio.wait_for would
                # resume this coroutine several loop iterations later, and every chunk the
                # loop handled meanwhile (measured: up to 17 ms of them with 60 streaming
                # sessions) would still count.
                deadline = asyncio.get_running_loop().call_later(timeout / 1000.0, self._on_deadline)
            try:
                await self._wake.wait()
            finally:  # also when the round loop is cancelled: no timer outlives its round
                if deadline is not None:
                    deadline.cancel()
        self._round_open = False

    def _observe_round(
        self, record: dict[str, Any], sampled: list[SessionRecord], prefixes: np.ndarray, seconds: float
    ) -> None:
        """The round's Prometheus metrics."""
        m = self.metrics
        m.rounds.inc()
        m.round_duration.observe(seconds)  # the whole round, set-up included
        m.block.set(record["block"])
        m.sampled.set(len(sampled))
        m.responded.set(record["responded"])
        for s, p in zip(sampled, prefixes, strict=True):
            m.prefix.labels(profile=s.profile).observe(int(p))
        log.debug("round %d block=%d responded=%d/%d %.1f ms", record["round"], record["block"],
                  record["responded"], len(sampled), record["round_ms"])  # fmt: skip

    # ------------------------------------------------------------------ checkpoints

    async def _save_checkpoint(self, next_round: int) -> None:
        """Write w_k, the sampling stream and the counters atomically (hgo_server.checkpoint)."""
        ck = self._checkpoint
        assert ck is not None and self.cfg.checkpoint_dir is not None
        state = ck.State(
            round=next_round,
            weights=self.driver.w.copy(),
            model=self.spec.model,
            dim=self.d,
            config=self.cfg.as_dict(),
            extra={
                "sample_rng": self.driver.sample_rng.bit_generator.state,
                "rounds_without_quorum": self.rounds_without_quorum,
            },
        )
        path = await self._in_thread(ck.save, Path(self.cfg.checkpoint_dir), state)
        log.info("checkpoint round=%d %s", next_round, path)

    def _resume(self) -> None:
        """--resume: continue from the newest valid checkpoint in --checkpoint-dir, if any."""
        ck = self._checkpoint
        assert ck is not None and self.cfg.checkpoint_dir is not None
        try:
            state = ck.load_latest(Path(self.cfg.checkpoint_dir), model=self.spec.model, dim=self.d)
        except ck.CheckpointError as exc:
            raise ConfigError(f"--resume: {exc}") from None
        if state is None:
            log.info("resume: no checkpoint in %s, starting fresh", self.cfg.checkpoint_dir)
            return
        self.driver.w = np.asarray(state.weights, dtype=np.float64).copy()
        self.start_round = self.round = int(state.round)
        extra = dict(state.extra or {})
        if "sample_rng" in extra:
            self.driver.sample_rng.bit_generator.state = extra["sample_rng"]
        self.driver.rounds_without_quorum = int(extra.get("rounds_without_quorum", 0))
        log.info("resumed from round %d", self.start_round)
