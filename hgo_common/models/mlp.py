"""Fully connected network with softmax cross-entropy (the paper's 784-30-10 MNIST network, §6).

Architecture: ``layer_sizes = (n_features, *hidden, n_classes)``; every hidden layer is
``a = act(a_prev @ W.T + b)``; the output layer gives logits, and the loss is the mean
softmax cross-entropy plus ``l2/2 * sum_l ||W_l||^2`` (weights only, not biases)::

    L = mean_i [ logsumexp(z_i) - z_i[y_i] ] + l2/2 * sum_l ||W_l||_F^2

Hidden activation: **sigmoid by default**. The paper's 784-30-10 network is the classic
one of Nielsen's "Neural Networks and Deep Learning" (ch. 1), which uses sigmoid units;
the paper does not name its activation, so we keep that network as it is usually
trained. ``activation="relu"`` is available.

Parameter layout (the flat vector ``w`` that travels on the wire), layer by layer::

    [ W_1 (s_1 x s_0, row-major), b_1 (s_1), W_2 (s_2 x s_1), b_2 (s_2), ... ]

so ``W_l[o, i]`` is coordinate ``offset_l + o * s_{l-1} + i``. ``groups`` lists the sizes
of W_1, b_1, W_2, b_2, ... separately (for 784-30-10: (23520, 30, 300, 10)): the
stratified order (``hgo_common.order``) then puts every layer's weights *and* its
biases into each prefix of C_k in proportion to their size (paper appendix C.3), so a
weak worker's short prefix still touches every layer, and the tiny bias groups are not
starved behind the big weight matrices.

Initialization: Glorot/Xavier uniform (Glorot & Bengio, AISTATS 2010) for sigmoid and
the output layer, He normal (He et al., ICCV 2015) for ReLU hidden layers; zero biases.

``gradient(w, X, y, coords)`` runs one full backpropagation and then indexes the
requested coordinates (vectorized, no loop over coordinates): unlike the linear models,
a coordinate subset of an MLP gradient costs essentially the full backward pass.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from .base import Model, check_l2

ACTIVATIONS = ("sigmoid", "relu")


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.asarray(np.exp(-np.logaddexp(0.0, -z)))


class MLP(Model):
    """Multi-layer perceptron classifier; see the module docstring for the layout."""

    name = "mlp"
    task = "classification"

    def __init__(
        self,
        n_features: int,
        n_classes: int,
        hidden: Sequence[int] = (30,),
        l2: float = 0.0,
        activation: str = "sigmoid",
    ) -> None:
        sizes = (int(n_features), *(int(h) for h in hidden), int(n_classes))
        if sizes[0] < 1 or any(s < 1 for s in sizes[1:-1]):
            raise ValueError(f"mlp: n_features and hidden sizes must be >= 1, got layer sizes {sizes}")
        if sizes[-1] < 2:
            raise ValueError(f"mlp: n_classes must be >= 2, got {n_classes}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"mlp: unknown activation {activation!r}; expected one of {ACTIVATIONS}")
        self.layer_sizes = sizes
        self.n_classes = sizes[-1]
        self.activation = activation
        self.l2 = check_l2(l2, self.name)
        groups: list[int] = []
        # (W start, b start, b end, out, in) per layer: views into the flat vector.
        self._slices: list[tuple[int, int, int, int, int]] = []
        off = 0
        for n_in, n_out in itertools.pairwise(sizes):
            self._slices.append((off, off + n_out * n_in, off + n_out * n_in + n_out, n_out, n_in))
            groups += [n_out * n_in, n_out]
            off += n_out * n_in + n_out
        self.groups = tuple(groups)
        self.dim = off
        # Mask of weight (not bias) coordinates, for the L2 term.
        self._is_weight = np.zeros(self.dim, dtype=bool)
        for ws, bs, _, _, _ in self._slices:
            self._is_weight[ws:bs] = True

    def _layers(self, w: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """(W (out x in), b (out,)) views into ``w`` for each layer."""
        return [(w[ws:bs].reshape(o, i), w[bs:be]) for ws, bs, be, o, i in self._slices]

    def init(self, rng: np.random.Generator) -> np.ndarray:
        w = np.zeros(self.dim)
        n_layers = len(self._slices)
        for k, (ws, bs, _, n_out, n_in) in enumerate(self._slices):
            if self.activation == "relu" and k < n_layers - 1:
                w[ws:bs] = rng.normal(0.0, np.sqrt(2.0 / n_in), size=n_out * n_in)
            else:
                lim = np.sqrt(6.0 / (n_in + n_out))
                w[ws:bs] = rng.uniform(-lim, lim, size=n_out * n_in)
        return w

    def _forward(self, w: np.ndarray, X: np.ndarray) -> list[np.ndarray]:
        """Activations [a_0 = X, a_1, ..., a_{L-1}, z_L (logits)], all float64."""
        acts = [np.asarray(X, dtype=np.float64)]
        layers = self._layers(w)
        for k, (W, b) in enumerate(layers):
            z = acts[-1] @ W.T + b
            if k < len(layers) - 1:
                z = _sigmoid(z) if self.activation == "sigmoid" else np.maximum(z, 0.0)
            acts.append(z)
        return acts

    @staticmethod
    def _log_softmax(z: np.ndarray) -> np.ndarray:
        zs = z - z.max(axis=1, keepdims=True)
        return np.asarray(zs - np.log(np.exp(zs).sum(axis=1, keepdims=True)))

    def _l2_term(self, w: np.ndarray) -> float:
        if self.l2 == 0.0:
            return 0.0
        ww = w[self._is_weight]
        return 0.5 * self.l2 * float(ww @ ww)

    def loss(self, w: np.ndarray, X: np.ndarray, y: np.ndarray) -> float:
        w = self._check_w(w)
        X = self._check_X(X)
        y = self._check_labels(y, X.shape[0])
        if X.shape[0] == 0:
            return self._l2_term(w)
        logp = self._log_softmax(self._forward(w, X)[-1])
        return float(-np.mean(logp[np.arange(len(y)), y])) + self._l2_term(w)

    def gradient(
        self, w: np.ndarray, X: np.ndarray, y: np.ndarray, coords: np.ndarray | None = None
    ) -> np.ndarray:
        w = self._check_w(w)
        X = self._check_X(X)
        n = X.shape[0]
        y = self._check_labels(y, n)
        c = None if coords is None else self._check_coords(coords)
        g = np.zeros(self.dim)
        if n:
            acts = self._forward(w, X)
            # d(mean CE)/d logits = (softmax - onehot) / n
            delta = np.exp(self._log_softmax(acts[-1]))
            delta[np.arange(n), y] -= 1.0
            delta /= n
            layers = self._layers(w)
            for k in range(len(layers) - 1, -1, -1):
                ws, bs, be, _, _ = self._slices[k]
                a_prev = acts[k]
                g[ws:bs] = (delta.T @ a_prev).ravel()
                g[bs:be] = delta.sum(axis=0)
                if k > 0:
                    back = delta @ layers[k][0]
                    if self.activation == "sigmoid":
                        delta = back * a_prev * (1.0 - a_prev)
                    else:
                        delta = back * (a_prev > 0)
        if self.l2:
            g[self._is_weight] += self.l2 * w[self._is_weight]
        return g if c is None else g[c]

    def predict(self, w: np.ndarray, X: np.ndarray) -> np.ndarray:
        """Class ids (n,) int64: argmax of the logits."""
        w = self._check_w(w)
        X = self._check_X(X)
        return np.asarray(np.argmax(self._forward(w, X)[-1], axis=1), dtype=np.int64)
