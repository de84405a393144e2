"""What the server does when a round closes: Algorithm 1 steps 4–6, and the baselines.

The networked server (hgo_server) and the in-process simulator both call
``close_round``, so a result found in simulation holds on the wire.

Algorithms
----------
``hgo``
    The paper's method: block B_k from the v-th longest prefix, AR per segment
    (hgo_common.blocks), w_{k+1} = w_k - gamma_k * AG.
``sgd``
    The paper's baselines. Only complete gradients (prefix == d) count; partial ones
    are discarded. With tau = inf the server waits for every sampled worker, so every
    responding worker is complete: that is SGD(tau = inf). With a finite tau it is
    SGD(tau < inf).

Quorum
------
A round updates the model only when enough workers answered for the rule to be
defined: for ``hgo``, at least v non-empty prefixes; for ``sgd``, at least
``max(1, rule.min_rows(f))`` complete gradients. Otherwise the model is unchanged and
the round is counted as a round without quorum.

Step size
---------
``constant``: gamma_k = lr. ``inv-sqrt-block``: gamma_k = lr / sqrt(|B_k|), the
paper's suggestion (§4.1), with ``lr`` the proportionality constant.

Poison guard
------------
A Byzantine row may hold any finite float32 value (3e38 is finite), and an average of
such rows overflows w. Two defences, applied here so the server and the simulator share
them:

* **Row bound** (:class:`RowBound`, ``--row-bound``), applied to every row's prefix
  *before* aggregation. The default, ``median-norm:10``, is scaled to the round's own
  rows: a row's prefix norm is held to 10 times the median, over the responding rows, of
  the prefix norms per coordinate (``|V_i| / sqrt(p_i)``), times ``sqrt(p_i)``; a row
  above it is scaled down onto it. A median over rows moves only between honest values
  while fewer than half the responding rows are Byzantine, so f attackers cannot raise
  the bound; an attacker's row then weighs at most 10 honest rows' norms, and once it is
  gone nothing of it remains but the steps already taken, which honest rounds undo
  (tests/test_row_bound.py: under ``average`` 3 attackers of 13 sending 3e38 for 5
  rounds, then gone, leave a model within 2 accuracy points of the honest run 2 rounds
  later; the test allows 10). Why 10, measured (``fig5 --quick``, average without attack,
  seeds 0 and 1, 3,200 rows each): C = 10 clips 70 and 65 honest rows and ends at
  0.911 / 0.925 against 0.914 / 0.930 unclipped; C = 20 clips 10 / 14 rows with no
  accuracy change, but the recovery above takes 40 rounds, and
  with C = 30 the model is still 13 points below honest 20 rounds after the attack.
  The absolute bounds stay available: ``coord:B`` clips each value to [-B, B];
  ``norm:B`` scales a row whose prefix has an l2 norm above B down to norm B; ``off``
  disables it (by choice only). Under an absolute bound one row can move any coordinate
  of the aggregate by at most B (average, median and every rule whose output lies in
  the convex hull of its rows), so a single worker cannot overflow the model, but a
  bound far above honest gradients (the former default ``coord:1e6``) leaves a model
  wrecked for good after a short attack (issue 20, item 5).
* **Finite update** (:func:`apply_update`): an update that would leave a coordinate of w
  non-finite *in float32*, the dtype w travels in (|w| > float32 max, NaN or inf), is
  refused; w stays at its last value and the outcome is marked ``refused`` so the caller
  counts it.

Randomness
----------
Randomized rules (bucketing, Karimireddy et al. 2022) must draw fresh randomness every
round — fixed buckets would let an adversary learn which honest rows share its bucket.
``aggregation_rng(seed, k)`` is the generator of round k; the server and the simulator
both pass it to ``close_round``, so a simulated run and a networked one aggregate
identically.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import aggregators, blocks

ALGORITHMS = ("hgo", "sgd")
LR_SCHEDULES = ("constant", "inv-sqrt-block")
ROW_BOUND_KINDS = ("coord", "norm", "median-norm", "off")
# The default --row-bound: scaled to the round's rows (see the module docstring). The
# server's and the simulator's configuration defaults should read this constant.
DEFAULT_ROW_BOUND = "median-norm:10"
REFUSED_NON_FINITE = "non-finite-update"
_F32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class RowBound:
    """The most one row may contribute (see the module docstring, "Poison guard").

    ``kind``: ``coord`` (per-coordinate clip to [-bound, bound]), ``norm`` (l2 clip of
    the prefix to ``bound``), ``median-norm`` (l2 clip of the prefix to ``bound`` times
    the round's median per-coordinate norm, times sqrt of the prefix length) or ``off``.
    """

    kind: str = "coord"
    bound: float = 1e6

    def __post_init__(self) -> None:
        if self.kind not in ROW_BOUND_KINDS:
            raise ValueError(f"row bound kind must be one of {ROW_BOUND_KINDS}, got {self.kind!r}")
        if self.kind != "off" and not (math.isfinite(self.bound) and 0 < self.bound <= _F32_MAX):
            raise ValueError(f"row bound must be a finite number in (0, {_F32_MAX:.3g}], got {self.bound}")

    @classmethod
    def parse(cls, text: str) -> RowBound:
        """``"median-norm:10"``, ``"coord:1e6"``, ``"norm:100"`` or ``"off"``; ValueError naming
        the text otherwise."""
        t = str(text).strip().lower()
        if t == "off":
            return cls("off", math.inf)
        kind, sep, num = t.partition(":")
        if not sep or kind not in ("coord", "norm", "median-norm"):
            raise ValueError(
                f"expected coord:B, norm:B or off, or median-norm:C (C times the round's median row norm), "
                f"got {text!r}"
            )
        try:
            value = float(num)
        except ValueError:
            raise ValueError(
                f"expected coord:B, norm:B or off, or median-norm:C, with B or C a number, got {text!r}"
            ) from None
        return cls(kind, value)

    def __str__(self) -> str:
        return "off" if self.kind == "off" else f"{self.kind}:{self.bound:g}"


def row_norms(values: np.ndarray, prefixes: np.ndarray) -> np.ndarray:
    """The l2 norm of each row's prefix, shape (q,), float64.

    One float32 dot per row (one pass over the prefixes, no copy); a row whose squares
    overflow float32 (|v| above ~1e19) is redone in float64 chunks, where they cannot.
    """
    p = np.asarray(prefixes, dtype=np.int64)
    out = np.zeros(p.size)
    for i in range(p.size):  # a loop over rows (q), never over coordinates
        row = values[i, : p[i]]
        with np.errstate(over="ignore", invalid="ignore"):
            sq = float(np.dot(row, row))
        if not math.isfinite(sq):
            sq = sum(
                float(np.dot(c, c))
                for c in (row[j : j + 65536].astype(np.float64) for j in range(0, row.size, 65536))
            )
        out[i] = math.sqrt(sq)
    return out


def row_limits(values: np.ndarray, prefixes: np.ndarray, bound: RowBound) -> tuple[np.ndarray, np.ndarray]:
    """(norms, limits) of the rows' prefixes under a ``norm`` or ``median-norm`` bound, shape (q,)."""
    p = np.asarray(prefixes, dtype=np.int64)
    norms = row_norms(values, p)
    if bound.kind == "norm":
        return norms, np.full(p.size, bound.bound)
    live = p > 0
    if not live.any():
        return norms, np.full(p.size, np.inf)
    per_coord = norms[live] / np.sqrt(p[live])
    med = float(np.median(per_coord))
    return norms, bound.bound * med * np.sqrt(p)


def bound_rows(values: np.ndarray, prefixes: np.ndarray, bound: RowBound) -> tuple[np.ndarray, int]:
    """``values`` with every row's prefix held to ``bound``; (rows, number of rows changed).

    Returns the input itself (no copy) when no row exceeds the bound, so the common case
    costs one read pass. Values past a row's prefix are never read by the aggregation and
    are left as they are (``coord`` may clip them too, harmlessly).
    """
    if bound.kind == "off" or values.size == 0:
        return values, 0
    p = np.asarray(prefixes, dtype=np.int64)
    width = int(p.max(initial=0))
    if width == 0:
        return values, 0
    b = bound.bound
    head = values[:, :width]
    if bound.kind == "coord":
        if not (head.max() > b or head.min() < -b):
            return values, 0
        mask = np.arange(width) < p[:, None]
        over = (np.abs(head) > b) & mask
        changed = int(np.count_nonzero(over.any(axis=1)))
        out = np.array(values, copy=True)
        np.clip(out[:, :width], -b, b, out=out[:, :width])
        return out, changed
    # norm and median-norm: float64 norms, so a row of 3e38 values has a finite norm
    norms, limits = row_limits(values, p, bound)
    over_rows = np.flatnonzero((norms > limits) & (p > 0))
    if over_rows.size == 0:
        return values, 0
    out = np.array(values, copy=True)
    for i in over_rows:
        scale = limits[i] / norms[i]
        out[i, : p[i]] = (np.asarray(out[i, : p[i]], dtype=np.float64) * scale).astype(out.dtype)
    return out, int(over_rows.size)


AGGREGATION_STREAM = 0x41475231  # "AGR1": keeps this stream apart from the order seeds


def aggregation_rng(run_seed: int, k: int) -> np.random.Generator:
    """The generator randomized rules draw from in round k of the run seeded ``run_seed``.

    Derived from (run seed, k) alone, so it differs between rounds, replays exactly for
    the same pair, and is the same in the server and the simulator. Independent of the
    order stream (``order.round_seed`` hashes ``[seed, k]``; this adds a stream tag).
    """
    if int(k) < 0:
        raise ValueError(f"round index k must be >= 0, got {k}")
    return np.random.default_rng(np.random.SeedSequence([int(run_seed) % 2**32, int(k), AGGREGATION_STREAM]))


# ----------------------------------------------------------------- run seeding
# One run seed decides the data shards, w_0 and the sampling stream. The server, the
# simulator and a worker given ``--shard i/n`` all derive them here, so a simulated run
# and a networked one with the same seed start from the same model and shards.


def shard_split(y_train: np.ndarray, num_shards: int, partition: str, seed: int) -> list[np.ndarray]:
    """The run's data shards: index arrays into the training split, one per shard."""
    from .datasets import partition as split  # numpy only; keeps this module light

    return split(y_train, num_shards, partition, np.random.default_rng(int(seed)))


def initial_weights(model: Any, seed: int) -> np.ndarray:
    """w_0 of the run: ``model.init`` on the run seed, as float64."""
    return np.asarray(model.init(np.random.default_rng(int(seed))), dtype=np.float64)


def sampling_rng(seed: int) -> np.random.Generator:
    """The stream that picks each round's q workers."""
    return np.random.default_rng([int(seed), 1])


def sample_workers(rng: np.random.Generator, n: int, q: int) -> np.ndarray:
    """Indices of min(q, n) of n workers, uniformly without replacement, in increasing order."""
    return np.sort(rng.choice(n, size=min(q, n), replace=False))


def default_quorum(q: int, rule: str, f: int) -> int:
    """Default v: half of q, but never fewer rows than the rule needs for f."""
    need = aggregators.get(rule).min_rows(f)
    return max(1, min(q, max(math.ceil(q / 2), need)))


# The paper's quorum (issue 11 cites §4.2: v is lower-bounded by f/α) as the authors' code sets it
# (karimboubouh/HgO src/network.py ParamServer.train: v = int(byzantine / alpha) + 1,
# alpha from src/utils.py --alpha, default 0.5).
AUTHORS_ALPHA = 0.5
QUORUM_AUTO = "auto"


def auto_quorum(q: int, rule: str, f: int, alpha: float = AUTHORS_ALPHA) -> int:
    """The paper's v: ``floor(f / alpha) + 1``, never fewer than the rule's ``min_rows(f)``, at most q.

    ``alpha`` is the rule's breakdown ratio (the largest Byzantine fraction it
    tolerates); 0.5 is the authors' default and the breakdown point of the median. With
    ``f = 0`` this is v = 1: an honest round aggregates on the single longest prefix.
    The authors' server uses the number of Byzantine workers *sampled* in the round; we
    use the f the rule is told to tolerate (the server cannot know who is Byzantine).

    Raises
    ------
    ValueError
        ``alpha`` not in (0, 1], ``f < 0``, ``q < 1`` or an unknown rule.
    """
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0.0 < alpha <= 1.0:
        raise ValueError(f"quorum auto: alpha (breakdown ratio) must be in (0, 1], got {alpha!r}")
    if isinstance(f, bool) or int(f) != f or f < 0:
        raise ValueError(f"quorum auto: f must be an integer >= 0, got {f!r}")
    if isinstance(q, bool) or int(q) != q or q < 1:
        raise ValueError(f"quorum auto: q must be an integer >= 1, got {q!r}")
    need = aggregators.get(rule).min_rows(int(f))
    return max(1, min(int(q), max(math.floor(int(f) / alpha + 1e-9) + 1, need)))


def resolve_quorum(v: int | str | None, q: int, rule: str, f: int) -> int:
    """A quorum setting as an integer: None → :func:`default_quorum`, "auto" → :func:`auto_quorum`."""
    if v is None:
        return default_quorum(q, rule, f)
    if isinstance(v, str):
        if v.strip().lower() == QUORUM_AUTO:
            return auto_quorum(q, rule, f)
        raise ValueError(f"quorum v must be an integer >= 1 or {QUORUM_AUTO!r}, got {v!r}")
    if isinstance(v, bool) or int(v) != v or v < 1:
        raise ValueError(f"quorum v must be an integer >= 1 or {QUORUM_AUTO!r}, got {v!r}")
    return int(v)


@dataclass(frozen=True)
class RoundConfig:
    """The fixed parameters of the round rule."""

    d: int
    v: int
    rule: str = "average"
    f: int = 0
    lr: float = 0.1
    lr_schedule: str = "constant"
    algorithm: str = "hgo"
    row_bound: RowBound = field(default_factory=lambda: RowBound.parse(DEFAULT_ROW_BOUND))

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.d < 1:
            raise ValueError(f"d must be >= 1, got {self.d}")
        if self.v < 1:
            raise ValueError(f"quorum v must be >= 1, got {self.v}")
        if self.f < 0:
            raise ValueError(f"f must be >= 0, got {self.f}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"learning rate must be a positive finite number, got {self.lr}")
        aggregators.get(self.rule)  # raises on an unknown name


@dataclass
class RoundOutcome:
    """The result of closing one round."""

    block: int  # b_v (hgo) or d when an sgd round updated, 0 otherwise
    quorum: bool
    step_size: float = 0.0
    used: list[int] = field(default_factory=list)  # rows that contributed to the update
    update: np.ndarray | None = None  # full d-vector AG in model coordinates, or None
    bounded: int = 0  # rows the row bound changed
    refused: str | None = None  # set by apply_update when the update was refused (why)


def round_quorum(cfg: RoundConfig) -> int:
    """Rows a round needs to update the model: v (hgo) or ``max(1, min_rows(f))`` complete
    gradients (sgd). The one place this rule is written: :func:`close_round` and the round
    driver's wait for enough workers both read it."""
    if cfg.algorithm == "sgd":
        return max(1, aggregators.get(cfg.rule).min_rows(cfg.f))
    return cfg.v


def effective_prefixes(prefixes: np.ndarray, cfg: RoundConfig) -> np.ndarray:
    """Prefix lengths as the algorithm counts them (sgd: partial gradients become 0)."""
    p = np.asarray(prefixes, dtype=np.int64)
    if cfg.algorithm == "sgd":
        return np.where(p >= cfg.d, cfg.d, 0)
    return p


def step_size(cfg: RoundConfig, block: int) -> float:
    if cfg.lr_schedule == "inv-sqrt-block":
        return cfg.lr / math.sqrt(block)
    return cfg.lr


def close_round(
    values: np.ndarray,
    prefixes: np.ndarray,
    order: np.ndarray,
    cfg: RoundConfig,
    rng: np.random.Generator | None = None,
) -> RoundOutcome:
    """Aggregate one round.

    Parameters
    ----------
    values : ndarray of shape (q, d)
        The round buffer, row i in C_k order (only the prefix is read).
    prefixes : ndarray of shape (q,)
        The prefix length each sampled worker delivered before the deadline.
    order : ndarray of shape (d,)
        C_k, the coordinate order of the round.
    cfg : RoundConfig
    rng : np.random.Generator, optional
        Forwarded to the rule only when it (or a pre-aggregation step) takes ``rng``
        (bucketing); pass ``aggregation_rng(seed, k)``. Other rules ignore it.
    """
    p = effective_prefixes(prefixes, cfg)
    responded = int(np.count_nonzero(p))
    values, bounded = bound_rows(np.asarray(values), p, cfg.row_bound)
    if responded < round_quorum(cfg):
        return RoundOutcome(block=0, quorum=False, bounded=bounded)
    if cfg.algorithm == "sgd":
        rows = np.flatnonzero(p)
        rule = aggregators.get(cfg.rule)
        agg = rule(np.asarray(values)[rows], f=cfg.f, **blocks.rng_kwargs(rule, rng))
        b = cfg.d
        used = [int(r) for r in rows]
    else:
        b, agg = blocks.aggregate(values, p, v=cfg.v, rule=cfg.rule, f=cfg.f, rng=rng)
        used = [int(i) for i in np.flatnonzero(p)]
        if b == 0:
            return RoundOutcome(block=0, quorum=False, bounded=bounded)
    gamma = step_size(cfg, b)
    return RoundOutcome(
        block=b,
        quorum=True,
        step_size=gamma,
        used=used,
        update=blocks.scatter(order, np.asarray(agg, dtype=np.float64), cfg.d),
        bounded=bounded,
    )


def apply_update(w: np.ndarray, outcome: RoundOutcome) -> np.ndarray:
    """w_{k+1} = w_k - gamma_k * AG (unchanged when the round had no quorum).

    An update that would leave any coordinate non-finite in float32 (the dtype w travels
    in) is refused: ``w`` is returned unchanged and ``outcome.refused`` is set to
    :data:`REFUSED_NON_FINITE`, for the caller to count.
    """
    if not outcome.quorum or outcome.update is None:
        return w
    with np.errstate(over="ignore", invalid="ignore"):
        new = np.asarray(w - outcome.step_size * outcome.update, dtype=w.dtype)
        finite = bool(np.isfinite(new).all()) and bool(np.abs(new).max(initial=0.0) <= _F32_MAX)
    if not finite:
        outcome.refused = REFUSED_NON_FINITE
        return w
    return new
