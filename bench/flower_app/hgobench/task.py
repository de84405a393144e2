"""The model, data and shards: HGO's own (hgo_common), so both systems train the same thing.

``datasets.load("digits", seed)``, ``rounds.shard_split(y_train, n, "iid", seed)`` and
``rounds.initial_weights(model, seed)`` are what hgo-server's ``load_setup`` does.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np

from hgo_common import datasets, models, rounds


@cache
def setup(hidden: int, seed: int) -> tuple[Any, Any]:
    ds = datasets.load("digits", seed=seed)
    model = models.create("mlp", n_features=ds.n_features, n_classes=ds.n_classes, hidden=(hidden,))
    return ds, model


def shard(hidden: int, seed: int, index: int, num: int) -> tuple[np.ndarray, np.ndarray]:
    ds, _ = setup(hidden, seed)
    rows = rounds.shard_split(ds.y_train, num, "iid", seed)[index]
    return ds.X_train[rows], ds.y_train[rows]


def initial_weights(hidden: int, seed: int) -> np.ndarray:
    _, model = setup(hidden, seed)
    return np.asarray(rounds.initial_weights(model, seed), dtype=np.float32)
