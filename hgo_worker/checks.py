"""What a worker accepts from a server: every size and count checked before allocation.

The threat model (docs/design.md §4) trusts the server, but a worker speaking plaintext
cannot tell its server from anyone on the path, and a device must not crash, allocate
without bound or run code because of what it receives (issue 20, break 1). So the
Welcome's TrainingSpec and every ShardPart are checked here against limits the worker
knows by itself (:data:`~hgo_common.net.protocol.MAX_MESSAGE_BYTES`, ``--max-shard-mb``)
before the worker builds a model or allocates its shard. Names are checked elsewhere:
the model and dataset a spec names go through ``hgo_common.catalog.resolve`` with the
worker's ``--allow-plugin`` list.

A value out of range raises :class:`Refused`, whose message names the field, the value
and the limit; the worker then exits with code 2.
"""

from __future__ import annotations

import math

import numpy as np

from hgo_common import order, wire
from hgo_common.errors import HGOError
from hgo_common.net import protocol
from hgo_common.net.messages import ShardSlice, Spec, Task, Welcome

MAX_DIM = protocol.max_vector_values(protocol.MAX_MESSAGE_BYTES)
"""The largest d a worker accepts: w_k must fit one RoundTask it can receive."""
MAX_LAYERS = 64
"""The most entries of ``TrainingSpec.layer_sizes`` (an MLP of 62 hidden layers)."""
MAX_HEARTBEAT_MS = 3_600_000
"""The longest heartbeat interval accepted (1 h): beyond it a dead server goes unnoticed."""
DEFAULT_MAX_SHARD_MB = 2048
"""Default ``--max-shard-mb``: the largest shard (features + labels, float32) a worker
allocates when the server sends it (CIFAR-10's whole training set is 586 MiB)."""

__all__ = [
    "DEFAULT_MAX_SHARD_MB",
    "MAX_DIM",
    "MAX_HEARTBEAT_MS",
    "MAX_LAYERS",
    "Refused",
    "ShardAssembler",
    "check_task",
    "check_welcome",
]


class Refused(HGOError):
    """A value the server sent that this worker will not act on.

    Not a ValueError on purpose: the handshake turns ValueErrors (a spec the worker
    cannot train) into a rejection by the server; this is the worker's own refusal.
    """

    def __init__(self, field: str, value: object, limit: str, *, message: str | None = None) -> None:
        text = repr(value)
        if len(text) > 80:
            text = text[:77] + "..."
        super().__init__(message or f"the server sent {field} = {text}: {limit}")
        self.field = field
        self.value = value


def _int_in(field: str, value: int, lo: int, hi: int, why: str = "") -> None:
    if not lo <= value <= hi:
        raise Refused(field, value, f"expected {lo}..{hi}" + (f" ({why})" if why else ""))


def check_welcome(welcome: Welcome) -> None:
    """Check the Welcome and its TrainingSpec before anything is built from them.

    Raises
    ------
    Refused
        Naming the first field out of range, its value and the limit.
    """
    _int_in("Welcome.heartbeat_ms", welcome.heartbeat_ms, 0, MAX_HEARTBEAT_MS, "0 = no heartbeats")
    check_spec(welcome.spec)


def check_spec(spec: Spec) -> None:
    """Sizes and counts of a TrainingSpec (names are ``catalog.resolve``'s business)."""
    d = spec.dim
    _int_in("TrainingSpec.dim", d, 1, MAX_DIM, f"w_k must fit one {protocol.MAX_MESSAGE_BYTES}-byte message")
    _int_in("TrainingSpec.n_features", spec.n_features, 1, d, "at most dim")
    _int_in("TrainingSpec.n_classes", spec.n_classes, 0, d, "0 = regression; at most dim")
    _int_in("TrainingSpec.layer_sizes (count)", len(spec.layer_sizes), 0, MAX_LAYERS)
    for i, size in enumerate(spec.layer_sizes):
        _int_in(f"TrainingSpec.layer_sizes[{i}]", size, 1, d, "at most dim")
    for i in range(len(spec.layer_sizes) - 1):
        # Consecutive layers hold an (a x b) weight matrix, which is part of the d coordinates.
        a, b = spec.layer_sizes[i], spec.layer_sizes[i + 1]
        if a * b > d:
            raise Refused(
                f"TrainingSpec.layer_sizes[{i}:{i + 2}]", [a, b], f"a {a} x {b} layer exceeds dim={d}"
            )
    if spec.order not in ("", *order.ORDERS):  # "" = flat (a spec from an older server)
        raise Refused("TrainingSpec.order", spec.order, f"expected one of {list(order.ORDERS)}")
    _int_in("TrainingSpec.groups (count)", len(spec.groups), 0, d, "at most dim")
    if spec.groups:
        for i, size in enumerate(spec.groups):
            _int_in(f"TrainingSpec.groups[{i}]", size, 1, d, "at most dim")
        if sum(spec.groups) != d:
            raise Refused("TrainingSpec.groups", list(spec.groups)[:8], f"they must sum to dim={d}")
    _int_in(
        "TrainingSpec.max_chunk_values", spec.max_chunk_values, 0, MAX_DIM,
        f"0 = the default; a chunk must fit one {protocol.MAX_MESSAGE_BYTES}-byte message",
    )  # fmt: skip
    if not (math.isfinite(spec.l2) and spec.l2 >= 0):
        raise Refused("TrainingSpec.l2", spec.l2, "expected a finite value >= 0")


