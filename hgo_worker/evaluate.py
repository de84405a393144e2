"""The worker's side of federated evaluation and of its per-round measured rate (issue 21).

Federated evaluation (``hgo_common.federated``; docs/operations.md "Federated
evaluation"): the Welcome's ``eval_fraction`` is the share of this worker's data held out
as its validation split, drawn once per worker from its seed (the same split after a
reconnect) and never trained on. When a RoundTask has ``evaluate`` set, the worker scores
the task's weights on that split *before* computing its gradient (a forward pass over a
few dozen rows: the cost is charged to that round, as a real device would pay it) and
queues an :class:`~hgo_common.net.messages.EvalReport`.

A Byzantine worker (``--byzantine``, any attack) lies in its report: the best possible
metrics (accuracy 1, loss 0) with a huge example count, :data:`LIE_EXAMPLES`. The server
must neither believe nor be moved by it (``hgo_server.fedeval``).

The measured rate (paper §4.2's λ_i, observed rather than assumed): every round the
release loop feeds a :class:`~hgo_worker.pacing.RoundMeter`; when the round ends (all
released, the local deadline, or RoundClosed) :func:`round_report` turns it into a
``RoundReport`` the server logs as self-reported.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from hgo_common import driver, federated
from hgo_common.models import ModelProtocol
from hgo_common.net import messages as msgs

from .checks import Refused
from .pacing import RoundMeter

__all__ = ["LIE_EXAMPLES", "Validation", "eval_report", "round_report", "split_validation"]

LIE_EXAMPLES = 2**32 - 1
"""The example count a lying Byzantine worker claims (the largest a uint32 holds)."""
_SPLIT_SALT = 0xE7A1  # keeps the split's stream apart from the worker's other streams


@dataclass(frozen=True)
class Validation:
    """The held-out validation split: ``X`` (m, p) float32 and ``y`` (m,)."""

    X: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


def split_validation(
    X: np.ndarray, y: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, Validation | None]:
    """Hold out ``fraction`` of (X, y): (training X, training y, validation or None).

    ``fraction`` comes from the server's Welcome; a value outside
    ``[0, federated.MAX_EVAL_FRACTION]`` is refused (a hostile server cannot make the
    worker train on nothing). ``0``: nothing is held out and training is unchanged.

    Raises
    ------
    Refused
        Naming the bad fraction and the allowed range.
    """
    if not (math.isfinite(fraction) and 0.0 <= fraction <= federated.MAX_EVAL_FRACTION):
        raise Refused("Welcome.eval_fraction", fraction, f"expected 0..{federated.MAX_EVAL_FRACTION}")
    if fraction == 0.0 or federated.holdout_count(len(y), fraction) == 0:
        return X, y, None
    rng = np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_SALT]))
    train, val = federated.holdout_split(len(y), fraction, rng)
    return X[train], y[train], Validation(X[val], y[val])


def eval_report(
    model: ModelProtocol, weights: np.ndarray, val: Validation | None, round_index: int, session_id: str,
    *, lying: bool = False,
) -> msgs.EvalReport | None:  # fmt: skip
    """The EvalReport of ``weights`` on ``val`` (None when nothing is held out).

    ``lying``: a Byzantine worker's report, the best metrics with :data:`LIE_EXAMPLES`.
    """
    if lying:
        classification = getattr(model, "task", "classification") == "classification"
        return msgs.EvalReport(round_index, session_id, LIE_EXAMPLES, 0.0, 1.0 if classification else None)
    if val is None or not len(val):
        return None
    res = driver.evaluate(model, weights, val.X, val.y)
    return msgs.EvalReport(round_index, session_id, len(val), res.get("loss", math.nan), res.get("accuracy"))


def round_report(meter: RoundMeter, round_index: int, session_id: str) -> msgs.RoundReport:
    """The RoundReport of one round's :class:`RoundMeter`."""
    return msgs.RoundReport(
        round=round_index, session_id=session_id, computed=meter.computed, released=meter.released,
        compute_ms=meter.compute_ms, release_ms=meter.last_release_ms, batch_size=meter.batch_size,
    )  # fmt: skip


def timed_ms(t0: float) -> float:
    """Milliseconds since ``t0`` (``time.perf_counter``)."""
    return (time.perf_counter() - t0) * 1000.0
