"""The round loop of the parameter server on the wall clock (paper §3, Algorithm 1).

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

Round numbers: ``k`` is 0-based everywhere (the round log's ``round`` field, Status,
``hgo_round``, checkpoints); the server's progress line says ``round k+1/R`` as a count of
rounds done (docs/server.md, "Round numbers").
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from hgo_common import collector, driver, rounds, wire
from hgo_common.driver import RoundPlan, Timing, WorkerEntry

from .errors import FailedPrecondition, InvalidArgument, PermissionDenied, ResourceExhausted
from .logsafe import RateLimitedLog
from .messages import Closed, Stop, Summary, Task
from .sessions import SessionRecord
from .state import Collection, Phase, ServerState

log = logging.getLogger("hgo.server")
_limited = RateLimitedLog(log, interval=10.0)


class RoundLoop(ServerState):
    """Chunks, deadlines and rounds (a part of :class:`hgo_server.server.Server`)."""

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
        if not accepted or self.collection is not Collection.OPEN or self.driver.deadline is None:
            return False  # the fixed-τ hot path pays one test
        return self.driver.target_met(self.collector.prefixes)

    def _on_deadline(self) -> None:
        """The round's deadline timer: chunks handled from now on are late."""
        self._close_collection("deadline")

    def _close_collection(self, why: str) -> None:
        """Close the collection now (the deadline fired, or ``--tau auto``'s target is met):
        the block is built from the prefixes held at this instant; later chunks are late."""
        if self.collection is Collection.OPEN:
            self.collection = Collection(why)
            self.collector.close()
            self._t_deadline = time.monotonic()
        self._wake.set()

    def _maybe_wake(self) -> None:
        """Early close (Algorithm 1, step 3): end collection once every sampled worker is done."""
        early = self.cfg.early_close or math.isinf(self.cfg.tau_ms)
        if self.collection is Collection.OPEN and early and self.collector.all_finished():
            self._wake.set()

    # ------------------------------------------------------------------ stop

    def request_stop(self) -> None:
        """Stop sampling: the open round closes now (its update is applied), then the run ends."""
        if self.stopping:
            return
        self.phase = Phase.STOPPING
        self._wake.set()
        self._changed.set()

    # ------------------------------------------------------------------ round loop

    async def _wait_sessions(self, n: int) -> bool:
        """Wait until ``n`` sessions are active; False when a stop was requested first."""
        while len(self.sessions) < n and not self.stopping:
            self._changed.clear()
            await self._changed.wait()
        return not self.stopping

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
            if self.phase is Phase.WAITING:
                self.phase = Phase.TRAINING
            log.info(
                "training: %d rounds, d=%d, q=%d, v=%s, rule=%s", cfg.rounds, self.d, cfg.q, cfg.v, cfg.rule
            )
            while k < cfg.rounds and not self.stopping:
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
        # The last round was not evaluated: do it now, unless no round was ever trained (a
        # stop before training): an untrained model's score is not a result.
        if k > 0 and self._server_evaluates and (self._evaluated_round != k - 1 or not self.last_eval):
            await self._evaluate()
        if self._checkpoint is not None and self._checkpointed != k and k > self.start_round:
            await self._save_checkpoint(k)
        self.phase = Phase.DONE if completed else Phase.STOPPING
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

    @property
    def _server_evaluates(self) -> bool:
        """Whether the server scores w on its own test split (``--evaluation server|both``)."""
        return self.cfg.evaluation != "federated"

    async def _evaluate(self) -> dict[str, float]:
        """Evaluate w_k on the test split (in the aggregation thread); update the gauges."""
        if not self.setup.evaluates:  # --dataset none without --test-data (said at start)
            return {}
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
        timed = self.collection in (Collection.DEADLINE, Collection.TARGET)
        t_close = self._t_deadline if timed else time.monotonic()
        for sess in sampled:
            sess.send(Closed(k))
        c_k = await c_k_future
        t_agg = time.perf_counter()
        close_ms = (t_close - t_sent) * 1000.0
        delivered = np.where(prefixes > 0, (self._last_chunk[: len(sampled)] - t_sent) * 1000.0, close_ms)
        outcome = await self._in_thread(
            self.driver.close, plan, self.collector.values, prefixes, c_k, delivered
        )
        aggregate_s = time.perf_counter() - t_agg
        self.metrics.aggregation.observe(aggregate_s)
        self._guarded(k, outcome)
        self.account_round(sampled, prefixes)
        if not outcome.quorum:
            self.metrics.rounds_without_quorum.inc()
        t_done = time.monotonic()
        timing = Timing(
            t_s=t_close - self._t_start, round_ms=(t_done - t_sent) * 1000.0,
            close_ms=(t_close - t_sent) * 1000.0, prepare_ms=(t_sent - t0) * 1000.0,
            aggregate_ms=aggregate_s * 1000.0,
            early_close=self.collection is not Collection.DEADLINE and not self.stopping,
        )  # fmt: skip
        workers = [self._entry(s) for s in sampled]
        record = self.driver.record(
            plan, outcome, prefixes, workers, timing, nonfinite=self.collector.truncated(),
            f_enforceable=self.f_enforceable,
        )  # fmt: skip
        self.rates_record(k, sampled, prefixes, delivered, record)
        fed = self.federated_record(k)
        if fed is not None:
            record["federated"] = fed
        if self.driver.evaluates(k) and self._server_evaluates:
            record.update(await self._evaluate())
            self._evaluated_round = k
            log.info(  # k is 0-based as in the round log; "n/R done" counts rounds
                "round %d (%d/%d done): block=%d responded=%d/%d %s=%.4f (%.1f s)", k, k + 1, self.cfg.rounds,
                outcome.block, record["responded"], len(sampled), self.metric_name,
                record.get(self.metric_name, math.nan), record["t"],
            )  # fmt: skip
        if k == self.start_round:
            record["secret_seed"] = int(self.secret_seed)  # reproducibility: here and in checkpoints only
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
        evaluate = self.federated_round(k)
        task = Task(k, plan.order_seed, wire.encode(self.driver.w), plan.tau_ms, evaluate=evaluate)
        self._wake.clear()
        self.collection = Collection.OPEN
        for slot, sess in enumerate(sampled):
            sess.slot = slot
            sess.round_bytes = sess.round_chunks = 0
            sess.sampled_rounds.append(k)
            sess.send(task)
        if evaluate:
            self.ask_evaluation(k, sampled)
        return plan, sampled

    async def _collect(self, tau_ms: float) -> None:
        """Step 3: let chunks flow into the collector until the deadline τ_k (or early close).

        With τ = inf the round waits for every sampled worker, bounded by --sgd-timeout.
        """
        cfg = self.cfg
        timeout = tau_ms if math.isfinite(tau_ms) else cfg.sgd_timeout
        deadline = None
        if not self.stopping:
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
        if self.collection is Collection.OPEN:  # early close or a stop; not the timer
            self.collection = Collection.IDLE

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
