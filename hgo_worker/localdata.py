"""``hgo-worker --data PATH``: the worker trains on its own files (issue 21; paper §1, §3).

In the paper every worker i holds its own dataset D_i and only gradient coordinates leave
the device. With ``--data`` the worker reads its files once at start
(:func:`hgo_common.datasets.local.read`: format, label column, scaling), says what they
hold in its Join (``Join.local_data``: rows, features, label range, task; never the data),
asks for no shard, and receives nothing but the spec, w_k and C_k.

Two checks, one rule (:func:`hgo_common.datasets.local.fit_error`): the server refuses a
Join whose data does not fit its model (FAILED_PRECONDITION, details starting
``datasets.local.REFUSED``; :func:`refusal` recognizes it), and the worker checks the
spec it is welcomed with (:func:`mismatch`), so a worker never trains a model its data
does not fit even against a server that does not check. Either way the worker exits
with code 2: the fix (other files, another ``--label-column``) is on the device.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc

from hgo_common.datasets import local
from hgo_common.models import ModelProtocol
from hgo_common.net import messages as msgs

__all__ = ["from_config", "load", "mismatch", "refusal"]


def from_config(cfg: Any) -> local.LocalTable | None:
    """The table of a ``WorkerConfig``'s ``--data`` (None without it); ValueError as :func:`load`."""
    if cfg.data is None:
        return None
    return load(cfg.data, cfg.data_format, cfg.label_column, cfg.scaling)


def load(
    path: Path, fmt: str = "auto", label_column: str | None = None, scaling: str = "auto"
) -> local.LocalTable:
    """The device's table; ValueError naming ``--data`` and what is wrong (the CLI exits 2)."""
    try:
        return local.read(path, fmt, label_column=label_column, scaling=scaling)
    except ValueError as exc:
        text = str(exc)
        raise ValueError(text if text.startswith("--") else f"--data {str(path)!r}: {text}") from None


def mismatch(table: local.LocalTable, spec: msgs.Spec, model: ModelProtocol) -> str | None:
    """Why ``table`` cannot train the welcomed run's ``model`` (naming both values), or None."""
    why = local.fit_error(table.summary(), int(spec.n_features), int(spec.n_classes), str(model.task))
    return None if why is None else f"--data {str(table.path)!r}: {why}"


def refusal(exc: grpc.aio.AioRpcError) -> str | None:
    """The server's message when it refused this worker's data at join, else None."""
    details = exc.details() or ""
    if exc.code() == grpc.StatusCode.FAILED_PRECONDITION and details.startswith(local.REFUSED):
        return f"refused by the server: {details}"
    return None
