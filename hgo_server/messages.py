"""The server's messages: the wire's domain messages plus what only the server needs.

The messages both ends exchange, and their protobuf mapping, live in the wire package
(:mod:`hgo_common.net.messages`, :mod:`hgo_common.net.mapping`) so that server and worker
share them; they are re-exported here for the server's modules. Server-only:
:class:`End` (not a wire message: it tells the transport to end the stream),
:data:`Outgoing` (what a session's outbox holds) and :class:`Summary` (what a finished
run reports).
"""

from __future__ import annotations

from dataclasses import dataclass

from hgo_common.net.messages import (
    Beat,
    Chunk,
    Closed,
    EvalReport,
    JoinRequest,
    Leave,
    RoundReport,
    ShardSlice,
    Spec,
    StatusInfo,
    Stop,
    Task,
    Unknown,
    Welcome,
)

from .errors import ProtocolError

__all__ = [
    "Beat",
    "Chunk",
    "Closed",
    "End",
    "EvalReport",
    "JoinRequest",
    "Leave",
    "Outgoing",
    "RoundReport",
    "ShardSlice",
    "Spec",
    "StatusInfo",
    "Stop",
    "Summary",
    "Task",
    "Unknown",
    "Welcome",
]


@dataclass(frozen=True)
class End:
    """Not a wire message: tells the transport to end the stream (with ``error`` if set)."""

    error: ProtocolError | None = None


Outgoing = Welcome | ShardSlice | Task | Closed | Beat | Stop | End


@dataclass
class Summary:
    """What a finished (or stopped) run reports."""

    rounds: int
    completed: bool
    wall_s: float
    metric_name: str
    metric: float
    evaluation: dict[str, float]
