"""protobuf ↔ domain: the one translation of ``hgo.v1`` messages, for server and worker.

Every conversion between the generated stubs (:mod:`hgo_common.net.proto`) and the
dataclasses of :mod:`hgo_common.net.messages` is here, so both ends read and write the
same fields the same way (docs/protocol.md). The server's servicer and the worker's
session call these functions and never build or read a protobuf message themselves.

Serialize once (docs/design.md §2): :func:`server_bytes` caches a :class:`Task`'s
serialized ``ServerMessage`` on the task, so w_k is serialized once per round whatever
q is. :func:`worker_proto` fills a chunk's oneof in place: building
``WorkerMessage(chunk=GradientChunk(...))`` would copy the 64 KiB payload once more.

Decoding does no validation beyond the types protobuf enforces: what a value may be is
the receiver's business (the server's admission and collector; the worker's
``hgo_worker.checks``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
import grpc.aio

from . import messages as m
from .proto import hgo_pb2, hgo_pb2_grpc

__all__ = [
    "SessionStream",
    "server_bytes",
    "server_from_proto",
    "server_proto",
    "spec_from_proto",
    "spec_proto",
    "status_from_proto",
    "status_proto",
    "worker_from_proto",
    "worker_proto",
]


# ---------------------------------------------------------------------------- TrainingSpec


def spec_proto(spec: m.Spec) -> hgo_pb2.TrainingSpec:
    return hgo_pb2.TrainingSpec(
        model=spec.model,
        layer_sizes=list(spec.layer_sizes),
        dim=spec.dim,
        order=spec.order,
        groups=list(spec.groups),
        dataset=spec.dataset,
        n_features=spec.n_features,
        n_classes=spec.n_classes,
        algorithm=spec.algorithm,
        max_chunk_values=spec.max_chunk_values,
        seed=spec.seed,
        partition=spec.partition,
        num_shards=spec.num_shards,
        l2=spec.l2,
        model_plugin=spec.model_plugin,
        model_plugin_version=spec.model_plugin_version,
        dataset_plugin=spec.dataset_plugin,
        dataset_plugin_version=spec.dataset_plugin_version,
    )


def spec_from_proto(pb: hgo_pb2.TrainingSpec) -> m.Spec:
    return m.Spec(
        model=pb.model,
        layer_sizes=tuple(int(x) for x in pb.layer_sizes),
        dim=int(pb.dim),
        order=pb.order,
        groups=tuple(int(x) for x in pb.groups),
        dataset=pb.dataset,
        n_features=int(pb.n_features),
        n_classes=int(pb.n_classes),
        algorithm=pb.algorithm,
        max_chunk_values=int(pb.max_chunk_values),
        seed=int(pb.seed),
        partition=pb.partition,
        num_shards=int(pb.num_shards),
        l2=float(pb.l2),
        model_plugin=pb.model_plugin,
        model_plugin_version=pb.model_plugin_version,
        dataset_plugin=pb.dataset_plugin,
        dataset_plugin_version=pb.dataset_plugin_version,
    )


# ---------------------------------------------------------------------------- server -> worker


def server_proto(msg: m.ServerMessage) -> hgo_pb2.ServerMessage:
    """The ``ServerMessage`` of one domain message."""
    if isinstance(msg, m.Task):
        task = hgo_pb2.RoundTask(
            round=msg.round, order_seed=msg.order_seed, weights=msg.weights, tau_ms=msg.tau_ms,
            evaluate=msg.evaluate,
        )  # fmt: skip
        return hgo_pb2.ServerMessage(task=task)
    if isinstance(msg, m.Beat):
        return hgo_pb2.ServerMessage(heartbeat=hgo_pb2.Heartbeat(unix_ns=msg.unix_ns))
    if isinstance(msg, m.Closed):
        return hgo_pb2.ServerMessage(closed=hgo_pb2.RoundClosed(round=msg.round))
    if isinstance(msg, m.ShardSlice):
        part = hgo_pb2.ShardPart(
            row_offset=msg.row_offset, rows=msg.rows, cols=msg.cols, features=msg.features,
            labels=msg.labels, last=msg.last, total_rows=msg.total_rows,
        )  # fmt: skip
        return hgo_pb2.ServerMessage(shard=part)
    if isinstance(msg, m.Welcome):
        welcome = hgo_pb2.Welcome(
            session_id=msg.session_id, worker_id=msg.worker_id, spec=spec_proto(msg.spec),
            shard_index=msg.shard_index, heartbeat_ms=msg.heartbeat_ms, eval_fraction=msg.eval_fraction,
        )  # fmt: skip
        return hgo_pb2.ServerMessage(welcome=welcome)
    if isinstance(msg, m.Stop):
        return hgo_pb2.ServerMessage(stop=hgo_pb2.Stop(reason=msg.reason))
    raise TypeError(f"not a server message: {type(msg).__name__}")


def server_bytes(msg: m.ServerMessage) -> bytes:
    """The serialized ``ServerMessage`` of ``msg``; a :class:`Task` is serialized once."""
    if isinstance(msg, m.Task):
        if msg.encoded is None:
            msg.encoded = server_proto(msg).SerializeToString()
        return bytes(msg.encoded)
    return server_proto(msg).SerializeToString()


def server_from_proto(pb: hgo_pb2.ServerMessage) -> m.ServerMessage | m.Unknown:
    """The domain form of a received ``ServerMessage`` (:class:`Unknown` for an unset kind)."""
    kind = pb.WhichOneof("kind")
    if kind == "task":
        t = pb.task
        return m.Task(
            round=int(t.round), order_seed=int(t.order_seed), weights=t.weights, tau_ms=float(t.tau_ms),
            evaluate=bool(t.evaluate),
        )  # fmt: skip
    if kind == "heartbeat":
        return m.Beat(unix_ns=int(pb.heartbeat.unix_ns))
    if kind == "closed":
        return m.Closed(round=int(pb.closed.round))
    if kind == "shard":
        s = pb.shard
        return m.ShardSlice(
            row_offset=int(s.row_offset), rows=int(s.rows), cols=int(s.cols), features=s.features,
            labels=s.labels, last=bool(s.last), total_rows=int(s.total_rows),
        )  # fmt: skip
    if kind == "welcome":
        w = pb.welcome
        return m.Welcome(
            session_id=w.session_id, worker_id=int(w.worker_id), spec=spec_from_proto(w.spec),
            shard_index=int(w.shard_index), heartbeat_ms=int(w.heartbeat_ms),
            eval_fraction=float(w.eval_fraction),
        )  # fmt: skip
    if kind == "stop":
        return m.Stop(reason=pb.stop.reason)
    return m.Unknown(kind or "")


# ---------------------------------------------------------------------------- worker -> server


def worker_proto(msg: m.WorkerMessage) -> hgo_pb2.WorkerMessage:
    """The ``WorkerMessage`` of one domain message (a chunk's payload copied once)."""
    out = hgo_pb2.WorkerMessage()
    if isinstance(msg, m.Chunk):
        chunk = out.chunk  # filled in place: no second copy of the values
        chunk.round, chunk.offset, chunk.session_id = msg.round, msg.offset, msg.session_id
        chunk.values = msg.values
    elif isinstance(msg, m.Beat):
        out.heartbeat.unix_ns = msg.unix_ns
    elif isinstance(msg, m.Leave):
        out.leave.reason = msg.reason
    elif isinstance(msg, m.JoinRequest):
        j = out.join
        j.protocol_version, j.name, j.profile, j.rate = msg.protocol_version, msg.name, msg.profile, msg.rate
        j.batch_size, j.wants_shard, j.byzantine = msg.batch_size, msg.wants_shard, msg.byzantine
        if msg.local_data is not None:
            _local_data_proto(msg.local_data, j.local_data)
    elif isinstance(msg, m.EvalReport):
        e = out.eval_report
        e.round, e.session_id, e.examples, e.loss = msg.round, msg.session_id, msg.examples, msg.loss
        if msg.accuracy is not None:
            e.accuracy = msg.accuracy
    elif isinstance(msg, m.RoundReport):
        r = out.round_report
        r.round, r.session_id, r.computed, r.released = msg.round, msg.session_id, msg.computed, msg.released
        r.compute_ms, r.release_ms, r.batch_size = msg.compute_ms, msg.release_ms, msg.batch_size
    else:
        raise TypeError(f"not a worker message: {type(msg).__name__}")
    return out


def worker_from_proto(pb: hgo_pb2.WorkerMessage) -> m.WorkerMessage | m.Unknown:
    """The domain form of a received ``WorkerMessage`` (:class:`Unknown` for an unset kind)."""
    kind = pb.WhichOneof("kind")
    if kind == "chunk":
        c = pb.chunk
        return m.Chunk(round=int(c.round), offset=int(c.offset), values=c.values, session_id=c.session_id)
    if kind == "heartbeat":
        return m.Beat(unix_ns=int(pb.heartbeat.unix_ns))
    if kind == "leave":
        return m.Leave(reason=pb.leave.reason)
    if kind == "join":
        j = pb.join
        return m.JoinRequest(
            protocol_version=int(j.protocol_version), name=j.name, profile=j.profile, rate=float(j.rate),
            batch_size=int(j.batch_size), wants_shard=bool(j.wants_shard), byzantine=bool(j.byzantine),
            local_data=_local_data(j.local_data) if j.HasField("local_data") else None,
        )  # fmt: skip
    if kind == "eval_report":
        e = pb.eval_report
        return m.EvalReport(
            round=int(e.round), session_id=e.session_id, examples=int(e.examples), loss=float(e.loss),
            accuracy=float(e.accuracy) if e.HasField("accuracy") else None,
        )  # fmt: skip
    if kind == "round_report":
        r = pb.round_report
        return m.RoundReport(
            round=int(r.round), session_id=r.session_id, computed=int(r.computed), released=int(r.released),
            compute_ms=float(r.compute_ms), release_ms=float(r.release_ms), batch_size=int(r.batch_size),
        )  # fmt: skip
    return m.Unknown(kind or "")


def _local_data_proto(ld: m.LocalData, pb: hgo_pb2.LocalData) -> None:
    pb.examples, pb.n_features, pb.task = ld.examples, ld.n_features, ld.task
    pb.label_min, pb.label_max, pb.distinct_labels = ld.label_min, ld.label_max, ld.distinct_labels
    pb.sparse = ld.sparse


def _local_data(pb: hgo_pb2.LocalData) -> m.LocalData:
    return m.LocalData(
        examples=int(pb.examples), n_features=int(pb.n_features), task=pb.task[:32],
        label_min=float(pb.label_min), label_max=float(pb.label_max), distinct_labels=int(pb.distinct_labels),
        sparse=bool(pb.sparse),
    )  # fmt: skip


# ---------------------------------------------------------------------------- status


def status_proto(s: m.StatusInfo) -> hgo_pb2.StatusReply:
    return hgo_pb2.StatusReply(
        state=s.state, round=s.round, active_sessions=s.active_sessions, dim=s.dim, rule=s.rule,
        algorithm=s.algorithm, last_metric=s.last_metric, metric_name=s.metric_name,
        last_block=s.last_block, rounds_without_quorum=s.rounds_without_quorum,
    )  # fmt: skip


def status_from_proto(pb: hgo_pb2.StatusReply) -> m.StatusInfo:
    return m.StatusInfo(
        state=pb.state, round=int(pb.round), active_sessions=int(pb.active_sessions), dim=int(pb.dim),
        rule=pb.rule, algorithm=pb.algorithm, last_metric=float(pb.last_metric),
        metric_name=pb.metric_name, last_block=int(pb.last_block),
        rounds_without_quorum=int(pb.rounds_without_quorum),
    )  # fmt: skip


# ---------------------------------------------------------------------------- the worker's stream


class SessionStream:
    """A worker's end of one ``Session`` stream, in domain messages.

    Wraps the generated stub's call: :meth:`write` takes a :data:`~messages.WorkerMessage`,
    :meth:`read` returns a :data:`~messages.ServerMessage` (or :class:`~messages.Unknown`),
    or None once the server has closed the stream. gRPC errors propagate unchanged.
    """

    def __init__(self, channel: grpc.aio.Channel, metadata: Sequence[tuple[str, str]] = ()) -> None:
        self.call: grpc.aio.StreamStreamCall[Any, Any] = hgo_pb2_grpc.HGOStub(channel).Session(
            metadata=tuple(metadata)
        )

    async def write(self, msg: m.WorkerMessage) -> None:
        await self.call.write(worker_proto(msg))

    async def read(self) -> m.ServerMessage | m.Unknown | None:
        pb = await self.call.read()
        if not isinstance(pb, hgo_pb2.ServerMessage):  # grpc.aio.EOF: the stream ended
            return None
        return server_from_proto(pb)

    async def done_writing(self) -> None:
        await self.call.done_writing()

    def cancel(self) -> bool:
        return bool(self.call.cancel())
