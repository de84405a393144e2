"""One round of HGO, written once: sample → order → collect → close → update → record.

Paper §3, Algorithm 1, server side. :class:`RoundDriver` holds the run's state (w_k, the
sampling stream, the rounds without quorum) and does every step of a round except the
collection itself, which is the only thing that differs between its two callers:

* ``hgo_server.server.Server`` (the wall clock): collection is the network — tasks go
  out on gRPC streams and chunks come back into a ``hgo_common.collector`` buffer until
  the deadline timer fires;
* ``hgo_lab.simulator.Simulation`` (a virtual clock): collection is
  ``hgo_common.local.local_step`` for every sampled worker, delivered through the same
  collector.

Both call, in this order::

    plan = driver.begin(k, n_candidates)        # step 2: who is sampled, C_k's seed
    c_k = driver.order(plan)                    # step 1: C_k (may run in a thread)
    ...collect (q x d) values and prefixes...   # step 3
    outcome = driver.close(plan, values, prefixes, c_k)   # steps 4-6, w_{k+1}
    record = driver.record(plan, outcome, prefixes, workers, timing)
    if driver.evaluates(k): record.update(evaluate(...))

so a run simulated with a seed and a run served with the same seed and the same
deliveries produce the same w_k, bit for bit, and the same log records (up to the
clock fields of :class:`Timing`). tests/test_driver.py checks exactly that.

Quorum (:func:`round_quorum`): an ``hgo`` round needs v non-empty prefixes; an ``sgd``
round needs ``max(1, rule.min_rows(f))`` complete gradients (``hgo_common.rounds``).
Evaluation (:meth:`RoundDriver.evaluates`): after the update of round k when
``(k + 1) % eval_every == 0`` (``eval_every = 0``: never before the end) and always
after the last round.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from . import order, rounds
from .deadline import AutoTau, Choice, DeadlinePolicy
from .rounds import RoundConfig, RoundOutcome, round_quorum

__all__ = [
    "RoundDriver",
    "RoundPlan",
    "RunSettings",
    "Timing",
    "WorkerEntry",
    "evaluate",
    "evaluates",
    "metric_name",
    "round_quorum",
]


class _Evaluable(Protocol):
    task: str

    def evaluate(self, w: np.ndarray, X: np.ndarray, y: np.ndarray) -> dict[str, float]: ...


def evaluates(k: int, total_rounds: int, eval_every: int) -> bool:
    """Whether the model is evaluated after the update of round ``k`` (0-based)."""
    return k == total_rounds - 1 or (eval_every > 0 and (k + 1) % eval_every == 0)


def metric_name(model: _Evaluable) -> str:
    """The metric a run reports: accuracy for classification, loss for regression."""
    return "accuracy" if model.task == "classification" else "loss"


def evaluate(model: _Evaluable, w: np.ndarray, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """``model.evaluate`` on the test split as plain floats.

    Weights that an attack drove to inf/NaN must not stop training: when the model
    cannot evaluate them, the run's metric is reported as NaN instead of raising.
    """
    try:
        with np.errstate(all="ignore"):
            out = model.evaluate(w, X, y)
    except Exception:  # any failure of a model's evaluate on bad weights is a NaN metric
        return {metric_name(model): math.nan}
    return {str(key): float(val) for key, val in out.items()}


@dataclass(frozen=True)
class RunSettings:
    """What fixes the round rule of a run, beyond the model.

    Attributes
    ----------
    seed : int
        The run seed: C_k seeds, the sampling stream, the aggregation streams.
    rounds : int
        Total rounds of the run (the last one is always evaluated).
    eval_every : int
        Evaluate after every ``eval_every`` rounds (0: only after the last).
    q : int
        Workers sampled per round (min(q, candidates) when fewer are there).
    tau_ms : float
        The deadline (inf for SGD(τ = ∞)); recorded, the caller keeps the clock.
    order_kind : str
        ``"flat"`` or ``"stratified"`` (``hgo_common.order``).
    groups : tuple of int
        Parameter-group sizes for the stratified order.
    round_cfg : RoundConfig
        d, v, rule, f, step size, algorithm.
    auto_tau : AutoTau, optional
        ``--tau auto``: τ_k is chosen every round by ``hgo_common.deadline`` (``tau_ms``
        is then its upper bound).
    """

    seed: int
    rounds: int
    eval_every: int
    q: int
    tau_ms: float
    order_kind: str
    groups: tuple[int, ...]
    round_cfg: RoundConfig
    auto_tau: AutoTau | None = None


@dataclass(frozen=True)
class RoundPlan:
    """Round k as decided before any work is sent (Algorithm 1, steps 1-2).

    ``sampled`` indexes the caller's candidate list (the server: active sessions in
    worker-id order; the simulator: worker ids 0..n-1), increasing; ``ids`` are the sampled
    workers' ids. ``tau_ms`` is the round's deadline (chosen by the adaptive policy when
    ``choice`` is set).
    """

    k: int
    order_seed: int
    sampled: np.ndarray
    ids: tuple[int, ...] = ()
    tau_ms: float = math.inf
    choice: Choice | None = None


@dataclass(frozen=True)
class WorkerEntry:
    """What the round log says about one sampled worker (its row in ``workers``).

    ``profile``, ``byzantine``, ``rate`` and ``batch_size`` are what the worker *declared*
    in its Join — claims, never used by the server to decide anything. ``identity`` is
    the authenticated identity (None: anonymous). ``bytes`` and ``chunks`` are what the
    server *measured* on the worker's stream this round (None where nothing is measured,
    as in the simulator); the prefix is measured too and passed to :meth:`as_record`.
    """

    id: int
    profile: str
    byzantine: bool
    identity: str | None = None
    rate: float | None = None
    batch_size: int | None = None
    bytes: int | None = None
    chunks: int | None = None

    def as_record(self, prefix: int) -> dict[str, Any]:
        return {
            "id": self.id,
            "identity": self.identity,
            # kept flat for older readers; both are declared, see "declared"
            "profile": self.profile,
            "byzantine": self.byzantine,
            "declared": {
                "profile": self.profile,
                "byzantine": self.byzantine,
                "rate": self.rate,
                "batch_size": self.batch_size,
            },
            # measured by the server
            "prefix": int(prefix),
            "bytes": self.bytes,
            "chunks": self.chunks,
            # the server's observed rate (prefix / ms from broadcast to the last chunk) and
            # that time; None where nothing is measured (the simulator), as for bytes
            "observed_rate": None,
            "delivered_ms": None,
        }


@dataclass(frozen=True)
class Timing:
    """The clock fields of a record, measured by the caller on its own clock.

    Attributes
    ----------
    t_s : float
        Seconds since training started, at the moment the round closed.
    round_ms : float
        Round duration (broadcast to w_{k+1}).
    close_ms : float
        Broadcast to the close of collection (deadline or early close).
    prepare_ms : float
        Start of the round to the broadcast (sampling, encoding w_k).
    early_close : bool
        The round closed before its deadline because every sampled worker was done.
    aggregate_ms : float
        The close itself (b_v, the block's segments through the rule, the update), measured
        on the server (issue 22.5: the block-construction cost, not assumed); 0 in the
        simulator, whose virtual clock charges the server nothing.
    """

    t_s: float
    round_ms: float
    close_ms: float
    prepare_ms: float = 0.0
    early_close: bool = False
    aggregate_ms: float = 0.0


class RoundDriver:
    """The state and the steps of a run's rounds, shared by server and simulator.

    Parameters
    ----------
    settings : RunSettings
    w0 : ndarray of shape (d,)
        Initial weights (``rounds.initial_weights``); kept as float64.
    """

    def __init__(self, settings: RunSettings, w0: np.ndarray) -> None:
        d = settings.round_cfg.d
        w = np.asarray(w0, dtype=np.float64)
        if w.shape != (d,):
            raise ValueError(f"w0 must have shape ({d},), got {w.shape}")
        if settings.q < 1:
            raise ValueError(f"q must be >= 1, got {settings.q}")
        self.settings = settings
        self.round_cfg = settings.round_cfg
        self.d = d
        self.w = w.copy()
        self.sample_rng = rounds.sampling_rng(settings.seed)
        self.rounds_without_quorum = 0
        self.last_block = 0
        self.deadline = (
            DeadlinePolicy(settings.auto_tau, d, round_quorum(self.round_cfg), self.round_cfg.f)
            if settings.auto_tau is not None
            else None
        )

    # ------------------------------------------------------------------ schedule

    @property
    def quorum(self) -> int:
        """Rows a round needs to update the model (:func:`round_quorum`)."""
        return round_quorum(self.round_cfg)

    def evaluates(self, k: int) -> bool:
        """Whether round ``k`` is followed by an evaluation (:func:`evaluates`)."""
        return evaluates(k, self.settings.rounds, self.settings.eval_every)

    # ------------------------------------------------------------------ steps 1-2

    def begin(self, k: int, n_candidates: int, ids: Sequence[int] | None = None) -> RoundPlan:
        """Step 2: sample min(q, n_candidates) of the candidates; C_k's seed; the deadline τ_k.

        ``ids`` are the candidates' worker ids (default 0..n-1): the adaptive deadline
        keeps its estimates per worker id.
        """
        if n_candidates < 0:
            raise ValueError(f"n_candidates must be >= 0, got {n_candidates}")
        if ids is not None and len(ids) != n_candidates:
            raise ValueError(f"{len(ids)} ids for {n_candidates} candidates")
        sampled = (
            rounds.sample_workers(self.sample_rng, n_candidates, self.settings.q)
            if n_candidates
            else np.zeros(0, dtype=np.int64)
        )
        chosen = tuple(int(i) if ids is None else int(ids[int(i)]) for i in sampled)
        choice = self.deadline.choose(chosen) if self.deadline is not None else None
        return RoundPlan(
            k=int(k), order_seed=order.round_seed(self.settings.seed, k), sampled=sampled, ids=chosen,
            tau_ms=choice.tau_ms if choice is not None else self.settings.tau_ms, choice=choice,
        )  # fmt: skip

    def target_met(self, prefixes: np.ndarray) -> bool:
        """Adaptive deadline only: the prefixes held now already meet the block target."""
        return self.deadline is not None and self.deadline.met(prefixes)

    def order(self, plan: RoundPlan) -> np.ndarray:
        """Step 1: C_k, the permutation the workers expand from ``plan.order_seed``."""
        s = self.settings
        return order.make_order(plan.order_seed, self.d, s.order_kind, s.groups)

    # ------------------------------------------------------------------ steps 4-6

    def close(
        self,
        plan: RoundPlan,
        values: np.ndarray,
        prefixes: np.ndarray,
        c_k: np.ndarray,
        delivered_ms: np.ndarray | None = None,
    ) -> RoundOutcome:
        """Steps 4-6: block, robust aggregation, w_{k+1} = w_k - γ_k AG.

        Parameters
        ----------
        values : ndarray of shape (q, d)
            The round buffer in C_k order (row i valid up to ``prefixes[i]``).
        prefixes : ndarray of shape (q,)
        c_k : ndarray of shape (d,)
        delivered_ms : ndarray of shape (q,), optional
            When each row's last value arrived, in ms after the broadcast (the close time
            for rows that sent nothing): what the adaptive deadline learns from.
        """
        if self.deadline is not None and delivered_ms is not None:
            self.deadline.observe(plan.ids, prefixes, delivered_ms)
        outcome = rounds.close_round(
            values, prefixes, c_k, self.round_cfg, rounds.aggregation_rng(self.settings.seed, plan.k)
        )
        self.w = rounds.apply_update(self.w, outcome)
        self.last_block = outcome.block
        if not outcome.quorum:
            self.rounds_without_quorum += 1
        return outcome

    # ------------------------------------------------------------------ the log

    def record(
        self,
        plan: RoundPlan,
        outcome: RoundOutcome,
        prefixes: np.ndarray,
        workers: Sequence[WorkerEntry],
        timing: Timing,
        *,
        nonfinite: np.ndarray | None = None,
        f_enforceable: bool = True,
    ) -> dict[str, Any]:
        """The round-log record of round ``plan.k`` (schema: ``hgo_common.roundlog``).

        Parameters
        ----------
        workers : sequence of WorkerEntry
            One per sampled row, in row order.
        nonfinite : ndarray of shape (q,), bool, optional
            Rows whose prefix the non-finite policy cut (``RoundCollector.truncated``).
        f_enforceable : bool
            Whether every sampled row stands for an identity of its own (the server:
            per-worker tokens or mutual TLS; the simulator: always). When False, "at most f
            Byzantine among the sampled" is not enforceable and the record says so.
        """
        if len(workers) != len(prefixes):
            raise ValueError(f"{len(workers)} worker entries for {len(prefixes)} prefixes")
        cfg = self.round_cfg
        record: dict[str, Any] = {
            "round": plan.k,
            "t": timing.t_s,
            "tau_ms": plan.tau_ms if math.isfinite(plan.tau_ms) else None,
            "algorithm": cfg.algorithm,
            "rule": cfg.rule,
            "v": cfg.v,
            "sampled": len(workers),
            "responded": int(np.count_nonzero(prefixes)),
            "block": int(outcome.block),
            "quorum": bool(outcome.quorum),
            "step_size": float(outcome.step_size),
            "round_ms": timing.round_ms,
            "close_ms": timing.close_ms,
            "prepare_ms": timing.prepare_ms,
            "aggregate_ms": timing.aggregate_ms,
            "early_close": timing.early_close,
            "workers": [w.as_record(int(p)) for w, p in zip(workers, prefixes, strict=True)],
            "used": [workers[r].id for r in outcome.used],
            "nonfinite": [] if nonfinite is None else [workers[int(r)].id for r in np.flatnonzero(nonfinite)],
            "bounded_rows": int(outcome.bounded),
            "refused": outcome.refused,
            "f_enforceable": bool(f_enforceable),
            "rates": None,  # measured rates per profile: a deployment's (hgo_server.fedeval)
        }
        if plan.choice is not None and self.settings.auto_tau is not None:
            record["tau_auto"] = plan.choice.as_record(self.settings.auto_tau.target)
        return record
