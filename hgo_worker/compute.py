"""The round computation of an honest worker: G_i(w_k) on a fresh mini-batch, in C_k order.

HGO (Boubouh et al., SRDS 2022, Algorithm 1, worker side): on round k the worker draws a
mini-batch of s_i points from its shard, computes its stochastic gradient at w_k and
returns it coordinate by coordinate in the order C_k. Only a prefix reaches the server,
so the values are produced *in pieces*, front first, and release (hgo_worker.pacing)
can start before the whole vector exists:

* linear models (linear, logistic, svm): ``model.gradient(w, X, y, coords=piece)``
  computes exactly the coordinates of a piece of C_k (the fast path: a weak worker never
  pays for the coordinates it will not send);
* layered models (mlp): back-propagation yields every coordinate at once, so the first
  piece computes the full gradient and later pieces are a gather.

The mini-batch comes from a ``np.random.Generator`` seeded by (worker seed, round), so a
run is reproducible from its seeds.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from hgo_common import models, order

# Models whose gradient at a subset of coordinates costs O(s * |subset|) beyond one
# O(s * p) residual: computing piece by piece saves work for short prefixes.
COORDINATE_MODELS = frozenset({"linear", "logistic", "svm"})
PIECE = 4096  # coordinates computed per piece for coordinate models


def model_from_spec(spec: Any) -> Any:
    """The model a ``TrainingSpec`` describes (checks that its dimension matches ``spec.dim``)."""
    sizes = tuple(int(x) for x in spec.layer_sizes)
    kwargs: dict[str, Any] = {"n_features": int(spec.n_features), "l2": float(spec.l2)}
    if spec.n_classes:
        kwargs["n_classes"] = int(spec.n_classes)
    if spec.model == "mlp" and len(sizes) > 2:
        kwargs["hidden"] = sizes[1:-1]
    model = models.create(spec.model, **kwargs)
    if model.dim != spec.dim:
        raise ValueError(
            f"model {spec.model!r} with layer sizes {list(sizes)} has dim {model.dim}, "
            f"but the server's spec says dim={spec.dim}"
        )
    return model


@functools.lru_cache(maxsize=4)
def cached_order(seed: int, d: int, kind: str, groups: tuple[int, ...]) -> np.ndarray:
    """C_k from ``hgo_common.order.make_order``, memoized: sessions hosted in one process
    (bench_network: dozens) share one expansion per round instead of one each (a
    stratified order of d = 23,860 costs milliseconds).

    Returns
    -------
    order : ndarray of shape (d,), read-only
    """
    out = order.make_order(seed, d, kind, groups)
    out.setflags(write=False)
    return out


def round_rng(seed: int, round_index: int, salt: int = 0) -> np.random.Generator:
    """The generator of one round's mini-batch draws (reproducible from the worker seed)."""
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
        self._piecewise = model.name in COORDINATE_MODELS

    def ensure(self, n: int) -> int:
        """Compute until at least ``min(n, limit)`` values exist; returns the count computed.

        Coordinate models compute one piece of at most ``PIECE`` coordinates per call so
        that callers can interleave compute with I/O; call again until it returns >= n.
        """
        n = min(int(n), self.limit)
        if self.computed >= n:
            return self.computed
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


def gradient_at(model: Any, w: np.ndarray, X: np.ndarray, y: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """The gradient at ``coords`` (in that order), by the cheapest path the model offers.

    Returns
    -------
    g : ndarray of shape (len(coords),), float64
    """
    if model.name in COORDINATE_MODELS:
        return np.asarray(model.gradient(w, X, y, coords=coords), dtype=np.float64)
    full: np.ndarray = np.asarray(model.gradient(w, X, y), dtype=np.float64)
    out: np.ndarray = full[coords]
    return out
