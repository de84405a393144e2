"""What the server loads before serving: dataset, model, shards, the run's Spec, w_0.

With ``--dataset none`` the server holds no training data (issue 21): the model's shape
comes from ``--features``/``--classes``, every worker trains on its own files
(``hgo-worker --data``) and is checked at join (``Admission.join``), and the server
evaluates only on ``--test-data`` when given.

Everything here is reproducible from the run seed (``hgo_common.rounds`` run-seed
conventions), so a worker given ``--shard i/n`` rebuilds its own shard without the server.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from hgo_common import wire
from hgo_common.datasets.local import NO_DATASET
from hgo_common.net.messages import ShardSlice, Spec
from hgo_common.net.protocol import SHARD_PART_BYTES, vector_fit_error
from hgo_common.spec import Run, build_run

from .config import ConfigError, ServerConfig

log = logging.getLogger("hgo.server")


@dataclass
class Setup:
    """Dataset, model, shards and initial weights: everything loaded before serving."""

    dataset: Any
    model: Any
    shards: list[np.ndarray]
    spec: Spec
    w0: np.ndarray
    run: Run
    training_data: bool = True  # False: --dataset none, workers bring their own (--data)

    @property
    def evaluates(self) -> bool:
        """Whether the server has a test split to evaluate w_k on (not with --dataset none alone)."""
        return int(self.dataset.n_test) > 0


def load_setup(cfg: ServerConfig) -> Setup:
    """Load the dataset and build the model and the shards (``hgo_common.spec.build_run``).

    Reproducible from the run spec alone, so a worker given ``--shard i/n`` can rebuild
    its shard without the server (``build_run`` documents how).
    """
    from hgo_common import catalog

    dataless = cfg.dataset == NO_DATASET
    run = _dataless_run(cfg) if dataless else build_run(cfg, int(cfg.num_shards or 1))
    ds, model, name = run.dataset, run.model, run.model_name
    ds_origin = None if dataless else catalog.origin("dataset", cfg.dataset)
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
    setup = Setup(ds, model, run.shards, spec, run.w0, run, training_data=not dataless)
    if dataless:
        log.log(
            logging.INFO if ds.n_test else logging.WARNING,
            "no training data on this server (--dataset none): %s with %d features%s; workers train on their "
            "own files (hgo-worker --data) and are checked at join; server evaluation %s",
            name, spec.n_features, f", {spec.n_classes} classes" if spec.n_classes else "",
            f"on --test-data {cfg.test_data} ({ds.n_test} rows)" if ds.n_test else "OFF (no --test-data)",
        )  # fmt: skip
    return setup


def _dataless_run(cfg: ServerConfig) -> Run:
    """``build_run`` for a server without training rows: the same model, groups and w_0, one
    empty shard (``shard_split`` refuses to split nothing, and there is nothing to send)."""
    from hgo_common import rounds
    from hgo_common.spec.build import build_model

    ds = shape_only(cfg)
    model, name = build_model(cfg, ds)
    groups = tuple(int(g) for g in model.groups)
    order = cfg.order if len(groups) > 1 else "flat"
    empty = np.zeros(0, dtype=np.int64)
    return Run(ds, model, name, [empty], rounds.initial_weights(model, cfg.seed), groups, order)


def shape_only(cfg: ServerConfig) -> Any:
    """``--dataset none``: a Dataset with no training rows, shaped by ``--features``/``--classes``.

    The model's task decides what the workers' labels must be (``datasets.local.fit_error``);
    its test split is ``--test-data`` (read, scaled and checked as a worker's ``--data``) or empty,
    and then the server does not evaluate (:attr:`Setup.evaluates`).
    """
    from hgo_common import datasets, models
    from hgo_common.datasets import local

    assert cfg.features is not None and cfg.model is not None  # config.resolve checked
    p = int(cfg.features)
    try:
        probe = models.create(cfg.model, n_features=p, n_classes=int(cfg.classes or 2), hidden=cfg.hidden)
    except ValueError as exc:
        raise ConfigError(f"--model {cfg.model!r} with --features {p}: {exc}") from None
    task = str(probe.task)
    if task == "classification" and cfg.classes is None:
        raise ConfigError(
            f"--dataset none: --model {cfg.model!r} is a classification model; give its classes "
            "(--classes K, K >= 2)"
        )
    if task != "classification" and cfg.classes is not None:
        raise ConfigError(
            f"--classes {cfg.classes}: --model {cfg.model!r} is a {task} model (it has no classes)"
        )
    n_classes = int(cfg.classes or 0)
    X_test = np.zeros((0, p), dtype=np.float32)
    y_test = np.zeros(0, dtype=np.int64 if task == "classification" else np.float64)
    if cfg.test_data is not None:
        try:
            table = local.read(
                cfg.test_data,
                cfg.test_data_format,
                label_column=cfg.test_label_column,
                scaling=cfg.test_scaling,
            )
        except ValueError as exc:
            raise ConfigError(f"--test-data {cfg.test_data!r}: {exc}") from None
        why = local.fit_error(table.summary(), p, n_classes, task, who="--test-data")
        if why is not None:
            raise ConfigError(f"--test-data {cfg.test_data!r}: {why}")
        X_test, y_test = table.fitted(p, task)
    return datasets.Dataset(
        name=NO_DATASET, task=task, n_classes=n_classes, n_features=p,
        X_train=np.zeros((0, p), dtype=np.float32), y_train=np.zeros(0, dtype=y_test.dtype),
        X_test=X_test, y_test=y_test, default_model=cfg.model,
    )  # fmt: skip


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
