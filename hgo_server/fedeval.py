"""Federated evaluation and per-round measured rates on the server (issue 21, items 2 and 3).

Federated evaluation (``--evaluation federated|both``; docs/operations.md "Federated
evaluation"). A worker holds out ``--eval-fraction`` of its data (told in its Welcome).
Round k's task asks the sampled workers to evaluate its weights when the server's schedule
evaluated the model after round k-1 (``RoundDriver.evaluates(k - 1)``): the task's weights
*are* that model, w_k, so the federated values in record k and the server's own test-split
values in record k-1 score the same weights. Reports count while round k is open, up to the
moment its record is written; later ones are counted as late and dropped (whatever has
arrived at the deadline counts, as for gradients). The last model of a run is scored by
the server only: no round follows it.

A Byzantine device can lie (paper §2). Each :class:`~hgo_server.messages.EvalReport` is
checked: the session must have been asked, for that round, once (a second report ends the
session, as an unasked one does); values must be finite and in range (loss >= 0, accuracy
in [0, 1], present exactly for classification, examples >= 1), else the report is refused
(counted, listed with its reason, not aggregated). The claimed count is bounded, not
believed: a device the server shipped its shard to holds a known number of validation rows
(``hgo_common.federated.holdout_count``) and a larger claim is clipped to it (and flagged);
a device whose count cannot be known weighs at most the round's median count
(``federated.bounded_weights``). The record gives the example-weighted mean, the median of
the per-device values (robust while fewer than half of the reports lie:
``hgo_common.federated``), the report count and every device's values.

**No decision of the server depends on reported metrics.** They go to the round log and
to the ``hgo_federated_*`` gauges only. The server's decisions and what they read: the
learning-rate schedule (``rounds.step_size``: the block size), the adaptive deadline
(``--tau auto``: prefixes and delivery times it measures itself), checkpoints (every
``--checkpoint-every`` rounds; there is no "best" checkpoint), the end of the run (the
round count or a stop request; no early stopping), eviction (delivered prefixes). The
server's own evaluation (``last_eval``) feeds Status, the summary and the checkpoint's
informational ``evaluation`` field; federated values are kept apart from it.

Measured rates (issue 21 item 3). The server observes, per sampled worker and round, the
prefix it received over the time from the task's broadcast to that worker's last chunk
(``observed_rate``, coordinates per ms, in each ``workers`` entry; per-profile medians in
``rates.observed``). Each worker also reports what it measured
(:class:`~hgo_server.messages.RoundReport`, ``hgo_worker.pacing.RoundMeter``): it sends it
when its round ends, usually after the server has written that round's record, so record
k carries the self-reports of round k-1 under ``rates.self_reported`` (labelled with their
round; the last round's are not logged). They are claims: checked for range, logged as
self-reported, never used.
"""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hgo_common import federated

from .errors import FailedPrecondition, InvalidArgument, PermissionDenied
from .logsafe import RateLimitedLog
from .messages import EvalReport, RoundReport
from .sessions import SessionRecord
from .state import ServerState

log = logging.getLogger("hgo.server")
_limited = RateLimitedLog(log, interval=10.0)

NOT_ASKED = "eval-not-asked"
DUPLICATE = "duplicate-report"
OUT_OF_RANGE = "report-out-of-range"
LATE_REPORT = "late-report"
NOT_SAMPLED = "report-not-sampled"


@dataclass
class _Eval:
    """One device's evaluation report of the open federated round, as checked."""

    sess: SessionRecord
    claimed: int
    known: int | None
    loss: float
    accuracy: float | None
    refused: str | None = None

    def as_record(self, weight: int | None = None) -> dict[str, Any]:
        """The device's entry; ``weight`` is its bounded count (``federated.bounded_weights``)."""
        sess = self.sess
        out: dict[str, Any] = {"id": sess.worker_id, "name": sess.name, "profile": sess.profile}
        if self.refused is not None:
            out["refused"] = self.refused
            return out
        used = self.used if weight is None else weight
        out.update(examples=used, loss=self.loss)
        if self.accuracy is not None:
            out["accuracy"] = self.accuracy
        if used != self.claimed:
            out["examples_claimed"] = self.claimed  # more than it may weigh: clipped
        return out

    @property
    def used(self) -> int:
        """The claim, clipped to what the server knows the device holds (when it knows)."""
        return self.claimed if self.known is None else min(self.claimed, self.known)


