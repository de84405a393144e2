"""What a worker builds from the server's TrainingSpec: the model and each round's C_k.

The round's work itself (plan, mini-batch, gradient in C_k order, attack) is the core's
``hgo_common.local.local_step``, which the simulator runs too; this module only turns
wire-side descriptions into the objects it needs.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from hgo_common import models, order, plugins
from hgo_common.models import ModelProtocol
from hgo_common.net.proto import hgo_pb2


def model_from_spec(spec: hgo_pb2.TrainingSpec) -> ModelProtocol:
    """The model a ``TrainingSpec`` describes (checks that its dimension matches ``spec.dim``).

    Raises
    ------
    plugins.PluginMissing
        The spec names a plug-in (or the torch extra) this machine does not have, or another
        version of it; the message says what to install.
    ValueError
        A spec this worker cannot build (dimension mismatch, bad shape).
    """
    sizes = tuple(int(x) for x in spec.layer_sizes)
    kwargs: dict[str, Any] = {"n_features": int(spec.n_features), "l2": float(spec.l2)}
    if spec.n_classes:
        kwargs["n_classes"] = int(spec.n_classes)
    if spec.model == "mlp" and len(sizes) > 2:
        kwargs["hidden"] = sizes[1:-1]
    if spec.model_plugin or spec.model not in models.names():
        plugins.check_installed("model", spec.model, spec.model_plugin, spec.model_plugin_version)
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
