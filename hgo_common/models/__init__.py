"""Models by name: ``models.create("mlp", n_features=784, n_classes=10)``.

Each model is a pure object (shape only, no weights) with analytic numpy gradients;
see ``base.Model`` for the interface and ``docs/models-and-data.md`` for the losses,
parameter layouts and defaults. A trained model is written by ``save`` and read back by
``load(path)`` (an :class:`ExportedModel` with ``predict``/``evaluate``; format in
``export.py``). Paper §6: linear regression (Boston), logistic
regression (MNIST binary), regularized SVM (phishing), 784-30-10 network (MNIST).
"""

from __future__ import annotations

from collections.abc import Sequence

from .base import LinearModel, Model
from .export import ExportedModel, load, save
from .linear import LinearRegression
from .logistic import LogisticRegression
from .mlp import ACTIVATIONS, MLP
from .svm import DEFAULT_L2 as SVM_DEFAULT_L2
from .svm import LinearSVM

__all__ = [
    "ACTIVATIONS", "MLP", "ExportedModel", "LinearModel", "Model", "create", "default_l2", "load", "names",
    "save",
]  # fmt: skip

_NAMES = ("linear", "logistic", "svm", "mlp")


def names() -> list[str]:
    """Registered model names."""
    return list(_NAMES)


def default_l2(name: str) -> float:
    """The L2 weight ``create`` uses when ``l2`` is None: 1e-4 for "svm", 0 otherwise."""
    if name not in _NAMES:
        raise ValueError(f"unknown model {name!r}; expected one of {list(_NAMES)}")
    return SVM_DEFAULT_L2 if name == "svm" else 0.0


def create(
    name: str,
    *,
    n_features: int,
    n_classes: int = 2,
    hidden: Sequence[int] = (30,),
    l2: float | None = None,
    activation: str = "sigmoid",
) -> Model:
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
    """
    if name not in _NAMES:
        raise ValueError(f"unknown model {name!r}; expected one of {list(_NAMES)}")
    reg = default_l2(name) if l2 is None else l2
    if name == "mlp":
        return MLP(n_features, n_classes, hidden, reg, activation)
    if name in ("logistic", "svm") and int(n_classes) != 2:
        raise ValueError(
            f"{name} is a binary classifier and needs n_classes=2, got {n_classes} "
            "(use a *-binary dataset or the mlp model)"
        )
    if name == "linear":
        return LinearRegression(n_features, reg)
    if name == "logistic":
        return LogisticRegression(n_features, reg)
    return LinearSVM(n_features, reg)
