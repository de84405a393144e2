"""The server's messages as plain dataclasses, free of protobuf.

Server → worker: :class:`Welcome` (with the run's :class:`Spec`), :class:`ShardSlice`,
:class:`Task` (RoundTask: w_k and the seed of C_k, Algorithm 1 step 2), :class:`Closed`
(RoundClosed), :class:`Beat`, :class:`Stop`, and :class:`End` (not a wire message: it
tells the transport to end the stream). Worker → server: :class:`JoinRequest`. The
servicer (``hgo_server.servicer``) converts between these and ``hgo.v1`` protobuf;
:class:`StatusInfo` and :class:`Summary` are what the server reports about a run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import ProtocolError


@dataclass(frozen=True)
class Spec:
    """TrainingSpec: what a worker needs to compute gradients for this run."""

    model: str
    layer_sizes: tuple[int, ...]
    dim: int
    order: str
    blocks: tuple[int, ...]
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


@dataclass(frozen=True)
class ShardSlice:
    row_offset: int
    rows: int
    cols: int
    features: bytes  # float32 LE, row-major (rows x cols)
    labels: bytes  # float32 LE (rows,)
    last: bool
    total_rows: int


@dataclass(eq=False)
class Task:
    """RoundTask; one object per round shared by all sampled sessions.

    ``encoded`` is a cache slot for the transport: it serializes the task once and
    every session writes the same bytes.
    """

    round: int
    order_seed: int
    weights: bytes
    tau_ms: float
    encoded: Any = None


@dataclass(frozen=True)
class Closed:
    round: int


@dataclass(frozen=True)
class Beat:
    unix_ns: int


@dataclass(frozen=True)
class Stop:
    reason: str


@dataclass(frozen=True)
class End:
    """Not a wire message: tells the transport to end the stream (with ``error`` if set)."""

    error: ProtocolError | None = None


Outgoing = Welcome | ShardSlice | Task | Closed | Beat | Stop | End


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


@dataclass(frozen=True)
class StatusInfo:
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


@dataclass
class Summary:
    """What a finished (or stopped) run reports."""

    rounds: int
    completed: bool
    wall_s: float
    metric_name: str
    metric: float
    evaluation: dict[str, float]
