"""Any ``torch.nn.Module`` as an HGO model (optional extra: ``pip install 'hgo[torch]'``).

Imported only when a torch model is used: the numpy path never imports torch.

Layout: the flat vector ``w`` is ``module.named_parameters()`` in registration order,
each tensor flattened row-major (``torch.nn.utils.parameters_to_vector``): for
``nn.Sequential(nn.Linear(p, h), nn.Sigmoid(), nn.Linear(h, c))`` that is exactly the
layout of ``hgo_common.models.MLP`` (``W_1, b_1, W_2, b_2``, each ``W`` out x in).
``groups`` has one entry per tensor, so the stratified C_k balances every prefix across
the layers (paper appendix C.3) as it does for the MLP.

Loss: the mean softmax cross-entropy of the logits (classification) or half the mean
squared error (regression, one output), plus ``l2/2 * ||W||^2`` over the parameters of
two or more dimensions (weights, not biases: the numpy models' convention).

Gradient: one forward and one autograd backward pass in float32 (torch's default, and
what the wire carries; ``dtype=torch.float64`` for exact checks), returned as float64;
``coords`` indexes the full gradient (``partial_gradients`` is False: a backward pass
yields every coordinate at once).

``init(rng)``: re-runs every submodule's ``reset_parameters()`` under a torch seed drawn
from ``rng`` (in ``torch.random.fork_rng``, so the global torch stream is untouched), so
w_0 is reproducible from the run seed like the numpy models'.

Threads: torch's intra-op pool is set to ``HGO_TORCH_THREADS`` (default 1) at import,
since HGO runs one worker process per simulated device and many share a few cores.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

try:
    import torch
    from torch import nn
except ImportError as exc:  # the optional extra: say what to install, not only "no module"
    raise ModuleNotFoundError(
        f"PyTorch cannot be imported here ({exc}): pip install 'hgo[torch]' "
        "(make install-torch in a checkout)",
        name="torch",
    ) from None

from .base import TASKS, Model, check_l2

__all__ = ["CNN", "CifarCNN", "TorchModel", "cnn", "cnn_cifar", "image_shape"]

torch.set_num_threads(max(1, int(os.environ.get("HGO_TORCH_THREADS", "1"))))

EVAL_BATCH = 2048  # rows per forward pass in evaluate/predict (bounds memory on big test sets)


class TorchModel(Model):
    """An HGO model around a ``torch.nn.Module``.

    Parameters
    ----------
    module : torch.nn.Module
        Maps a float32 batch of shape ``(n, *input_shape)`` to logits ``(n, n_classes)``
        (classification) or ``(n, 1)`` / ``(n,)`` (regression). Its parameters are the
        model's; buffers (batch-norm statistics) are not trained by HGO.
    n_features : int
        Width p of a data row; rows are reshaped to ``input_shape``.
    n_classes : int
        Classes (classification) or 0 (regression).
    input_shape : sequence of int, optional
        Shape of one input (``(1, 28, 28)`` for MNIST); default ``(n_features,)``.
    task : {"classification", "regression"}
    l2 : float
        Weight of ``l2/2 * ||W||^2`` over the weight tensors.
    name : str
    dtype : torch.dtype
        Compute precision (default float32; the module is converted to it).
    """

    partial_gradients = False

    def __init__(
        self,
        module: nn.Module,
        *,
        n_features: int,
        n_classes: int,
        input_shape: Sequence[int] | None = None,
        task: str = "classification",
        l2: float = 0.0,
        name: str = "torch",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if not isinstance(module, nn.Module):
            raise ValueError(f"{name}: expected a torch.nn.Module, got {type(module).__name__}")
        if task not in TASKS:
            raise ValueError(f"{name}: task must be one of {list(TASKS)}, got {task!r}")
        self.name = name
        self.task = task
        self.n_classes = int(n_classes) if task == "classification" else 0
        if task == "classification" and self.n_classes < 2:
            raise ValueError(f"{name}: a classifier needs n_classes >= 2, got {n_classes}")
        p = int(n_features)
        shape = tuple(int(s) for s in (input_shape or (p,)))
        if math.prod(shape) != p:
            raise ValueError(f"{name}: input_shape {list(shape)} does not hold n_features={p} values")
        self.input_shape = shape
        self.l2 = check_l2(l2, name)
        self.dtype = dtype
        self._np_dtype = np.float64 if dtype == torch.float64 else np.float32
        self.module = module.to(dtype).eval()
        self._params = [q for _, q in self.module.named_parameters()]
        if not self._params:
            raise ValueError(f"{name}: the module has no parameters")
        self.groups = tuple(int(q.numel()) for q in self._params)
        self.dim = int(sum(self.groups))
        self._is_weight = [q.dim() >= 2 for q in self._params]
        out = self.n_classes if task == "classification" else 1
        self.layer_sizes = (p, out)

    # -- parameters <-> the flat vector ------------------------------------------------

    def _load(self, w: np.ndarray) -> None:
        w = self._check_w(w)
        flat = torch.from_numpy(np.ascontiguousarray(w, dtype=self._np_dtype))
        with torch.no_grad():
            nn.utils.vector_to_parameters(flat, self._params)

    def _inputs(self, X: np.ndarray) -> torch.Tensor:
        X = self._check_X(X)
        arr = np.ascontiguousarray(X, dtype=self._np_dtype)
        return torch.from_numpy(arr).reshape(arr.shape[0], *self.input_shape)

    def init(self, rng: np.random.Generator) -> np.ndarray:
        seed = int(rng.integers(0, 2**63 - 1))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for m in self.module.modules():
                reset = getattr(m, "reset_parameters", None)
                if callable(reset):
                    reset()
        with torch.no_grad():
            flat = nn.utils.parameters_to_vector(self._params)
        return np.asarray(flat.detach().numpy(), dtype=np.float64)

    # -- loss, gradient, prediction -----------------------------------------------------

    def _l2_term(self) -> torch.Tensor:
        weights = [q for q, is_w in zip(self._params, self._is_weight, strict=True) if is_w]
        return 0.5 * self.l2 * sum((torch.sum(q * q) for q in weights), torch.zeros((), dtype=self.dtype))

    def _objective(self, out: torch.Tensor, y: np.ndarray, *, with_l2: bool = True) -> torch.Tensor:
        if self.task == "classification":
            target = torch.from_numpy(np.asarray(y, dtype=np.int64))
            data = nn.functional.cross_entropy(out, target)
        else:
            target = torch.from_numpy(np.asarray(y, dtype=self._np_dtype))
            data = 0.5 * torch.mean((out.reshape(-1) - target) ** 2)
        if self.l2 and with_l2:
            data = data + self._l2_term()
        return data

    def loss(self, w: np.ndarray, X: np.ndarray, y: np.ndarray) -> float:
        self._load(w)
        y = self._check_labels(y, np.asarray(X).shape[0])
        if len(y) == 0:
            with torch.no_grad():
                return float(self._l2_term()) if self.l2 else 0.0
        with torch.no_grad():
            total = 0.0
            for lo in range(0, len(y), EVAL_BATCH):
                out = self.module(self._inputs(X[lo : lo + EVAL_BATCH]))
                part = float(self._objective(out, y[lo : lo + EVAL_BATCH], with_l2=False))
                total += part * len(y[lo : lo + EVAL_BATCH])
            reg = float(self._l2_term()) if self.l2 else 0.0
        return total / len(y) + reg

    def gradient(
        self, w: np.ndarray, X: np.ndarray, y: np.ndarray, coords: np.ndarray | None = None
    ) -> np.ndarray:
        self._load(w)
        n = np.asarray(X).shape[0]
        y = self._check_labels(y, n)
        c = None if coords is None else self._check_coords(coords)
        for q in self._params:
            q.grad = None
        if n:
            obj = self._objective(self.module(self._inputs(X)), y)
            obj.backward()  # type: ignore[no-untyped-call]
        grads = [q.grad.reshape(-1) if q.grad is not None else torch.zeros(q.numel()) for q in self._params]
        g = np.asarray(torch.cat(grads).numpy(), dtype=np.float64)
        if not n and self.l2:
            for sl, is_w in zip(self._slices(), self._is_weight, strict=True):
                if is_w:
                    g[sl] = self.l2 * np.asarray(w, dtype=np.float64)[sl]
        return g if c is None else g[c]

    def _slices(self) -> list[slice]:
        out, off = [], 0
        for size in self.groups:
            out.append(slice(off, off + size))
            off += size
        return out

    def predict(self, w: np.ndarray, X: np.ndarray) -> np.ndarray:
        self._load(w)
        X = self._check_X(X)
        parts = []
        with torch.no_grad():
            for lo in range(0, X.shape[0], EVAL_BATCH):
                out = self.module(self._inputs(X[lo : lo + EVAL_BATCH]))
                if self.task == "classification":
                    parts.append(np.asarray(out.argmax(dim=1).numpy(), dtype=np.int64))
                else:
                    parts.append(np.asarray(out.reshape(-1).numpy(), dtype=np.float64))
        if not parts:
            return np.zeros(0, dtype=np.int64 if self.task == "classification" else np.float64)
        return np.concatenate(parts)

    def __repr__(self) -> str:
        return f"TorchModel({self.name!r}, input_shape={self.input_shape}, dim={self.dim}, l2={self.l2})"


# ---- the built-in CNN ---------------------------------------------------------------------


def image_shape(n_features: int) -> tuple[int, int, int]:
    """(channels, height, width) of a square image flattened channel-first into ``n_features``
    values: 784 -> (1, 28, 28) (MNIST), 3072 -> (3, 32, 32) (CIFAR-10), 64 -> (1, 8, 8)
    (digits).

    Raises
    ------
    ValueError
        When ``n_features`` is neither a square nor three times a square.
    """
    p = int(n_features)
    for c in (1, 3):
        side = math.isqrt(p // c) if p % c == 0 else 0
        if side * side * c == p and side >= 4:
            return (c, side, side)
    raise ValueError(
        f"cnn: n_features={p} is not a square image (1 x s x s) or an RGB one (3 x s x s, "
        "channel-first as in the CIFAR-10 batches)"
    )


class CNN(nn.Module):
    """conv3x3(c->8)-ReLU-maxpool2, conv3x3(8->16)-ReLU-maxpool2, linear(16 * (s/4)^2 -> classes).

    About 9.1 k parameters on MNIST (1 x 28 x 28), 11.6 k on CIFAR-10 (3 x 32 x 32),
    1.9 k on digits (1 x 8 x 8): small enough to train over gRPC on 2 cores in CI.
    """

    def __init__(self, channels: int, side: int, n_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Linear(16 * (side // 4) ** 2, n_classes)

    def forward(self, x: torch.Tensor) -> Any:
        return self.head(torch.flatten(self.features(x), 1))


def cnn(
    n_features: int, n_classes: int, *, l2: float = 0.0, dtype: torch.dtype = torch.float32
) -> TorchModel:
    """The built-in model ``"cnn"`` for images flattened channel-first (see ``image_shape``)."""
    shape = image_shape(n_features)
    if int(n_classes) < 2:
        raise ValueError(f"cnn: a classifier needs n_classes >= 2, got {n_classes}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # construction draws weights; init(rng) redraws them from the run seed
        module = CNN(shape[0], shape[1], int(n_classes))
    model = TorchModel(
        module, n_features=n_features, n_classes=n_classes, input_shape=shape, l2=l2, name="cnn", dtype=dtype
    )
    model.layer_sizes = (int(n_features), 8, 16, int(n_classes))
    return model


# ---- the built-in CIFAR-10 CNN (>= 1M parameters) -------------------------------------------


class _HeConv2d(nn.Conv2d):
    """A convolution initialized He-normal (fan-in, ReLU gain), bias 0: torch's default
    (uniform, gain 1/sqrt(3)) shrinks the signal by about 3x per layer, so through the five
    layers of :class:`CifarCNN` the first hundreds of plain-SGD steps barely moved the loss
    from ln 10 (measured on cifar10-synthetic at step 0.05)."""

    def reset_parameters(self) -> None:
        nn.init.kaiming_normal_(self.weight, nonlinearity="relu")
        if self.bias is not None:
            nn.init.zeros_(self.bias)


class _HeLinear(nn.Linear):
    """A dense layer initialized He-normal, bias 0 (see :class:`_HeConv2d`)."""

    def reset_parameters(self) -> None:
        nn.init.kaiming_normal_(self.weight, nonlinearity="relu")
        if self.bias is not None:
            nn.init.zeros_(self.bias)


class CifarCNN(nn.Module):
    """The CIFAR-10 CNN of McMahan et al. (AISTATS 2017, §3), from the TensorFlow tutorial
    they cite: conv5x5(3->32)-ReLU-maxpool2, conv5x5(32->64)-ReLU-maxpool2,
    linear(64 * (s/4)^2 -> 384)-ReLU, linear(384 -> 192)-ReLU, linear(192 -> classes).

    On 3 x 32 x 32 inputs (no 24 x 24 crop, hence 4096 inputs to the first dense layer)
    with 10 classes: 1,702,794 parameters (92% of them in the first dense layer), so w_k
    is 6.8 MB as float32 on the wire. The paper's "about 10^6" is the 24 x 24 variant.
    Convolutions pad to keep the side (``padding=2``), as the tutorial's "SAME" padding.
    Each image is standardized first (the tutorial's ``per_image_standardization``).
    Weights are drawn He-normal (He et al., ICCV 2015), biases 0, by ``init(rng)``, except
    the output layer's (torch's default, small: He-scaled logits start at a loss of ~12).
    """

    def __init__(self, channels: int, side: int, n_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _HeConv2d(channels, 32, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            _HeConv2d(32, 64, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            _HeLinear(64 * (side // 4) ** 2, 384),
            nn.ReLU(),
            _HeLinear(384, 192),
            nn.ReLU(),
            nn.Linear(192, n_classes),
        )

    def forward(self, x: torch.Tensor) -> Any:
        # The tutorial's per_image_standardization: each image to mean 0, std 1 (std
        # floored at 1/sqrt(#values) as tf.image does), so [0, 1] pixels do not start the
        # He-scaled layers far from 0. No parameters; the same at training and test time.
        flat = torch.flatten(x, 1)
        mean = flat.mean(dim=1, keepdim=True)
        std = flat.std(dim=1, correction=0, keepdim=True).clamp_min(flat.shape[1] ** -0.5)
        x = ((flat - mean) / std).reshape(x.shape)
        return self.head(torch.flatten(self.features(x), 1))


def cnn_cifar(
    n_features: int, n_classes: int, *, l2: float = 0.0, dtype: torch.dtype = torch.float32
) -> TorchModel:
    """The built-in model ``"cnn-cifar"``: :class:`CifarCNN` for RGB images flattened
    channel-first (3 x s x s with s a multiple of 4; CIFAR-10's 3072 = 3 x 32 x 32)."""
    shape = image_shape(n_features)
    if shape[0] != 3 or shape[1] % 4:
        raise ValueError(
            f"cnn-cifar: needs RGB images 3 x s x s with s a multiple of 4 (CIFAR-10: n_features=3072), "
            f"got n_features={int(n_features)} ({' x '.join(map(str, shape))})"
        )
    if int(n_classes) < 2:
        raise ValueError(f"cnn-cifar: a classifier needs n_classes >= 2, got {n_classes}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # construction draws weights; init(rng) redraws them from the run seed
        module = CifarCNN(shape[0], shape[1], int(n_classes))
    model = TorchModel(
        module, n_features=n_features, n_classes=n_classes, input_shape=shape, l2=l2, name="cnn-cifar",
        dtype=dtype,
    )  # fmt: skip
    model.layer_sizes = (int(n_features), 32, 64, 384, 192, int(n_classes))
    return model
