"""Model factories by name: the built-ins' and the plug-ins' (``hgo_common.registry``).

:func:`create` builds a model; a plug-in factory is loaded once, and the model it returns
is checked against ``ModelProtocol`` (:func:`check_model`) and probed on a few synthetic
rows (:func:`probe`) before anyone trains it. ``export.load`` builds models through here.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .. import plugins
from ..registry import Registry
from .base import TASKS, ModelProtocol
from .linear import LinearRegression
from .logistic import LogisticRegression
from .mlp import MLP
from .svm import DEFAULT_L2 as SVM_DEFAULT_L2
from .svm import LinearSVM

TORCH_EXTRA = "hgo[torch]"
TORCH_MODELS = ("cnn", "cnn-cifar")  # built in, but need the torch extra

#: A built-in factory: ``factory(n_features, n_classes, hidden, l2, activation)``.
BuiltinFactory = Callable[[int, int, Sequence[int], float, str], ModelProtocol]


def _binary(name: str, n_classes: int) -> None:
    if int(n_classes) != 2:
        raise ValueError(
            f"{name} is a binary classifier and needs n_classes=2, got {n_classes} "
            "(use a *-binary dataset or the mlp model)"
        )


def _linear(p: int, k: int, hidden: Sequence[int], l2: float, act: str) -> ModelProtocol:
    return LinearRegression(p, l2)


def _logistic(p: int, k: int, hidden: Sequence[int], l2: float, act: str) -> ModelProtocol:
    _binary("logistic", k)
    return LogisticRegression(p, l2)


def _svm(p: int, k: int, hidden: Sequence[int], l2: float, act: str) -> ModelProtocol:
    _binary("svm", k)
    return LinearSVM(p, l2)


def _mlp(p: int, k: int, hidden: Sequence[int], l2: float, act: str) -> ModelProtocol:
    return MLP(p, k, hidden, l2, act)


def _torch(name: str) -> Any:
    """The torch adapter module (optional extra), or PluginMissing saying what to install."""
    try:
        from . import torch_adapter  # optional extra: imported only when asked for
    except ImportError as exc:
        # torch_adapter's own message already says what to install
        raise plugins.PluginMissing(
            f"model {name!r} needs PyTorch: {exc}"
            if TORCH_EXTRA in str(exc)
            else f"model {name!r} needs PyTorch, which is not installed here ({exc}): "
            f"pip install '{TORCH_EXTRA}'",
            TORCH_EXTRA,
        ) from None
    return torch_adapter


def _cnn(p: int, k: int, hidden: Sequence[int], l2: float, act: str) -> ModelProtocol:
    model: ModelProtocol = _torch("cnn").cnn(int(p), int(k), l2=l2)
    return model


def _cnn_cifar(p: int, k: int, hidden: Sequence[int], l2: float, act: str) -> ModelProtocol:
    model: ModelProtocol = _torch("cnn-cifar").cnn_cifar(int(p), int(k), l2=l2)
    return model


def _adapt(name: str, factory: Any) -> Any:
    if not callable(factory):
        raise plugins.PluginError(
            f"model {name!r}: expected a factory (a class or function) called as "
            f"factory(n_features=..., n_classes=...), got {type(factory).__name__}"
        )
    return factory


#: Built-in model factories, and the plug-in factories loaded so far.
REGISTRY: Registry[Any] = Registry("model", adapt=_adapt)
REGISTRY.add("linear", _linear)
REGISTRY.add("logistic", _logistic)
REGISTRY.add("svm", _svm)
REGISTRY.add("mlp", _mlp)
REGISTRY.add("cnn", _cnn)
REGISTRY.add("cnn-cifar", _cnn_cifar)  # 1.7 M parameters (torch_adapter.CifarCNN)
#: Built-in model names: ``export.load`` builds these without an allow-list.
BUILTINS: tuple[str, ...] = tuple(REGISTRY.names())


def names() -> list[str]:
    """Registered model names."""
    return REGISTRY.names()


def default_l2(name: str) -> float:
    """The L2 weight ``create`` uses when ``l2`` is None: 1e-4 for "svm", 0 otherwise."""
    if name not in REGISTRY:
        if REGISTRY.pluggable(name):
            return 0.0
        raise ValueError(f"unknown model {name!r}; expected one of {names()}")
    return SVM_DEFAULT_L2 if name == "svm" else 0.0


def create(
    name: str,
    *,
    n_features: int,
    n_classes: int = 2,
    hidden: Sequence[int] = (30,),
    l2: float | None = None,
    activation: str = "sigmoid",
) -> ModelProtocol:
    """Build model ``name`` for inputs of ``n_features`` columns.

    Parameters
    ----------
    name : {"linear", "logistic", "svm", "mlp"}
    n_features : int
        Input width p.
    n_classes : int
        Number of classes. "logistic" and "svm" are binary and need 2; "linear" is a
        regression model and ignores it (datasets report 0 for regression).
    hidden : sequence of int
        Hidden layer widths of the MLP (default (30,): 784-30-10 on MNIST); ignored
        by the linear models.
    l2 : float or None
        Weight of ``l2/2 * ||W||^2`` (weights, not biases). None: the model's default,
        ``default_l2(name)`` (1e-4 for "svm", 0 for the others).
    activation : {"sigmoid", "relu"}
        MLP hidden activation (default sigmoid; see ``hgo_common.models.mlp``).

    Raises
    ------
    ValueError
        Bad arguments for a built-in; ``plugins.PluginError`` (a ValueError) for a plug-in
        that cannot be loaded or breaks the protocol; ``plugins.PluginMissing`` for an
        unknown name or a missing package (its ``requirement`` says what to install).
    """
    if not isinstance(name, str):
        raise ValueError(f"model name must be a string, got {name!r}")
    if name not in REGISTRY:
        REGISTRY.get(  # raises PluginMissing unless it may be a plug-in
            name,
            unknown=f"unknown model {name!r}; expected one of {names()}, a 'package.module:Name' "
            f"reference or an installed plug-in ({REGISTRY.installed()})",
        )
        return _create_plugin(name, int(n_features), int(n_classes), l2)
    reg = default_l2(name) if l2 is None else l2
    factory: BuiltinFactory = REGISTRY.builtin(name)
    return factory(n_features, n_classes, hidden, reg, activation)


def _create_plugin(name: str, n_features: int, n_classes: int, l2: float | None) -> ModelProtocol:
    factory = REGISTRY.plugin(name)
    kwargs: dict[str, Any] = {"n_features": n_features, "n_classes": n_classes}
    if l2 is not None:
        try:
            params = inspect.signature(factory).parameters
        except (TypeError, ValueError):
            params = {}  # type: ignore[assignment]
        if "l2" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            kwargs["l2"] = float(l2)
        else:
            raise plugins.PluginError(f"model {name!r} takes no l2 parameter, but --l2 {l2} was given")
    try:
        model = factory(**kwargs)
    except Exception as exc:
        raise plugins.PluginError(
            f"model {name!r}: {getattr(factory, '__name__', 'factory')}"
            f"(n_features={n_features}, n_classes={n_classes}) raised {type(exc).__name__}: {exc}"
        ) from None
    check_model(model, name)
    probe(model, name, n_features)
    checked: ModelProtocol = model
    return checked


_ATTRS = ("name", "dim", "task", "n_classes", "layer_sizes", "groups", "l2")
_METHODS = ("init", "loss", "gradient", "predict", "evaluate")


def check_model(model: Any, name: str) -> None:
    """Check ``model`` against ``ModelProtocol``'s attributes and methods.

    Raises
    ------
    PluginError
        Naming ``name`` and every missing member, or the first bad attribute value.
    """
    missing = [a for a in _ATTRS if not hasattr(model, a)]
    missing += [m for m in _METHODS if not callable(getattr(model, m, None))]
    if missing:
        raise plugins.PluginError(
            f"model {name!r} ({type(model).__name__}) does not implement the model protocol: "
            f"missing {missing} (see hgo_common.models.ModelProtocol; subclassing "
            "hgo_common.models.Model gives evaluate)"
        )

    def bad(what: str) -> plugins.PluginError:
        return plugins.PluginError(f"model {name!r}: {what}")

    dim = model.dim
    if isinstance(dim, bool) or not isinstance(dim, int | np.integer) or dim < 1:
        raise bad(f"dim must be a positive integer, got {dim!r}")
    if model.task not in TASKS:
        raise bad(f"task must be one of {list(TASKS)}, got {model.task!r}")
    k = model.n_classes
    if isinstance(k, bool) or not isinstance(k, int | np.integer):
        raise bad(f"n_classes must be an integer, got {k!r}")
    if model.task == "classification" and k < 2:
        raise bad(f"a classification model needs n_classes >= 2, got {k}")
    try:
        groups = tuple(int(g) for g in model.groups)
        sizes = tuple(int(s) for s in model.layer_sizes)
        l2 = float(model.l2)
    except (TypeError, ValueError) as exc:
        raise bad(f"groups and layer_sizes must be sequences of int and l2 a number ({exc})") from None
    if not groups or any(g < 1 for g in groups) or sum(groups) != int(dim):
        raise bad(f"groups must be positive sizes summing to dim={dim}, got {list(groups)}")
    if not sizes or any(s < 0 for s in sizes):
        raise bad(f"layer_sizes must be non-negative integers, got {list(sizes)}")
    if not (np.isfinite(l2) and l2 >= 0):
        raise bad(f"l2 must be a finite number >= 0, got {model.l2!r}")


def probe(model: Any, name: str, n_features: int, rows: int = 8) -> None:
    """Run ``model`` once on ``rows`` synthetic rows and check every output.

    ``init`` must give a finite (dim,) vector; ``gradient`` a finite (dim,) vector and,
    at a few coordinates, the same values as the full gradient; ``evaluate`` a finite
    ``loss`` (and an ``accuracy`` in [0, 1] for classification).

    Raises
    ------
    PluginError
        Naming ``name``, the method and what was wrong.
    """
    rng = np.random.default_rng(0)
    d = int(model.dim)
    X = rng.normal(size=(rows, n_features)).astype(np.float32)
    if model.task == "classification":
        y: np.ndarray = np.arange(rows) % int(model.n_classes)
    else:
        y = rng.normal(size=rows)

    def call(method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return getattr(model, method)(*args, **kwargs)
        except Exception as exc:
            raise plugins.PluginError(
                f"model {name!r}: {method}() on {rows} rows of {n_features} features raised "
                f"{type(exc).__name__}: {exc}"
            ) from None

    def vector(method: str, out: Any, length: int) -> np.ndarray:
        arr = np.asarray(out, dtype=np.float64)
        if arr.shape != (length,):
            raise plugins.PluginError(
                f"model {name!r}: {method}() returned shape {arr.shape}, expected ({length},)"
            )
        if not np.all(np.isfinite(arr)):
            raise plugins.PluginError(f"model {name!r}: {method}() returned non-finite values")
        return arr

    w = vector("init", call("init", np.random.default_rng(0)), d)
    g = vector("gradient", call("gradient", w, X, y), d)
    coords = np.unique(rng.integers(0, d, size=min(d, 16)))[::-1].copy()
    gc = vector("gradient(coords=...)", call("gradient", w, X, y, coords), len(coords))
    if not np.allclose(gc, g[coords], rtol=1e-3, atol=1e-6):
        raise plugins.PluginError(
            f"model {name!r}: gradient(coords=c) must equal gradient()[c], but differs by up to "
            f"{float(np.max(np.abs(gc - g[coords]))):.3g}"
        )
    ev = call("evaluate", w, X, y)
    if not isinstance(ev, dict) or "loss" not in ev:
        raise plugins.PluginError(f"model {name!r}: evaluate() must return a dict with 'loss', got {ev!r}")
    if not np.isfinite(float(ev["loss"])):
        raise plugins.PluginError(f"model {name!r}: evaluate() returned a non-finite loss {ev['loss']!r}")
    if model.task == "classification" and not 0.0 <= float(ev.get("accuracy", -1.0)) <= 1.0:
        raise plugins.PluginError(
            f"model {name!r}: evaluate() of a classifier must return 'accuracy' in [0, 1], got {ev!r}"
        )
