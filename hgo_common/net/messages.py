"""The messages of ``hgo.v1`` as plain dataclasses: what server and worker reason about.

One class per protobuf message both ends exchange (proto/hgo/v1/hgo.proto,
docs/protocol.md). The conversion to and from protobuf is :mod:`hgo_common.net.mapping`,
the only code that touches the generated stubs on either side; this module imports no
protobuf, so the server's round logic (``hgo_server.server``) and the worker's session
logic (``hgo_worker.client``) handle these objects only.

Server → worker (:data:`ServerMessage`): :class:`Welcome` (with the run's :class:`Spec`),
:class:`ShardSlice`, :class:`Task` (RoundTask: w_k and the seed of C_k, the paper's
Algorithm 1 step 2), :class:`Closed` (RoundClosed), :class:`Beat`, :class:`Stop`.
Worker → server (:data:`WorkerMessage`): :class:`JoinRequest`, :class:`Chunk`
(GradientChunk: a piece of the prefix V_i, Algorithm 1 step 3), :class:`Beat`,
:class:`Leave`, :class:`EvalReport` (federated evaluation) and :class:`RoundReport` (a
round's self-measured rates). The ``Status`` call answers :class:`StatusInfo`.

A message of a kind this version does not know (an unset ``oneof``) maps to
:class:`Unknown`: a reader ignores or refuses it, it never guesses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hgo_common.datasets.local import LocalData

__all__ = [
    "Beat",
    "Chunk",
    "Closed",
    "EvalReport",
    "JoinRequest",
    "Leave",
    "LocalData",
    "RoundReport",
    "ServerMessage",
    "ShardSlice",
    "Spec",
    "StatusInfo",
    "Stop",
    "Task",
    "Unknown",
    "Welcome",
    "WorkerMessage",
]


@dataclass(frozen=True)
class Spec:
    """TrainingSpec: what a worker needs to compute gradients for this run.

    ``groups`` are the parameter-group sizes (one per layer tensor) of the stratified
    order C_k (paper appendix C.3); empty for a flat order. (The protobuf field keeps
    number 5, once called ``blocks``; B_k blocks are ``hgo_common.blocks``' business.)
    """

    model: str
    layer_sizes: tuple[int, ...]
    dim: int
    order: str
    groups: tuple[int, ...]
    dataset: str
    n_features: int
    n_classes: int
    algorithm: str
    max_chunk_values: int
    seed: int
    partition: str
    num_shards: int
    l2: float
    model_plugin: str = ""
    model_plugin_version: str = ""
    dataset_plugin: str = ""
    dataset_plugin_version: str = ""


@dataclass(frozen=True)
class Welcome:
    session_id: str
    worker_id: int
    spec: Spec
    shard_index: int
    heartbeat_ms: int
    eval_fraction: float = 0.0  # federated evaluation: the validation share held out (0: none)


@dataclass(frozen=True)
class ShardSlice:
    """ShardPart: rows ``[row_offset, row_offset + rows)`` of a shard of ``total_rows`` rows."""

    row_offset: int
    rows: int
    cols: int
    features: bytes  # float32 LE, row-major (rows x cols)
    labels: bytes  # float32 LE (rows,)
    last: bool
    total_rows: int


@dataclass(eq=False)
class Task:
    """RoundTask; on the server one object per round shared by all sampled sessions.

    ``encoded`` is a cache slot for the transport: it serializes the task once and
    every session writes the same bytes.
    """

    round: int
    order_seed: int
    weights: bytes
    tau_ms: float
    encoded: Any = None
    evaluate: bool = False  # federated evaluation: also report metrics of these weights


@dataclass(frozen=True)
class Closed:
    """RoundClosed{round}: every round <= ``round`` is closed."""

    round: int


@dataclass(frozen=True)
class Beat:
    """Heartbeat, either way."""

    unix_ns: int


@dataclass(frozen=True)
class Stop:
    reason: str


@dataclass(frozen=True)
class JoinRequest:
    """The fields of a Join message."""

    protocol_version: int
    name: str = ""
    profile: str = "average"
    rate: float = 0.0
    batch_size: int = 1
    wants_shard: bool = False
    byzantine: bool = False
    local_data: LocalData | None = None  # hgo-worker --data: trains on its own files


@dataclass(frozen=True)
class Chunk:
    """GradientChunk: ``values`` (float32 LE) are the partial derivatives at C_k[offset:]."""

    round: int
    offset: int
    values: bytes
    session_id: str


@dataclass(frozen=True)
class Leave:
    reason: str


@dataclass(frozen=True)
class EvalReport:
    """EvalReport: a worker's metrics of round ``round``'s weights on its validation split
    (``accuracy`` None for regression). Claims, checked by the server (hgo_server.fedeval)."""

    round: int
    session_id: str
    examples: int
    loss: float
    accuracy: float | None = None


@dataclass(frozen=True)
class RoundReport:
    """RoundReport: what the worker measured of round ``round`` (``hgo_worker.pacing.RoundMeter``)."""

    round: int
    session_id: str
    computed: int
    released: int
    compute_ms: float
    release_ms: float
    batch_size: int


@dataclass(frozen=True)
class Unknown:
    """A message whose ``kind`` is unset or unknown to this version (``kind`` is '' then)."""

    kind: str = ""


@dataclass(frozen=True)
class StatusInfo:
    """StatusReply: a snapshot of the server for tools and health checks."""

    state: str
    round: int
    active_sessions: int
    dim: int
    rule: str
    algorithm: str
    last_metric: float
    metric_name: str
    last_block: int
    rounds_without_quorum: int


ServerMessage = Welcome | ShardSlice | Task | Closed | Beat | Stop
"""What the server sends on a Session stream."""

WorkerMessage = JoinRequest | Chunk | Beat | Leave | EvalReport | RoundReport
"""What a worker sends on a Session stream."""
