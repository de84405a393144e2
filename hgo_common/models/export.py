"""The trained-model file: write it once, load it anywhere with one call.

Format (version 1): a NumPy ``.npz`` archive (``numpy.savez``; no pickled objects, so
``numpy.load(path, allow_pickle=False)`` reads it and any language with a zip and an
``.npy`` reader can too) holding

===================  ===========================  =============================================
array                dtype, shape                 meaning
===================  ===========================  =============================================
``format``           str, ()                      ``"hgo-model"``
``version``          int64, ()                    ``1``
``meta``             str, ()                      JSON: ``model``, ``n_features``, ``n_classes``,
                                                  ``hidden`` (MLP widths), ``l2``, ``activation``,
                                                  ``dim``, ``task``, ``dataset``, ``round`` (rounds
                                                  trained), ``completed``, ``evaluation`` (last test
                                                  metrics), ``settings`` (the run's settings)
``weights``          float64, (dim,)              the flat parameter vector w (layout:
                                                  docs/models-and-data.md)
``feature_mean``     float64, (n_features,)       present when the features were standardized:
``feature_std``      float64, (n_features,)       x_scaled = (x - mean) / std, fitted on the
                                                  training rows
===================  ===========================  =============================================

:func:`load` returns an :class:`ExportedModel`; its ``predict(X)`` and ``evaluate(X, y)``
take raw features (as the dataset files hold them) and apply the stored standardization;
pass ``scaled=True`` for rows that are already standardized (``hgo_common.datasets.load``
output). The file is written atomically (a temporary file, then ``os.replace``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .base import ModelProtocol

FORMAT = "hgo-model"
VERSION = 1

__all__ = ["FORMAT", "VERSION", "ExportedModel", "load", "save"]


@dataclass(frozen=True)
class ExportedModel:
    """A trained model read from a file: the model object, its weights and how to scale inputs.

    Attributes
    ----------
    model : ModelProtocol
        The (weightless) model object, rebuilt from the file's metadata.
    weights : ndarray (dim,) float64
    meta : dict
        The file's metadata (see the module docstring).
    feature_mean, feature_std : ndarray (n_features,) or None
        The standardization fitted on the training rows (None: features used as they are).
    """

    model: ModelProtocol
    weights: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    feature_mean: np.ndarray | None = None
    feature_std: np.ndarray | None = None

    def transform(self, X: np.ndarray) -> np.ndarray:
        """``X`` (n, n_features) scaled as the training rows were."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.model.layer_sizes[0]:
            raise ValueError(
                f"X must have shape (n, {self.model.layer_sizes[0]}) for this {self.model.name} model, "
                f"got {X.shape}"
            )
        if self.feature_mean is None or self.feature_std is None:
            return X
        scaled: np.ndarray = (X - self.feature_mean) / self.feature_std
        return scaled

    def _input(self, X: np.ndarray, scaled: bool) -> np.ndarray:
        return np.asarray(X, dtype=np.float64) if scaled else self.transform(X)

    def predict(self, X: np.ndarray, *, scaled: bool = False) -> np.ndarray:
        """Class ids (n,) int64 for classification, values (n,) float64 for regression."""
        return self.model.predict(self.weights, self._input(X, scaled))

    def evaluate(self, X: np.ndarray, y: np.ndarray, *, scaled: bool = False) -> dict[str, float]:
        """``{"loss": ...}`` plus ``"accuracy"`` for classification (as the server reports them)."""
        return self.model.evaluate(self.weights, self._input(X, scaled), y)


def save(
    path: Path | str,
    model: ModelProtocol,
    weights: np.ndarray,
    *,
    meta: Mapping[str, Any] | None = None,
    feature_mean: np.ndarray | None = None,
    feature_std: np.ndarray | None = None,
) -> Path:
    """Write ``weights`` of ``model`` to ``path`` (format above); returns the path.

    ``meta`` adds entries (dataset, round, evaluation, settings...) to the metadata; the
    model's own shape entries are always written from ``model``.
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (model.dim,):
        raise ValueError(f"weights must have shape ({model.dim},) for {model!r}, got {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError("weights hold NaN or Inf; refusing to export a broken model")
    info: dict[str, Any] = dict(meta or {})
    info.update(
        model=model.name,
        n_features=int(model.layer_sizes[0]),
        n_classes=int(model.n_classes),
        hidden=[int(h) for h in model.layer_sizes[1:-1]],
        l2=float(model.l2),
        activation=str(getattr(model, "activation", "")),
        dim=int(model.dim),
        task=model.task,
    )
    arrays: dict[str, np.ndarray] = {
        "format": np.array(FORMAT),
        "version": np.array(VERSION, dtype=np.int64),
        "meta": np.array(json.dumps(info, sort_keys=True, default=_jsonable)),
        "weights": w,
    }
    if (feature_mean is None) != (feature_std is None):
        raise ValueError("feature_mean and feature_std go together")
    if feature_mean is not None and feature_std is not None:
        arrays["feature_mean"] = np.asarray(feature_mean, dtype=np.float64)
        arrays["feature_std"] = np.asarray(feature_std, dtype=np.float64)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("wb") as fh:
            np.savez(fh, **arrays)  # type: ignore[arg-type]
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _jsonable(value: object) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    return str(value)


def load(path: Path | str) -> ExportedModel:
    """Read a model file written by :func:`save` (or the server's ``--export``).

    Raises ValueError naming the path when it is not such a file (another archive, another
    version, a truncated file).
    """
    from . import create

    p = Path(path)
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise ValueError(f"model file {str(p)!r} does not exist") from None
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(f"{str(p)!r} is not an HGO model file (.npz): {exc}") from None
    if str(arrays.get("format", "")) != FORMAT or "weights" not in arrays or "meta" not in arrays:
        raise ValueError(f"{str(p)!r} is not an HGO model file: no format={FORMAT!r} entry")
    version = int(arrays["version"])
    if version != VERSION:
        raise ValueError(f"{str(p)!r} is an HGO model file of version {version}; this hgo reads {VERSION}")
    meta = json.loads(str(arrays["meta"]))
    kwargs: dict[str, Any] = {"n_features": int(meta["n_features"]), "l2": float(meta["l2"])}
    if meta["model"] == "mlp":
        kwargs.update(hidden=tuple(meta["hidden"]), activation=meta.get("activation") or "sigmoid")
    if meta["task"] == "classification":
        kwargs["n_classes"] = int(meta["n_classes"])
    model = create(meta["model"], **kwargs)
    weights = np.asarray(arrays["weights"], dtype=np.float64)
    if weights.shape != (model.dim,):
        raise ValueError(f"{str(p)!r}: weights of shape {weights.shape} do not fit {model!r} (d={model.dim})")
    return ExportedModel(
        model=model,
        weights=weights,
        meta=meta,
        feature_mean=arrays.get("feature_mean"),
        feature_std=arrays.get("feature_std"),
    )
