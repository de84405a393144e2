"""The trained-model file: write it once, load it anywhere with one call, run nothing it names.

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
                                                  metrics), ``settings`` (the run's settings),
                                                  ``preprocessing`` (what ``predict`` does to raw
                                                  rows: ``standardize``, ``input``)
``weights``          float64, (dim,)              the flat parameter vector w (layout:
                                                  docs/models-and-data.md)
``feature_mean``     float64, (n_features,)       present when the features were standardized:
``feature_std``      float64, (n_features,)       x_scaled = (x - mean) / std, fitted on the
                                                  training rows
``classes``          int64 or str, (n_classes,)   classification: the label of each class id
                                                  (default ``0..n_classes-1``, the dataset's ids)
``feature_names``    str, (n_features,)           optional: the input columns, in order
===================  ===========================  =============================================

The input columns are those of the dataset named in ``meta`` (``hgo_common.datasets``), in
its order, as the files hold them ("raw"). Files written before ``classes`` and
``preprocessing`` existed still load (the class ids stand for the classes).

:func:`load` returns an :class:`ExportedModel`; its ``predict(X)`` and ``evaluate(X, y)``
take raw features and apply the stored standardization, or a whole
``hgo_common.datasets.Dataset`` (``evaluate(ds)`` scores its test split, standardized or
not, by undoing its own scaling); pass ``scaled=True`` for rows already standardized with
the model's own statistics. Rows that look standardized already (column means near 0 where
the training means are not) draw a warning: scaling them twice is the classic way to get
chance accuracy from a good model. The file is written atomically (a temporary file, then
``os.replace``).

Loading runs no code the file names (issue 20): the model must be built in
(``models.names()``) or listed in ``load(..., allow_plugins=(...))``; before any array is
read, every ``.npy`` header is checked (dtype, no objects, shape x itemsize = the member's
size, within ``max_bytes``), and the metadata's sizes (``n_features``, ``hidden``,
``n_classes``) are checked against the weights' length before a model object is built.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import warnings
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .base import TASKS, ModelProtocol
from .factory import BUILTINS, create

FORMAT = "hgo-model"
VERSION = 1
MAX_BYTES = 2**31  # default bound on any one array of a model file (2 GiB)

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
    classes : ndarray (n_classes,) or None
        The label of each class id (classification; None for regression).
    feature_names : tuple of str or None
        The input columns in order, when the file names them.
    """

    model: ModelProtocol
    weights: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    feature_mean: np.ndarray | None = None
    feature_std: np.ndarray | None = None
    classes: np.ndarray | None = None
    feature_names: tuple[str, ...] | None = None

    @property
    def n_features(self) -> int:
        return int(self.model.layer_sizes[0])

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Raw rows ``X`` (n, n_features) scaled as the training rows were."""
        X = self._check(X)
        if self.feature_mean is None or self.feature_std is None:
            return X
        self._warn_if_scaled(X)
        scaled: np.ndarray = (X - self.feature_mean) / self.feature_std
        return scaled

    def _check(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(
                f"X must have shape (n, {self.n_features}) for this {self.model.name} model, got {X.shape}"
            )
        return X

    def _warn_if_scaled(self, X: np.ndarray) -> None:
        # Raw rows have column means near the training means; rows a Dataset already
        # standardized have them near 0. Distances in training-std units, averaged over
        # the columns; only meaningful with enough rows and a scaling far from identity.
        assert self.feature_mean is not None and self.feature_std is not None
        if X.shape[0] < 20:
            return
        m = X.mean(axis=0)
        from_training = float(np.mean(np.abs(m - self.feature_mean) / self.feature_std))
        from_zero = float(np.mean(np.abs(m)))
        if from_training > 0.5 and from_zero < 0.25 * from_training:
            warnings.warn(
                f"these {X.shape[0]} rows look standardized already (column means near 0; the "
                f"model's training means are {from_training:.2f} std away): predict/evaluate "
                "standardize raw rows themselves. Pass raw features (datasets.load(..., "
                "standardize=False)), the Dataset itself (evaluate(ds)), or scaled=True",
                UserWarning,
                stacklevel=4,
            )

    def _input(self, X: Any, scaled: bool) -> np.ndarray:
        if scaled:
            return self._check(X)
        return self.transform(X)

    def _dataset_rows(self, ds: Any) -> tuple[np.ndarray, np.ndarray]:
        """A ``Dataset``'s test rows scaled for this model (its own scaling undone, if any)."""
        X = self._check(ds.X_test)
        mean, std = getattr(ds, "feature_mean", None), getattr(ds, "feature_std", None)
        if mean is None or std is None:  # raw rows
            return (X if self.feature_mean is None else (X - self.feature_mean) / self.feature_std), ds.y_test
        if (
            self.feature_mean is not None
            and self.feature_std is not None
            and np.array_equal(mean, self.feature_mean)
            and np.array_equal(std, self.feature_std)
        ):
            return X, ds.y_test  # scaled exactly as the training rows were: as the server scored
        raw = X * std + mean
        return (raw if self.feature_mean is None else (raw - self.feature_mean) / self.feature_std), ds.y_test

    def predict(self, X: Any, *, scaled: bool = False) -> np.ndarray:
        """Class ids (n,) int64 for classification, values (n,) float64 for regression.

        ``X``: raw rows (n, n_features), or a ``Dataset`` (its test rows).
        """
        if hasattr(X, "X_test"):
            return self.model.predict(self.weights, self._dataset_rows(X)[0])
        return self.model.predict(self.weights, self._input(X, scaled))

    def predict_labels(self, X: Any, *, scaled: bool = False) -> np.ndarray:
        """The class labels (``classes[predict(X)]``) of a classifier."""
        if self.classes is None:
            raise ValueError(f"this {self.model.name} model is a {self.model.task} model: it has no classes")
        labels: np.ndarray = self.classes[self.predict(X, scaled=scaled)]
        return labels

    def evaluate(self, X: Any, y: np.ndarray | None = None, *, scaled: bool = False) -> dict[str, float]:
        """``{"loss": ...}`` plus ``"accuracy"`` for classification (as the server reports them).

        ``evaluate(X, y)`` with raw rows, or ``evaluate(ds)`` with a ``Dataset`` (its test split).
        """
        if hasattr(X, "X_test"):
            if y is not None:
                raise ValueError("evaluate(ds) takes the labels from the Dataset; pass no y")
            rows, labels = self._dataset_rows(X)
            return self.model.evaluate(self.weights, rows, labels)
        if y is None:
            raise ValueError("evaluate(X, y): y is missing (or pass a Dataset: evaluate(ds))")
        return self.model.evaluate(self.weights, self._input(X, scaled), y)


