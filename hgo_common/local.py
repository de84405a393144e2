"""A worker's local step, written once: plan, mini-batch, gradient in C_k order, attack.

Paper §3, Algorithm 1, worker side: on round k worker i chooses its mini-batch size s_i
and how many coordinates b_i it can deliver by τ (its budget, ``hgo_common.budget``),
draws s_i points from its shard, computes its stochastic gradient G_i(w_k) and delivers
it coordinate by coordinate in the order C_k. A Byzantine worker replaces the values
with an attack's (``hgo_common.attacks``).

``hgo-worker`` (wall clock: it releases the values no faster than its throttle allows,
``hgo_worker.pacing``) and the simulator (virtual clock: it delivers the planned prefix
at once) both call :func:`plan_round` and :func:`local_step`; the values come from one
:class:`RoundGradient`, computed lazily front to back so that a weak worker never pays
for coordinates it will not send:

* linear models (linear, logistic, svm): ``model.gradient(w, X, y, coords=piece)``
  computes exactly the coordinates of a piece of C_k;
* layered models (mlp, and any model without a coordinate fast path): back-propagation
  yields every coordinate at once, so the first piece computes the full gradient and
  later pieces are a gather.

Randomness: the mini-batch of round k comes from :func:`round_rng` (worker seed, worker
id, k), so a run is reproducible from its seeds and a simulated worker draws the same
batches as a networked one given the same seed and id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import attacks, budget, throttle

__all__ = [
    "PIECE",
    "Byzantine",
    "LocalConfig",
    "LocalWork",
    "Precomputed",
    "RoundGradient",
    "draw_batch",
    "gradient_at",
    "local_step",
    "plan_round",
    "round_rng",
]

PIECE = 4096  # coordinates computed per piece for models with partial_gradients


def partial_gradients(model: Any) -> bool:
    """``ModelProtocol.partial_gradients``: the gradient at a subset of coordinates costs
    O(s * |subset|) beyond one O(s * p) pass (the linear models), so computing piece by
    piece saves work for short prefixes. Read from the model, never from its name, so that
    plug-in models get the same treatment as the built-ins."""
    return bool(getattr(model, "partial_gradients", False))


@dataclass(frozen=True)
class LocalConfig:
    """A worker's own settings: λ_i, the requested batch size and the budget policy.

    Attributes
    ----------
    rate : float
        λ_i, partial derivatives per ms per data point (``<= 0`` or inf: unthrottled).
    batch_size : int
        The requested mini-batch size s_0.
    budget_policy : str
        One of ``hgo_common.budget.POLICIES``.
    rho : float
        The hybrid policy's interpolation parameter.
    """

    rate: float
    batch_size: int = 32
    budget_policy: str = "fixed"
    rho: float = 0.5


@dataclass(frozen=True)
class Byzantine:
    """How a Byzantine worker attacks (``hgo-worker --byzantine``, a simulator's f workers).

    Attributes
    ----------
    attack : str
        A name of ``hgo_common.attacks``.
    params : dict
        The attack's own parameters.
    full : bool
        Send all d coordinates (unlimited hardware) instead of its throttle's prefix.
    estimates : int
        Mini-batches drawn on its own shard to estimate the honest statistics when it is
        not given the honest gradients (on the wire it never is).
    n, f : int
        The system size the attack assumes (e.g. for ALIE's z).
    """

    attack: str
    params: dict[str, Any] = field(default_factory=dict)
    full: bool = False
    estimates: int = 5
    n: int = 10
    f: int = 1

    def __post_init__(self) -> None:
        spec = attacks.get(self.attack)  # ValueError naming an unknown attack
        spec.resolve(self.params)  # ValueError naming an unknown or bad parameter
        if self.estimates < 1:
            raise ValueError(f"attack estimates must be >= 1, got {self.estimates}")
        if self.n < 1 or not 0 <= self.f <= self.n:
            raise ValueError(f"attack needs 1 <= n and 0 <= f <= n, got n={self.n}, f={self.f}")

    @property
    def kind(self) -> str:
        """``gradient``, ``data`` or ``silent`` (``hgo_common.attacks``)."""
        return str(attacks.get(self.attack).kind)

    def transform_labels(self, y: np.ndarray, n_classes: int, rng: np.random.Generator) -> np.ndarray:
        """The shard labels this worker trains on (changed only for ``data`` attacks)."""
        if self.kind != "data":
            return y
        return np.asarray(attacks.get(self.attack).transform_labels(y, n_classes, rng, **self.params))

    def vector(self, honest: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The attack's values given an (m x k) matrix of honest values; shape (k,), float32."""
        k = honest.shape[1]
        with np.errstate(all="ignore"):
            out = attacks.get(self.attack)(honest, n=self.n, f=self.f, rng=rng, **self.params)
        return np.asarray(out, dtype=np.float32).reshape(k)


def round_rng(seed: int, round_index: int, salt: int = 0) -> np.random.Generator:
    """The generator of one round's draws (worker seed, salt = worker id, round)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(salt), int(round_index)]))


def draw_batch(n: int, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of a mini-batch of ``min(batch_size, n)`` distinct rows out of ``n``.

    Returns
    -------
    idx : ndarray of shape (min(batch_size, n),), dtype int64
    """
    if n < 1:
        raise ValueError(f"cannot draw a mini-batch from an empty shard (n={n})")
    s = min(int(batch_size), n)
    return np.asarray(rng.choice(n, size=s, replace=False), dtype=np.int64)


def plan_round(cfg: LocalConfig, tau_ms: float, d: int, max_batch: int | None = None) -> budget.Plan:
    """The round's (s_i, b_i): batch size and the prefix reachable by τ.

    ``fixed`` keeps s_0 and b_i = ``throttle.expected_prefix`` (the throttle's release by
    τ); the other policies are ``budget.plan`` with every parameter (``rho`` included)
    and ``max_batch`` (the shard size) as the cap on s.
    """
    if cfg.budget_policy == "fixed":
        return budget.Plan(cfg.batch_size, throttle.expected_prefix(cfg.rate, tau_ms, cfg.batch_size, d))
    return budget.plan(
        cfg.budget_policy, rate=cfg.rate, tau_ms=tau_ms, d=d, batch_size=cfg.batch_size, rho=cfg.rho,
        max_batch=max_batch,
    )  # fmt: skip


class RoundGradient:
    """The values of one round in C_k order, computed lazily front to back.

    Parameters
    ----------
    model : Model
    w : ndarray of shape (d,)
        w_k (float64).
    X : ndarray of shape (s, p)
        The round's mini-batch.
    y : ndarray of shape (s,)
    order : ndarray of shape (d,)
        C_k.
    limit : int
        Values beyond this position are never needed (the round's cap).
    """

    def __init__(
        self, model: Any, w: np.ndarray, X: np.ndarray, y: np.ndarray, order: np.ndarray, limit: int
    ) -> None:
        self.model = model
        self.w = w
        self.X = X
        self.y = y
        self.order = order
        self.limit = int(limit)
        self.values = np.empty(self.limit, dtype=np.float32)
        self.computed = 0
        self._piecewise = partial_gradients(model)

    def ensure(self, n: int) -> int:
        """Compute until at least ``min(n, limit)`` values exist; returns the count computed.

        Coordinate models compute one piece of at most ``PIECE`` coordinates per call so
        that callers can interleave compute with I/O; call again until it returns >= n.
        """
        n = min(int(n), self.limit)
        if self.computed >= n:
            return self.computed
        with np.errstate(all="ignore"):
            if self._piecewise:
                hi = min(self.limit, max(n, self.computed + 1), self.computed + PIECE)
                coords = self.order[self.computed : hi]
                self.values[self.computed : hi] = self.model.gradient(self.w, self.X, self.y, coords=coords)
                self.computed = hi
            else:
                full = self.model.gradient(self.w, self.X, self.y)
                self.values[:] = full[self.order[: self.limit]]
                self.computed = self.limit
        return self.computed

    def ensure_all(self, n: int) -> np.ndarray:
        """Compute the first ``min(n, limit)`` values in one go and return them."""
        while self.ensure(n) < min(n, self.limit):
            pass
        return self.values[: min(n, self.limit)]

    def full(self) -> np.ndarray:
        """The whole gradient on this mini-batch in C_k order, shape (d,), float64."""
        with np.errstate(all="ignore"):
            g = np.asarray(self.model.gradient(self.w, self.X, self.y), dtype=np.float64)
        out: np.ndarray = g[self.order]
        return out


class Precomputed:
    """Values fixed at the start of the round (a Byzantine vector): RoundGradient's face."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = np.asarray(values, dtype=np.float32)
        self.limit = self.computed = len(self.values)

    def ensure(self, n: int) -> int:
        return self.computed

    def ensure_all(self, n: int) -> np.ndarray:
        return self.values[: min(int(n), self.limit)]


def gradient_at(model: Any, w: np.ndarray, X: np.ndarray, y: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """The gradient at ``coords`` (in that order), by the cheapest path the model offers.

    Returns
    -------
    g : ndarray of shape (len(coords),), float64
    """
    with np.errstate(all="ignore"):
        if partial_gradients(model):
            return np.asarray(model.gradient(w, X, y, coords=coords), dtype=np.float64)
        full: np.ndarray = np.asarray(model.gradient(w, X, y), dtype=np.float64)
    out: np.ndarray = full[coords]
    return out


@dataclass
class LocalWork:
    """What a worker delivers in round k.

    Attributes
    ----------
    batch_size : int
        s_i used this round.
    limit : int
        The most C_k positions it releases this round (b_i; d when it sends everything).
    rate : float
        The rate its release follows (0: all at once, a Byzantine ``full`` sender).
    source : RoundGradient or Precomputed
        The values, position j of C_k at index j.
    """

    batch_size: int
    limit: int
    rate: float
    source: RoundGradient | Precomputed


def local_step(
    model: Any,
    w: np.ndarray,
    X: np.ndarray,
    y: np.ndarray,
    c_k: np.ndarray,
    tau_ms: float,
    cfg: LocalConfig,
    rng: np.random.Generator,
    *,
    byzantine: Byzantine | None = None,
    honest: np.ndarray | None = None,
    rows: np.ndarray | None = None,
) -> LocalWork:
    """Worker i's round: plan (s_i, b_i), draw the batch, gradient in C_k order or attack.

    Parameters
    ----------
    model : Model
    w : ndarray of shape (d,)
        w_k, float64.
    X, y : ndarrays of shape (n_i, p) and (n_i,)
        The worker's shard (labels already transformed for a ``data`` attack).
    c_k : ndarray of shape (d,)
    tau_ms : float
        The round deadline (inf for SGD(τ = ∞)).
    cfg : LocalConfig
    rng : np.random.Generator
        The round's generator (:func:`round_rng`).
    byzantine : Byzantine, optional
        A ``gradient`` attack replaces the values; ``silent`` sends nothing; ``data``
        computes honestly on the labels given.
    honest : ndarray of shape (m, d), optional
        The true honest gradients of the round in C_k order (an omniscient attacker, as
        in the paper's evaluation). Without it the attacker estimates them from
        ``byzantine.estimates`` mini-batches of its own shard.
    rows : ndarray of int, optional
        The shard as row indices into ``X`` and ``y`` (the simulator keeps one training
        set for all workers); None: every row of ``X`` is the shard.
    """
    d = int(c_k.shape[0])
    shard = np.arange(len(y)) if rows is None else np.asarray(rows)
    plan = plan_round(cfg, tau_ms, d, max_batch=len(shard))
    s, limit = int(plan.batch_size), min(d, int(plan.coords))
    if byzantine is not None and byzantine.kind == "silent":
        return LocalWork(s, 0, cfg.rate, Precomputed(np.zeros(0, dtype=np.float32)))
    if byzantine is not None and byzantine.kind == "gradient":
        k = d if byzantine.full else limit
        if honest is not None and honest.shape[0] > 0:
            base = np.asarray(honest, dtype=np.float64)[:, :k]
        else:
            coords = c_k[:k]
            base = np.stack(
                [
                    gradient_at(model, w, X[idx], y[idx], coords)
                    for idx in (shard[draw_batch(len(shard), s, rng)] for _ in range(byzantine.estimates))
                ]
            )
        vec = byzantine.vector(base, rng)
        return LocalWork(s, k, 0.0 if byzantine.full else cfg.rate, Precomputed(vec))
    idx = shard[draw_batch(len(shard), s, rng)]
    return LocalWork(s, limit, cfg.rate, RoundGradient(model, w, X[idx], y[idx], c_k, limit))
