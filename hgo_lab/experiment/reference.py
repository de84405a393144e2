"""The centralized reference: the scikit-learn counterpart of a scenario's model trained on
the same train/test split, the ceiling a distributed run is compared against."""

from __future__ import annotations

from typing import Any

import numpy as np

from hgo_lab import simulator


def centralized_reference(cfg: simulator.SimConfig) -> dict[str, Any]:
    """The scikit-learn counterpart of ``cfg.model`` trained centrally on the same train/test split.

    logistic: ``LogisticRegression`` (lbfgs, max_iter 1000); mlp: ``MLPClassifier`` with
    the same hidden layers (adam, max_iter 30, random_state 0). Other models: {}.
    """
    import warnings as _w

    ds, _ = simulator.load_dataset(
        cfg.dataset, cfg.data_dir, seed=cfg.split_seed,
        max_train=cfg.max_train, test_fraction=cfg.test_fraction, warn=lambda m: None,
    )  # fmt: skip
    if ds.task != "classification" or cfg.model not in ("logistic", "mlp"):
        return {}
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    est: Any
    if cfg.model == "logistic":
        est, desc = LogisticRegression(max_iter=1000), "sklearn LogisticRegression(lbfgs, max_iter=1000)"
    else:
        est = MLPClassifier(hidden_layer_sizes=tuple(cfg.hidden), max_iter=30, random_state=0)
        desc = f"sklearn MLPClassifier(hidden={tuple(cfg.hidden)}, adam, max_iter=30)"
    with _w.catch_warnings():
        _w.simplefilter("ignore", ConvergenceWarning)
        est.fit(ds.X_train, ds.y_train)
    pred = est.predict(ds.X_test)
    y = np.asarray(ds.y_test)
    return {
        "model": desc,
        "dataset": ds.name,
        "accuracy": float(np.mean(pred == y)),
        "per_class": {str(int(c)): float(np.mean(pred[y == c] == c)) for c in np.unique(y)},
    }