def save(
    path: Path | str,
    model: ModelProtocol,
    weights: np.ndarray,
    *,
    meta: Mapping[str, Any] | None = None,
    feature_mean: np.ndarray | None = None,
    feature_std: np.ndarray | None = None,
    classes: Sequence[Any] | np.ndarray | None = None,
    feature_names: Sequence[str] | None = None,
) -> Path:
    """Write ``weights`` of ``model`` to ``path`` (format above); returns the path.

    ``meta`` adds entries (dataset, round, evaluation, settings...) to the metadata; the
    model's own shape entries are always written from ``model``. ``classes`` (default: the
    class ids ``0..n_classes-1``) labels each class of a classifier; ``feature_names``
    names the input columns.
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (model.dim,):
        raise ValueError(f"weights must have shape ({model.dim},) for {model!r}, got {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError("weights hold NaN or Inf; refusing to export a broken model")
    p = int(model.layer_sizes[0])
    arrays: dict[str, np.ndarray] = {"weights": w}
    if (feature_mean is None) != (feature_std is None):
        raise ValueError("feature_mean and feature_std go together")
    if feature_mean is not None and feature_std is not None:
        for name, v in (("feature_mean", feature_mean), ("feature_std", feature_std)):
            a = np.asarray(v, dtype=np.float64)
            if a.shape != (p,) or not np.all(np.isfinite(a)):
                raise ValueError(f"{name} must be {p} finite values (one per feature), got shape {a.shape}")
            arrays[name] = a
        if np.any(arrays["feature_std"] <= 0):
            raise ValueError("feature_std must be > 0 everywhere (a constant feature divides by 1)")
    if model.task == "classification":
        arrays["classes"] = _labels(np.arange(int(model.n_classes)) if classes is None else classes)
        if arrays["classes"].shape != (int(model.n_classes),):
            raise ValueError(f"classes must hold {model.n_classes} labels, got {arrays['classes'].shape}")
    elif classes is not None:
        raise ValueError(f"classes given for a {model.task} model")
    if feature_names is not None:
        names = np.asarray([str(n) for n in feature_names], dtype=np.str_)
        if names.shape != (p,):
            raise ValueError(f"feature_names must name the {p} features, got {names.shape[0]}")
        arrays["feature_names"] = names
    info: dict[str, Any] = dict(meta or {})
    info.update(
        model=model.name,
        n_features=p,
        n_classes=int(model.n_classes),
        hidden=[int(h) for h in model.layer_sizes[1:-1]],
        l2=float(model.l2),
        activation=str(getattr(model, "activation", "")),
        dim=int(model.dim),
        task=model.task,
        preprocessing={
            "standardize": "feature_mean" in arrays,
            "input": f"{p} raw features in the column order of the dataset "
            f"{info.get('dataset', '(not recorded)')!s}",
        },
    )
    arrays = {
        "format": np.array(FORMAT),
        "version": np.array(VERSION, dtype=np.int64),
        "meta": np.array(json.dumps(info, sort_keys=True, default=_jsonable)),
        **arrays,
    }
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


def _labels(classes: Sequence[Any] | np.ndarray) -> np.ndarray:
    """Class labels as int64 when they are all integers, else as (unicode) strings: never objects."""
    a = np.asarray(classes)
    if a.dtype.kind in "iub":
        return a.astype(np.int64)
    return np.asarray([str(c) for c in a.tolist()], dtype=np.str_)


def _jsonable(value: object) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    return str(value)


# What each array may hold: dtype kinds (b bool, i/u int, f float, U unicode) and rank.
_ARRAYS: dict[str, tuple[str, int]] = {
    "format": ("U", 0),
    "version": ("iu", 0),
    "meta": ("U", 0),
    "weights": ("f", 1),
    "feature_mean": ("f", 1),
    "feature_std": ("f", 1),
    "classes": ("iuU", 1),
    "feature_names": ("U", 1),
}


def _headers(p: Path, max_bytes: int) -> dict[str, tuple[tuple[int, ...], np.dtype[Any]]]:
    """Shape and dtype of each known array, read from the ``.npy`` headers alone, after checking
    that the bytes each header announces are exactly the bytes its member holds (so no array
    is allocated larger than the file) and at most ``max_bytes``."""
    out: dict[str, tuple[tuple[int, ...], np.dtype[Any]]] = {}
    size = p.stat().st_size
    with zipfile.ZipFile(p) as zf:
        for info in zf.infolist():
            name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            if name not in _ARRAYS:
                continue  # never read
            if info.file_size > max_bytes:
                raise ValueError(f"array {name!r} is {info.file_size} bytes, above max_bytes={max_bytes}")
            if info.compress_type == zipfile.ZIP_STORED and info.compress_size > size:
                raise ValueError(f"array {name!r} claims {info.compress_size} bytes in a file of {size}")
            with zf.open(info) as fh:
                version = np.lib.format.read_magic(fh)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
                elif version in ((2, 0), (3, 0)):
                    shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
                else:
                    raise ValueError(f"array {name!r}: .npy format version {version} is not supported")
                header = fh.tell()
            kinds, rank = _ARRAYS[name]
            if dtype.hasobject or dtype.kind not in kinds or len(shape) != rank:
                raise ValueError(
                    f"array {name!r} is {dtype.str} of shape {shape}; expected rank {rank}, kind {kinds!r}"
                )
            if any(not isinstance(n, int) or n < 0 for n in shape):
                raise ValueError(f"array {name!r}: bad shape {shape}")
            announced = header + math.prod(shape) * dtype.itemsize
            if announced != info.file_size:
                raise ValueError(
                    f"array {name!r}: its header announces {announced} bytes (shape {shape}, "
                    f"{dtype.str}), the file holds {info.file_size}"
                )
            out[name] = (tuple(shape), dtype)
    return out


def _int(meta: Mapping[str, Any], key: str, lo: int, hi: int) -> int:
    v = meta.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ValueError(f"meta {key!r} must be an integer in [{lo}, {hi}], got {v!r}")
    return v


def _check_sizes(meta: Mapping[str, Any], dim: int) -> dict[str, Any]:
    """The model arguments from ``meta``, each size bounded by the weights' length ``dim``
    (every built-in model has at least n_features/3 and n_classes weights), and a numpy
    model's exact parameter count equal to ``dim``: nothing is built bigger than the file.
    An allowed plug-in is trusted with its own sizes (checked against ``dim`` once built)."""
    name = meta["model"]
    if name not in BUILTINS:
        dim = 2**31
    task = meta.get("task")
    if task not in TASKS:
        raise ValueError(f"meta 'task' must be one of {list(TASKS)}, got {task!r}")
    kwargs: dict[str, Any] = {"n_features": _int(meta, "n_features", 1, 3 * dim)}
    l2 = meta.get("l2")
    if isinstance(l2, bool) or not isinstance(l2, int | float) or not (math.isfinite(l2) and l2 >= 0):
        raise ValueError(f"meta 'l2' must be a finite number >= 0, got {l2!r}")
    kwargs["l2"] = float(l2)
    if task == "classification":
        kwargs["n_classes"] = _int(meta, "n_classes", 2, max(2, dim))
    if name == "mlp":
        hidden = meta.get("hidden")
        if (
            not isinstance(hidden, list)
            or len(hidden) > dim
            or not all(isinstance(h, int) and not isinstance(h, bool) and 1 <= h <= dim for h in hidden)
        ):
            raise ValueError(f"meta 'hidden' must be a list of layer widths in [1, {dim}], got {hidden!r}")
        sizes = [kwargs["n_features"], *hidden, kwargs.get("n_classes", 0)]
        count = sum(a * b + b for a, b in itertools.pairwise(sizes))
        if count != dim:
            raise ValueError(f"an mlp of layer sizes {sizes} has {count} parameters, not {dim}")
        activation = meta.get("activation") or "sigmoid"
        if not isinstance(activation, str):
            raise ValueError(f"meta 'activation' must be a string, got {activation!r}")
        kwargs.update(hidden=tuple(hidden), activation=activation)
    elif name in ("linear", "logistic", "svm") and kwargs["n_features"] + 1 != dim:
        raise ValueError(f"a {name} model of {kwargs['n_features']} features has {kwargs['n_features'] + 1} "
                         f"parameters, the file holds {dim} weights")  # fmt: skip
    return kwargs


def load(path: Path | str, *, allow_plugins: Iterable[str] = (), max_bytes: int = MAX_BYTES) -> ExportedModel:
    """Read a model file written by :func:`save` (or the server's ``--export``).

    Parameters
    ----------
    path : path
    allow_plugins : iterable of str
        Plug-in models (``"package.module:Name"`` references or entry-point names) this call
        may import and build. Built-in models (``models.names()``) need no permission; a
        file naming anything else is refused: loading a file runs no code it names.
    max_bytes : int
        Largest array accepted (default 2 GiB).

    Raises ValueError naming the path when it is not such a file (another archive, another
    version, a truncated file, sizes that disagree), or names a model that is neither built
    in nor allowed.
    """
    p = Path(path)
    allowed = {str(a) for a in allow_plugins}
    try:
        headers = _headers(p, int(max_bytes))
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in headers}
    except FileNotFoundError:
        raise ValueError(f"model file {str(p)!r} does not exist") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{str(p)!r} is not an HGO model file (.npz): {exc}") from None
    if str(arrays.get("format", "")) != FORMAT or "weights" not in arrays or "meta" not in arrays:
        raise ValueError(f"{str(p)!r} is not an HGO model file: no format={FORMAT!r} entry")
    version = int(arrays.get("version", -1))
    if version != VERSION:
        raise ValueError(f"{str(p)!r} is an HGO model file of version {version}; this hgo reads {VERSION}")
    try:
        meta = json.loads(str(arrays["meta"]))
    except ValueError as exc:
        raise ValueError(f"{str(p)!r}: its meta is not JSON ({exc})") from None
    name = meta.get("model") if isinstance(meta, dict) else None
    if not isinstance(name, str):
        raise ValueError(f"{str(p)!r}: meta names no model (got {name!r})")
    if name not in BUILTINS and name not in allowed:
        raise ValueError(
            f"{str(p)!r} names the model {name!r}, which is not built in ({list(BUILTINS)}): "
            f"models.load imports no code a file names; if you trust it, pass "
            f"allow_plugins=({name!r},)"
        )
    weights = np.asarray(arrays["weights"], dtype=np.float64)
    dim = int(weights.shape[0])
    if dim < 1 or not np.all(np.isfinite(weights)):
        raise ValueError(f"{str(p)!r}: weights must be finite and non-empty ({dim} values)")
    try:
        kwargs = _check_sizes(meta, dim)
    except ValueError as exc:
        raise ValueError(f"{str(p)!r}: {exc}") from None
    model = create(name, **kwargs)
    if weights.shape != (model.dim,):
        raise ValueError(f"{str(p)!r}: weights of shape {weights.shape} do not fit {model!r} (d={model.dim})")
    n_features = int(model.layer_sizes[0])
    stats = [arrays.get("feature_mean"), arrays.get("feature_std")]
    if (stats[0] is None) != (stats[1] is None):
        raise ValueError(f"{str(p)!r}: feature_mean and feature_std go together")
    for key, a in zip(("feature_mean", "feature_std"), stats, strict=True):
        if a is not None and (a.shape != (n_features,) or not np.all(np.isfinite(a))):
            raise ValueError(f"{str(p)!r}: {key} must be {n_features} finite values, got shape {a.shape}")
    if stats[1] is not None and np.any(stats[1] <= 0):
        raise ValueError(f"{str(p)!r}: feature_std must be > 0")
    classes = arrays.get("classes")
    if model.task == "classification":
        if classes is None:  # files written before classes were stored: the class ids
            classes = np.arange(int(model.n_classes), dtype=np.int64)
        if classes.shape != (int(model.n_classes),):
            raise ValueError(f"{str(p)!r}: classes must hold {model.n_classes} labels, got {classes.shape}")
    else:
        classes = None
    names = arrays.get("feature_names")
    if names is not None and names.shape != (n_features,):
        raise ValueError(f"{str(p)!r}: feature_names must name {n_features} features, got {names.shape}")
    return ExportedModel(
        model=model,
        weights=weights,
        meta=meta,
        feature_mean=None if stats[0] is None else np.asarray(stats[0], dtype=np.float64),
        feature_std=None if stats[1] is None else np.asarray(stats[1], dtype=np.float64),
        classes=classes,
        feature_names=None if names is None else tuple(str(n) for n in names),
    )
