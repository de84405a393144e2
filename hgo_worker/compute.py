"""What a worker builds from the server's TrainingSpec: the model and each round's C_k.

The round's work itself (plan, mini-batch, gradient in C_k order, attack) is the core's
``hgo_common.local.local_step``, which the simulator runs too; this module only turns
wire-side descriptions into the objects it needs.
"""

from __future__ import annotations

import functools
from collections.abc import Collection
from typing import Any

import numpy as np

from hgo_common import catalog, models, order
from hgo_common.models import ModelProtocol
from hgo_common.net.messages import Spec


def model_from_spec(spec: Spec, allowed: Collection[str] = ()) -> ModelProtocol:
    """The model a ``TrainingSpec`` describes (checks that its dimension matches ``spec.dim``).

    ``spec.model`` came from the network: it is built only if it is a built-in model or
    one of ``allowed`` (the worker's ``--allow-plugin``), see ``catalog.resolve``. The
    spec's sizes are checked before (``hgo_worker.checks.check_spec``).

    Raises
    ------
    plugins.PluginRefused
        The spec names a model that is neither built in nor allowed (nothing is imported).
    plugins.PluginMissing
        The spec names a plug-in (or the torch extra) this machine does not have, or another
        version of it; the message says what to install.
    ValueError
        A spec this worker cannot build (dimension mismatch, bad shape).
    """
    sizes = spec.layer_sizes
    kwargs: dict[str, Any] = {"n_features": spec.n_features, "l2": spec.l2}
    if spec.n_classes:
        kwargs["n_classes"] = spec.n_classes
    if spec.model == "mlp" and len(sizes) > 2:
        kwargs["hidden"] = sizes[1:-1]
    plug = catalog.resolve(
        "model", spec.model, allowed, distribution=spec.model_plugin, version=spec.model_plugin_version
    )
    if plug is not None:
        # The plug-in's own l2 default first; the server's --l2 only if it differs.
        l2 = kwargs.pop("l2")
        model = models.create(spec.model, **kwargs)
        if float(model.l2) != l2:
            model = models.create(spec.model, **kwargs, l2=l2)
    else:
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
