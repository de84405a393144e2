"""The model interface every HGO model implements (docs/protocol.md, ``hgo_common.models``).

A model is a pure object: it holds no weights, only its shape. The flat parameter
vector ``w`` of length ``dim`` is what the server updates and what travels on the
wire; ``gradient(w, X, y, coords)`` is what a worker computes, coordinate by
coordinate in the round's order C_k (paper §3, Algorithm 1). All arithmetic is done in
float64 whatever the dtype of ``X`` (workers hold float32 shards).

Conventions shared by all models:

* the L2 term ``l2/2 * ||W||^2`` covers weights only, never biases (the usual choice:
  penalizing an intercept would bias predictions toward 0 for no statistical gain);
* ``loss`` is the mean loss over the rows of ``X`` plus the L2 term, and ``gradient``
  is its exact gradient (a subgradient for the hinge loss);
* classification labels are class ids ``0..n_classes-1`` of any numeric dtype.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Protocol, runtime_checkable

import numpy as np

TASKS = ("classification", "regression")


@runtime_checkable
class ModelProtocol(Protocol):
    """What HGO needs of a model: the public contract every model, built-in or plug-in,
    satisfies (docs/plugins.md). ``Model`` below implements it for numpy models and
    ``hgo_common.models.torch_adapter.TorchModel`` for any ``torch.nn.Module``.

    Attributes
    ----------
    name : str
        A short name for messages.
    dim : int
        Number of parameters d (the length of the flat vector ``w``).
    task : str
        "classification" or "regression".
    n_classes : int
        Number of classes (0 for regression).
    layer_sizes : tuple of int
        The model's shape, informational (sent in the TrainingSpec).
    groups : tuple of int
        Sizes of the parameter groups in coordinate order, ``sum(groups) == dim``; with
        more than one group, C_k is the stratified order over them (paper appendix C.3).
    l2 : float
        Weight of the L2 term (sent in the TrainingSpec so a worker rebuilds the model).
    partial_gradients : bool
        True when ``gradient(..., coords)`` costs about O(s * len(coords)) beyond one
        forward pass (the linear models): a worker then computes a short prefix of C_k
        piece by piece. False (layered models): one backward pass gives every coordinate.
    """

    name: str
    dim: int
    task: str
    n_classes: int
    layer_sizes: tuple[int, ...]
    groups: tuple[int, ...]
    l2: float
    partial_gradients: bool

    def init(self, rng: np.random.Generator) -> np.ndarray:
        """Initial parameters, shape (dim,), drawn from ``rng`` only."""
        ...

    def loss(self, w: np.ndarray, X: np.ndarray, y: np.ndarray) -> float:
        """Mean loss over the rows of ``X`` (n, p) with labels ``y`` (n,)."""
        ...

    def gradient(
        self, w: np.ndarray, X: np.ndarray, y: np.ndarray, coords: np.ndarray | None = None
    ) -> np.ndarray:
        """The mini-batch gradient: (dim,) for ``coords=None``, else (len(coords),) in
        that order."""
        ...

    def predict(self, w: np.ndarray, X: np.ndarray) -> np.ndarray:
        """Class ids (n,) or predicted values (n,)."""
        ...

    def evaluate(self, w: np.ndarray, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """``{"loss": ...}``, plus ``"accuracy"`` in [0, 1] for classification."""
        ...


class Model(ABC):
    """Base class: shape attributes plus the five methods of the contract.

    Attributes
    ----------
    name : str
        Registry name ("linear", "logistic", "svm", "mlp").
    dim : int
        Number of parameters d.
    task : str
        "classification" or "regression".
    n_classes : int
        Number of classes (0 for regression).
    layer_sizes : tuple of int
        Widths from input to output; ``(n_features, 1)`` for linear models.
    groups : tuple of int
        Sizes of the parameter groups in coordinate order; ``sum(groups) == dim``.
        ``hgo_common.order.make_order(..., "stratified", groups)`` balances every
        prefix of C_k across them (paper appendix C.3).
    l2 : float
        Weight of the ``l2/2 * ||W||^2`` term (weights only, not biases).
    partial_gradients : bool
        See ``ModelProtocol``; False here, True for ``LinearModel``.
    """

    name: str
    dim: int
    task: str
    n_classes: int
    layer_sizes: tuple[int, ...]
    groups: tuple[int, ...]
    l2: float
    partial_gradients: bool = False

    @abstractmethod
    def init(self, rng: np.random.Generator) -> np.ndarray:
        """Initial parameters, shape (dim,), float64, drawn from ``rng`` only."""

    @abstractmethod
    def loss(self, w: np.ndarray, X: np.ndarray, y: np.ndarray) -> float:
        """Mean loss over the n rows of ``X`` (n, p), plus the L2 term."""

    @abstractmethod
    def gradient(
        self, w: np.ndarray, X: np.ndarray, y: np.ndarray, coords: np.ndarray | None = None
    ) -> np.ndarray:
        """Gradient of ``loss``: shape (dim,) for ``coords=None``, else (len(coords),)
        holding the partial derivatives at ``coords`` in that order."""

    @abstractmethod
    def predict(self, w: np.ndarray, X: np.ndarray) -> np.ndarray:
        """Class ids (n,) int64 for classification, values (n,) float64 for regression."""

    def evaluate(self, w: np.ndarray, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """``{"loss": ...}`` plus ``"accuracy"`` (fraction in [0, 1]) for classification."""
        out = {"loss": self.loss(w, X, y)}
        if self.task == "classification":
            pred = self.predict(w, X)
            out["accuracy"] = float(np.mean(pred == np.asarray(y).astype(np.int64))) if len(pred) else 0.0
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(layer_sizes={self.layer_sizes}, dim={self.dim}, l2={self.l2})"

    # -- validation helpers shared by the models -------------------------------------

    def _check_w(self, w: np.ndarray) -> np.ndarray:
        w = np.asarray(w, dtype=np.float64)
        if w.shape != (self.dim,):
            raise ValueError(f"{self.name}: parameters must have shape ({self.dim},), got {w.shape}")
        return w

    def _check_X(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X)
        p = self.layer_sizes[0]
        if X.ndim != 2 or X.shape[1] != p:
            raise ValueError(f"{self.name}: X must have shape (n, {p}), got {X.shape}")
        return X

    def _check_coords(self, coords: np.ndarray) -> np.ndarray:
        c = np.asarray(coords)
        if c.ndim != 1 or (c.size and not np.issubdtype(c.dtype, np.integer)):
            raise ValueError(f"{self.name}: coords must be a 1-D integer array, got {c.dtype} {c.shape}")
        c = c.astype(np.intp, copy=False)
        if c.size and (int(c.min()) < 0 or int(c.max()) >= self.dim):
            raise ValueError(
                f"{self.name}: coords must lie in [0, {self.dim}), got range [{c.min()}, {c.max()}]"
            )
        return c

    def _check_labels(self, y: np.ndarray, n: int) -> np.ndarray:
        y = np.asarray(y)
        if y.shape != (n,):
            raise ValueError(f"{self.name}: y must have shape ({n},), got {y.shape}")
        if self.task == "regression":
            return y.astype(np.float64, copy=False)
        yi = y.astype(np.int64)
        if n and (int(yi.min()) < 0 or int(yi.max()) >= self.n_classes or not np.array_equal(yi, y)):
            raise ValueError(
                f"{self.name}: labels must be class ids in 0..{self.n_classes - 1}, "
                f"got values in [{y.min()}, {y.max()}]"
            )
        return yi


def check_l2(l2: float, name: str) -> float:
    """Validate an L2 weight (finite, >= 0)."""
    v = float(l2)
    if not np.isfinite(v) or v < 0:
        raise ValueError(f"{name}: l2 must be a finite number >= 0, got {l2}")
    return v


class LinearModel(Model):
    """A generalized linear model: score ``z = X @ w[:p] + b`` with ``b = w[p]``.

    Parameter layout: ``[w_1 .. w_p, b]`` (dim = p + 1), one parameter group
    ``(p + 1,)`` so that stratified and flat orders coincide.

    Subclasses give the per-sample loss ``ell(z, y)`` and its derivative
    ``dell/dz``. The gradient of the mean loss is ``X.T @ r`` for the weights and
    ``sum(r)`` for the bias, with ``r = dell/dz / n``: computing ``r`` costs one pass
    over ``X`` (O(n p)), after which a subset of k coordinates costs only O(n k)
    (``X[:, cols].T @ r``). A worker that releases a short prefix of C_k therefore
    pays for the forward pass plus its prefix, not for the whole gradient. For
    k >= p/10 the strided column gather is no faster than one BLAS ``X.T @ r``, so
    that is used instead and indexed.
    """

    partial_gradients = True

    def __init__(self, n_features: int, l2: float) -> None:
        if int(n_features) < 1:
            raise ValueError(f"{self.name}: n_features must be >= 1, got {n_features}")
        p = int(n_features)
        self.layer_sizes = (p, 1)
        self.dim = p + 1
        self.groups = (p + 1,)
        self.l2 = check_l2(l2, self.name)

    @abstractmethod
    def _loss_terms(self, z: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Per-sample losses (n,) at scores z (n,)."""

    @abstractmethod
    def _dloss(self, z: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Per-sample derivatives d ell / d z, shape (n,)."""

    def _scores(self, w: np.ndarray, X: np.ndarray) -> np.ndarray:
        return np.asarray(X @ w[:-1] + w[-1], dtype=np.float64)

    def init(self, rng: np.random.Generator) -> np.ndarray:
        """Small Gaussian weights (std 0.01 / sqrt(p)), zero bias: the losses are
        convex, so the start only needs to be finite and symmetric-breaking."""
        w = np.zeros(self.dim)
        w[:-1] = rng.normal(0.0, 0.01 / np.sqrt(self.dim - 1), size=self.dim - 1)
        return w

    def loss(self, w: np.ndarray, X: np.ndarray, y: np.ndarray) -> float:
        w = self._check_w(w)
        X = self._check_X(X)
        y = self._check_labels(y, X.shape[0])
        data = float(np.mean(self._loss_terms(self._scores(w, X), y))) if X.shape[0] else 0.0
        return data + 0.5 * self.l2 * float(w[:-1] @ w[:-1])

    def gradient(
        self, w: np.ndarray, X: np.ndarray, y: np.ndarray, coords: np.ndarray | None = None
    ) -> np.ndarray:
        w = self._check_w(w)
        # float64 math: convert a float32 X once here rather than in each product below.
        X = np.asarray(self._check_X(X), dtype=np.float64)
        n, p = X.shape
        y = self._check_labels(y, n)
        r = self._dloss(self._scores(w, X), y) / max(n, 1)
        if coords is None:
            out = np.empty(self.dim)
            out[:p] = X.T @ r + self.l2 * w[:p]
            out[p] = r.sum()
            return out
        c = self._check_coords(coords)
        is_w = c < p
        cols = c[is_w]
        out = np.empty(c.shape[0])
        if 10 * cols.size > p:
            # Gathering columns of a row-major X is strided; measured on 784 features
            # (docs/models-and-data.md), one contiguous X.T @ r is as fast from k ~ p/10.
            out[is_w] = (X.T @ r)[cols]
        else:
            out[is_w] = X[:, cols].T @ r
        out[is_w] += self.l2 * w[cols]
        out[~is_w] = r.sum()
        return out
