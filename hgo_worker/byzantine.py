"""Byzantine behaviour of a worker on the wire (DESIGN.md §4; attacks in hgo_common.attacks).

A Byzantine worker is an ordinary authenticated session that sends what an attack
decides. On the wire it has no view of the honest workers' gradients, so colluding
attackers *estimate* the honest statistics from their own shard: each round the worker
draws ``estimates`` independent mini-batches (default 5) and computes their gradients at
the coordinates it is about to send; that (m × k) matrix is the attack's ``honest``
input (ALIE, Baruch et al. 2019; Fall of Empires, Xie et al. 2019, as in the paper's
evaluation, but not omniscient).

Kinds (``hgo_common.attacks``):

``gradient`` (alie, foe, gaussian, large-value, sign-flip, nan)
    The attack vector replaces the worker's gradient. ``nan`` sends non-finite values,
    which the server's non-finite policy cuts off.
``data`` (label-flip)
    The worker's shard labels are transformed once; it then behaves honestly.
``silent``
    The worker keeps its session (heartbeats) but sends no gradient at all.

Prefix length. By default a Byzantine worker sends **as much as its own throttle allows**
(its profile or ``--rate``), released on the same schedule as an honest worker, so it is
indistinguishable by timing. With ``--attack-param full=1`` it sends all d values at the
start of the round (an attacker with unlimited hardware, the strongest position for
lengthening the block). Worker-level attack params, consumed here and not passed to the
attack: ``full`` (0/1), ``estimates`` (m >= 2), ``n`` and ``f`` (the system size the
attack assumes, e.g. for ALIE's z; defaults n=10, f=1; ``hgo-run`` passes the real ones).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hgo_common import attacks

from .compute import draw_batch, gradient_at

WORKER_PARAMS = ("full", "estimates", "n", "f")


@dataclass
class Behaviour:
    """A parsed ``--byzantine ATTACK --attack-param ...`` choice."""

    attack: str
    params: dict[str, Any] = field(default_factory=dict)
    full: bool = False
    estimates: int = 5
    n: int = 10
    f: int = 1

    def __post_init__(self) -> None:
        self._attack = attacks.get(self.attack)  # ValueError naming an unknown attack
        self._attack.resolve(self.params)  # ValueError naming an unknown or bad parameter
        if self.estimates < 2:
            raise ValueError(f"attack param estimates must be >= 2, got {self.estimates}")
        if self.n < 1 or not 0 <= self.f <= self.n:
            raise ValueError(f"attack params need 1 <= n and 0 <= f <= n, got n={self.n}, f={self.f}")

    @classmethod
    def from_options(cls, attack: str, params: dict[str, Any]) -> Behaviour:
        """Split the worker-level params from the attack's own ones."""
        rest = dict(params)
        kw: dict[str, Any] = {}
        if "full" in rest:
            kw["full"] = bool(int(float(rest.pop("full"))))
        for key in ("estimates", "n", "f"):
            if key in rest:
                kw[key] = int(rest.pop(key))
        return cls(attack=attack, params=rest, **kw)

    @property
    def kind(self) -> str:
        return str(self._attack.kind)

    @property
    def silent(self) -> bool:
        return self.kind == "silent"

    def transform_labels(self, y: np.ndarray, n_classes: int, rng: np.random.Generator) -> np.ndarray:
        """The shard labels this worker trains on (changed only for ``data`` attacks)."""
        if self.kind != "data":
            return y
        return np.asarray(self._attack.transform_labels(y, n_classes, rng, **self.params))

    def vector(
        self,
        model: Any,
        w: np.ndarray,
        X: np.ndarray,
        y: np.ndarray,
        coords: np.ndarray,
        batch_size: int,
        rng: np.random.Generator,
    ) -> np.ndarray:
        """The values to send at ``coords`` this round.

        Parameters
        ----------
        coords : ndarray of shape (k,)
            The first k coordinates of C_k (the prefix the worker will send).

        Returns
        -------
        values : ndarray of shape (k,), float32
        """
        if self.kind != "gradient":
            raise ValueError(f"attack {self.attack!r} of kind {self.kind!r} does not craft gradients")
        honest = np.stack(
            [
                gradient_at(model, w, X[idx], y[idx], coords)
                for idx in (draw_batch(len(y), batch_size, rng) for _ in range(self.estimates))
            ]
        )
        out = self._attack(honest, n=self.n, f=self.f, rng=rng, **self.params)
        return np.asarray(out, dtype=np.float32).reshape(len(coords))