def _rate_entry(sess: SessionRecord, rep: RoundReport) -> dict[str, Any]:
    """A self-reported rate as it goes to the round log (coordinates per ms; λ per data point)."""
    rate = rep.released / rep.release_ms if rep.release_ms > 0 else 0.0
    compute = rep.computed / rep.compute_ms if rep.compute_ms > 0 else 0.0
    return {
        "id": sess.worker_id, "name": sess.name, "profile": sess.profile, "computed": rep.computed,
        "released": rep.released, "compute_ms": round(rep.compute_ms, 3),
        "release_ms": round(rep.release_ms, 3), "rate": rate, "compute_rate": compute,
        "lambda": compute * rep.batch_size, "batch_size": rep.batch_size,
    }  # fmt: skip


def _profile_medians(profiles: Sequence[str], values: Sequence[float]) -> dict[str, dict[str, float | int]]:
    out: dict[str, dict[str, float | int]] = {}
    for p in sorted(set(profiles)):
        v = [x for q, x in zip(profiles, values, strict=True) if q == p]
        out[p] = {"median": float(np.median(v)), "n": len(v)}
    return out


class Reports(ServerState):
    """Evaluation and rate reports (a part of :class:`hgo_server.server.Server`)."""

    def _init_reports(self) -> None:
        self._fed_round = -1  # the round whose task asked for an evaluation (-1: none open)
        self._fed_reports: dict[str, _Eval] = {}
        self._fed_asked = 0
        # per session, the last round it was asked to evaluate (late vs never asked); weak:
        # sessions that left take their entry with them
        self._asked: weakref.WeakKeyDictionary[SessionRecord, int] = weakref.WeakKeyDictionary()
        # self-reported rates by round, then session id (at most q entries per kept round)
        self._rate_reports: dict[int, dict[str, dict[str, Any]]] = {}
        self._rates_logged = -1  # rounds <= this one are logged (or given up): later reports are late

    # ------------------------------------------------------------------ schedule

    @property
    def eval_share(self) -> float:
        """The Welcome's ``eval_fraction``: what a worker holds out (0 with ``--evaluation server``)."""
        return float(self.cfg.eval_fraction) if self.cfg.evaluation != "server" else 0.0

    def federated_round(self, k: int) -> bool:
        """Whether round k's task asks for a federated evaluation of its weights (module docstring)."""
        return self.cfg.evaluation != "server" and k > 0 and self.driver.evaluates(k - 1)

    def ask_evaluation(self, k: int, sampled: Sequence[SessionRecord]) -> None:
        """Round k's task asks ``sampled`` to evaluate (called at the broadcast)."""
        self._fed_round, self._fed_reports, self._fed_asked = k, {}, len(sampled)
        for sess in sampled:
            self._asked[sess] = k

    # ------------------------------------------------------------------ incoming

    def on_eval_report(self, sess: SessionRecord, rep: EvalReport) -> None:
        """Check one EvalReport (module docstring); fatal violations raise a ProtocolError."""
        self._check_session(sess, rep.session_id)
        asked = self._asked.get(sess)
        if asked is None or rep.round != asked:
            self.reject(NOT_ASKED)
            raise FailedPrecondition(
                NOT_ASKED, f"evaluation report for round {rep.round}, which was not asked of this worker"
            )
        if rep.round != self._fed_round:
            self.reject(LATE_REPORT)  # asked, but its round's record is written: dropped
            return
        if sess.session_id in self._fed_reports:
            self.reject(DUPLICATE)
            raise InvalidArgument(DUPLICATE, f"a second evaluation report for round {rep.round}")
        known = None
        if sess.shard_rows is not None:
            known = federated.holdout_count(sess.shard_rows, self.eval_share)
        entry = _Eval(sess, int(rep.examples), known, float(rep.loss), rep.accuracy)
        entry.refused = self._eval_range(rep)
        if entry.refused is not None:
            self.reject(OUT_OF_RANGE)
            _limited.log(logging.INFO, OUT_OF_RANGE, "worker %d: evaluation report refused: %s",
                         sess.worker_id, entry.refused)  # fmt: skip
        self._fed_reports[sess.session_id] = entry

    def _eval_range(self, rep: EvalReport) -> str | None:
        """Why a report's values are out of range (None: in range)."""
        if rep.examples < 1:
            return f"examples must be >= 1, got {rep.examples}"
        if not (math.isfinite(rep.loss) and rep.loss >= 0):
            return f"loss must be a finite number >= 0, got {rep.loss}"
        classification = self.metric_name == "accuracy"
        if classification and rep.accuracy is None:
            return "accuracy missing (the model is a classifier)"
        if not classification and rep.accuracy is not None:
            return "accuracy given for a regression model"
        if rep.accuracy is not None and not (math.isfinite(rep.accuracy) and 0 <= rep.accuracy <= 1):
            return f"accuracy must be in [0, 1], got {rep.accuracy}"
        return None

    def on_round_report(self, sess: SessionRecord, rep: RoundReport) -> None:
        """Check one RoundReport and keep it for the next record (module docstring)."""
        self._check_session(sess, rep.session_id)
        if not sess.was_sampled(rep.round):
            self.reject(NOT_SAMPLED)
            raise FailedPrecondition(
                NOT_SAMPLED, f"round report for round {rep.round}, which this worker was not sampled into"
            )
        if rep.round <= self._rates_logged:
            self.reject(LATE_REPORT)
            return
        held = self._rate_reports.setdefault(rep.round, {})
        if sess.session_id in held:
            self.reject(DUPLICATE)
            raise InvalidArgument(DUPLICATE, f"a second round report for round {rep.round}")
        d = self.d
        ok = (
            rep.computed <= d and rep.released <= d and rep.batch_size >= 1
            and math.isfinite(rep.compute_ms) and rep.compute_ms >= 0
            and math.isfinite(rep.release_ms) and rep.release_ms >= 0
        )  # fmt: skip
        if not ok:
            self.reject(OUT_OF_RANGE)
            held[sess.session_id] = {"id": sess.worker_id, "name": sess.name, "profile": sess.profile,
                                     "refused": f"out of range (d={d}): {rep}"[:300]}  # fmt: skip
            return
        held[sess.session_id] = _rate_entry(sess, rep)

    def _check_session(self, sess: SessionRecord, session_id: str) -> None:
        if session_id != sess.session_id:
            self.reject("session-id")
            raise PermissionDenied("session-id", "report names a session_id other than this stream's session")

    # ------------------------------------------------------------------ the record

    def federated_record(self, k: int) -> dict[str, Any] | None:
        """Round k's federated evaluation for its record (None when round k did not ask); closes it."""
        if self._fed_round != k:
            return None
        entries = list(self._fed_reports.values())
        self._fed_round, self._fed_reports = -1, {}
        good = [e for e in entries if e.refused is None]
        weights = federated.bounded_weights([e.used for e in good], [e.known for e in good])
        out: dict[str, Any] = {
            "model_round": k - 1,  # the weights of round k's task: the model after round k-1's update
            "asked": self._fed_asked,
            "reports": len(good),
            "refused": len(entries) - len(good),
            "examples": int(weights.sum()),
            "loss": federated.aggregate([e.loss for e in good], weights),
        }
        if self.metric_name == "accuracy":
            out["accuracy"] = federated.aggregate([e.accuracy or 0.0 for e in good], weights)
        bounded = {id(e): int(w) for e, w in zip(good, weights, strict=True)}
        out["devices"] = [e.as_record(bounded.get(id(e))) for e in entries]
        stat = out.get(self.metric_name, out["loss"])
        log.info(
            "round %d: federated evaluation of the model after round %d: %d/%d reports (%d refused), "
            "%s median %.4f, weighted mean %.4f (self-reported)", k, k - 1, len(good), self._fed_asked,
            out["refused"], self.metric_name, stat["median"], stat["mean"],
        )  # fmt: skip
        m = self.metrics
        m.federated_reports.set(len(good))
        for name in ("loss", "accuracy"):
            if name in out:
                for stat in ("mean", "median"):
                    m.federated.labels(metric=name, stat=stat).set(out[name][stat])
        return out

    def rates_record(
        self, k: int, sampled: Sequence[SessionRecord], prefixes: np.ndarray, delivered_ms: np.ndarray,
        record: dict[str, Any],
    ) -> None:  # fmt: skip
        """Add round k's observed rates to ``record`` (its ``workers`` entries and ``rates``) and
        the self-reports of round k-1."""
        profiles = [s.profile for s in sampled]
        observed = [
            float(p) / float(t) if p > 0 and t > 0 else 0.0
            for p, t in zip(prefixes, delivered_ms, strict=True)
        ]
        for entry, rate, t, p in zip(record["workers"], observed, delivered_ms, prefixes, strict=True):
            entry["observed_rate"] = rate
            entry["delivered_ms"] = round(float(t), 3) if p > 0 else None
        for prof, rate in zip(profiles, observed, strict=True):
            self.metrics.observed_rate.labels(profile=prof).observe(rate)
        reported = list(self._rate_reports.pop(k - 1, {}).values())
        for old in [r for r in self._rate_reports if r < k]:  # rounds before k-1: nothing more is logged
            del self._rate_reports[old]
        self._rates_logged = k - 1
        good = [r for r in reported if "refused" not in r]
        for r in good:
            self.metrics.reported_rate.labels(profile=r["profile"]).observe(r["rate"])
        record["rates"] = {
            "unit": "coordinates/ms",
            "observed": _profile_medians(profiles, observed),
            "self_reported": {
                "round": k - 1,
                "profiles": _profile_medians([r["profile"] for r in good], [r["rate"] for r in good]),
                "devices": sorted(reported, key=lambda r: int(r["id"])),
            },
        }
