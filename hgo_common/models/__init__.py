"""Models by name: ``models.create("mlp", n_features=784, n_classes=10)``.

Each model is a pure object (shape only, no weights) that satisfies
``ModelProtocol`` (``base.py``): the built-in numpy models with analytic gradients
(``base.Model``), the PyTorch CNNs ``"cnn"`` and ``"cnn-cifar"`` (1.7 M parameters;
``torch_adapter``, optional extra ``hgo[torch]``), and plug-ins. See
``docs/models-and-data.md`` for the losses, parameter layouts and defaults, and
``docs/plugins.md`` for writing your own. Paper §6: linear regression (Boston), logistic
regression (MNIST binary), regularized SVM (phishing), 784-30-10 network (MNIST); a small
CNN for MNIST and CIFAR-10, and McMahan et al.'s (AISTATS 2017) for CIFAR-10. A trained model is
written by ``save`` and read back by ``load(path)`` (an :class:`ExportedModel` with
``predict``/``evaluate``; format in ``export.py``).

A name that is not built in is a plug-in (``hgo_common.plugins``): a reference
``package.module:Name`` or an entry point of group ``hgo.models``, resolving to a
factory called as ``factory(n_features=..., n_classes=...)`` (plus ``l2=`` when given
and the factory accepts it). ``create`` checks what the factory returns before anyone
trains it: the protocol's attributes and methods, then one probe on a few synthetic
rows (``init``, ``gradient`` full and at coordinates, ``evaluate``: shapes, finiteness,
coordinates agreeing with the full gradient). Failures raise ``PluginError`` naming the
plug-in and the problem.
"""

from __future__ import annotations

from .base import TASKS, LinearModel, Model, ModelProtocol
from .export import ExportedModel, load, save
from .factory import (
    BUILTINS,
    REGISTRY,
    TORCH_EXTRA,
    TORCH_MODELS,
    check_model,
    create,
    default_l2,
    names,
    probe,
)
from .mlp import ACTIVATIONS, MLP

__all__ = [
    "ACTIVATIONS",
    "BUILTINS",
    "MLP",
    "REGISTRY",
    "TASKS",
    "TORCH_EXTRA",
    "TORCH_MODELS",
    "ExportedModel",
    "LinearModel",
    "Model",
    "ModelProtocol",
    "check_model",
    "create",
    "default_l2",
    "load",
    "names",
    "probe",
    "save",
]
