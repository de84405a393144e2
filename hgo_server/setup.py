"""What the server loads before serving: dataset, model, shards, the run's Spec, w_0.

Everything here is reproducible from the run seed (``hgo_common.rounds`` run-seed
conventions), so a worker given ``--shard i/n`` rebuilds its own shard without the server.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from hgo_common import wire
from hgo_common.net.messages import ShardSlice, Spec
from hgo_common.net.protocol import SHARD_PART_BYTES, vector_fit_error
from hgo_common.spec import Run, build_run

from .config import ConfigError, ServerConfig


@dataclass
class Setup:
    """Dataset, model, shards and initial weights: everything loaded before serving."""

    dataset: Any
    model: Any
    shards: list[np.ndarray]
    spec: Spec
    w0: np.ndarray
    run: Run


def load_setup(cfg: ServerConfig) -> Setup:
    """Load the dataset and build the model and the shards (``hgo_common.spec.build_run``).

    Reproducible from the run spec alone, so a worker given ``--shard i/n`` can rebuild
    its shard without the server (``build_run`` documents how).
    """
    from hgo_common import catalog

    run = build_run(cfg, int(cfg.num_shards or 1))
    ds, model, name = run.dataset, run.model, run.model_name
    ds_origin = catalog.origin("dataset", cfg.dataset)
    model_origin = catalog.origin("model", name)
    why = vector_fit_error(
        f"the weights of model {name!r} (d={model.dim})", model.dim, cfg.max_message_mb * 2**20,
        f"--max-message-mb {cfg.max_message_mb}",
    )  # fmt: skip
    if why is not None:
        raise ConfigError(f"{why}; raise --max-message-mb")
    stratified = run.order != "flat"
    spec = Spec(
        model=name,
        layer_sizes=tuple(int(s) for s in model.layer_sizes),
        dim=int(model.dim),
        order=run.order,
        groups=run.groups if stratified else (),
        dataset=cfg.dataset,
        n_features=int(ds.n_features),
        n_classes=int(ds.n_classes),
        algorithm=cfg.algorithm,
        max_chunk_values=cfg.max_chunk_values,
        seed=cfg.seed,
        partition=cfg.partition,
        num_shards=int(cfg.num_shards or 1),
        l2=float(model.l2),
        model_plugin=model_origin.distribution if model_origin else "",
        model_plugin_version=model_origin.version if model_origin else "",
        dataset_plugin=ds_origin.distribution if ds_origin else "",
        dataset_plugin_version=ds_origin.version if ds_origin else "",
    )
    return Setup(ds, model, run.shards, spec, run.w0, run)


def shard_slices(X: np.ndarray, y: np.ndarray, part_bytes: int = SHARD_PART_BYTES) -> list[ShardSlice]:
    """A shard as ShardSlices of at most ``part_bytes`` payload each (at least one row each).

    Parameters
    ----------
    X : ndarray of shape (n, p)
    y : ndarray of shape (n,)
    """
    n, p = X.shape
    rows_per = max(1, part_bytes // (4 * (p + 1)))
    out = []
    starts = list(range(0, n, rows_per)) or [0]
    for i, lo in enumerate(starts):
        hi = min(n, lo + rows_per)
        out.append(
            ShardSlice(
                row_offset=lo,
                rows=hi - lo,
                cols=p,
                features=wire.encode(X[lo:hi]),
                labels=wire.encode(y[lo:hi]),
                last=i == len(starts) - 1,
                total_rows=n,
            )
        )
    return out