def check_task(task: Task, d: int) -> None:
    """A RoundTask's seed and weights, before C_k is expanded and w_k decoded."""
    _int_in("RoundTask.order_seed", task.order_seed, 0, order.SEED_LIMIT - 1)
    if len(task.weights) != 4 * d:
        raise Refused("RoundTask.weights (bytes)", len(task.weights), f"expected 4 * dim = {4 * d}")


class ShardAssembler:
    """Assemble the ``ShardPart``s the server sends into (X, y), checking each first.

    Parts arrive in order (docs/protocol.md): the first fixes ``total_rows`` and
    ``cols``, which must agree with the spec's ``n_features`` and fit ``max_bytes``
    before anything is allocated; each part must extend the rows received so far.
    """

    def __init__(self, spec: Spec, max_bytes: int, limit: str = "--max-shard-mb") -> None:
        self.spec = spec
        self.max_bytes = int(max_bytes)
        self.limit = limit
        self.X: np.ndarray | None = None
        self.y: np.ndarray | None = None
        self.filled = 0
        self.done = False

    def add(self, part: ShardSlice) -> bool:
        """Copy one part in; True once the last part has arrived."""
        if self.X is None:
            self._allocate(part)
        assert self.X is not None and self.y is not None
        total, cols = self.X.shape
        if part.total_rows != total:
            raise Refused("ShardPart.total_rows", part.total_rows, f"the first part said {total}")
        if part.cols != cols:
            raise Refused("ShardPart.cols", part.cols, f"the first part said {cols}")
        if part.row_offset != self.filled:
            want = f"expected {self.filled} (parts come in order)"
            raise Refused("ShardPart.row_offset", part.row_offset, want)
        _int_in("ShardPart.rows", part.rows, 0, total - self.filled, f"rows left of total_rows={total}")
        if len(part.features) != 4 * part.rows * cols:
            want = f"expected 4 * rows * cols = {4 * part.rows * cols}"
            raise Refused("ShardPart.features (bytes)", len(part.features), want)
        if len(part.labels) != 4 * part.rows:
            want = f"expected 4 * rows = {4 * part.rows}"
            raise Refused("ShardPart.labels (bytes)", len(part.labels), want)
        lo, hi = self.filled, self.filled + part.rows
        labels = wire.decode(part.labels, part.rows)
        self._check_labels(labels, lo)
        self.X[lo:hi] = wire.decode(part.features, part.rows * cols).reshape(part.rows, cols)
        self.y[lo:hi] = labels
        self.filled = hi
        if part.last:
            if self.filled != total:
                want = f"only {self.filled} of total_rows={total} rows arrived"
                raise Refused("ShardPart.last", True, want)
            self.done = True
        return self.done

    def _allocate(self, part: ShardSlice) -> None:
        spec = self.spec
        if part.cols != spec.n_features:
            want = f"expected TrainingSpec.n_features = {spec.n_features}"
            raise Refused("ShardPart.cols", part.cols, want)
        max_rows = self.max_bytes // (4 * (part.cols + 1))
        _int_in(
            "ShardPart.total_rows", part.total_rows, 0, max_rows,
            f"a shard of {part.cols} float32 features + 1 label per row must fit {self.limit} "
            f"({self.max_bytes // 2**20} MiB)",
        )  # fmt: skip
        self.X = np.empty((part.total_rows, part.cols), dtype=np.float32)
        self.y = np.empty(part.total_rows, dtype=np.float32)

    def _check_labels(self, labels: np.ndarray, lo: int) -> None:
        if not labels.size:
            return
        if not np.all(np.isfinite(labels)):
            raise Refused(f"ShardPart.labels (rows from {lo})", "non-finite", "labels must be finite")
        k = self.spec.n_classes
        if k and (labels.min() < 0 or labels.max() >= k or not np.array_equal(labels, np.round(labels))):
            raise Refused(
                f"ShardPart.labels (rows from {lo})",
                f"[{labels.min():g}, {labels.max():g}]",
                f"class ids must be integers in 0..{k - 1} (TrainingSpec.n_classes = {k})",
            )

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(X, y): y as int64 class ids (classification) or float64 targets (regression)."""
        assert self.done and self.X is not None and self.y is not None
        labels = self.y.astype(np.int64) if self.spec.n_classes else self.y.astype(np.float64)
        return self.X, labels
