"""The server's side of the protobuf form (``hgo.v1``; docs/protocol.md).

The mapping of every message between protobuf and the domain dataclasses is the wire
layer's, ``hgo_common.net.mapping`` (shared with the worker). Here: :func:`encode` for the
outbox (a round's Task is serialized once, whatever q is) and :func:`deserializer` /
:func:`serializer`, the gRPC (de)serializers of the ``Session`` method. The deserializer
never raises: a message it cannot accept (over the receive limit, not protobuf, with
unknown fields) becomes a :class:`BadMessage` the servicer counts and answers with one
status code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from hgo_common.net import mapping
from hgo_common.net.proto import hgo_pb2

from . import errors, messages
from .metrics import ServerMetrics


def encode(msg: messages.Outgoing) -> bytes:
    """The serialized ``ServerMessage`` for one outbox entry (a Task is serialized once)."""
    if isinstance(msg, messages.End):
        raise TypeError("End is not a wire message")
    return mapping.server_bytes(msg)


@dataclass(frozen=True)
class BadMessage:
    """Stands in for a worker message that could not be accepted as bytes (too big, not protobuf)."""

    error: errors.ProtocolError


def status_request(data: bytes) -> hgo_pb2.StatusRequest:
    # StatusRequest has no fields: its body is not parsed (nothing in it can matter).
    return hgo_pb2.StatusRequest()


def deserializer(metrics: ServerMetrics, limit: int) -> Callable[[bytes], hgo_pb2.WorkerMessage | BadMessage]:
    """The ``Session`` request deserializer: size, then syntax, then unknown fields (``limit`` in bytes)."""

    def deserialize(data: bytes) -> hgo_pb2.WorkerMessage | BadMessage:
        # Never raise here: gRPC would end the call with UNKNOWN and nothing counted.
        metrics.received_bytes.inc(len(data))
        # Size first, then syntax, then unknown fields: all fatal, all counted, before the
        # servicer classifies the message (late, not sampled, ...).
        if len(data) > limit:
            return BadMessage(
                errors.ResourceExhausted(
                    "oversized-message",
                    f"message larger than the receive limit ({len(data)} vs. {limit} bytes = "
                    "4 * max_chunk_values + margin)",
                )
            )
        try:
            msg = hgo_pb2.WorkerMessage.FromString(data)
        except DecodeError as exc:
            return BadMessage(errors.InvalidArgument("undecodable", f"not a hgo.v1.WorkerMessage: {exc}"))
        msg.DiscardUnknownFields()
        if msg.ByteSize() != len(data):
            # Unknown fields (padding) or a non-canonical encoding: no hgo.v1 client sends either.
            return BadMessage(
                errors.InvalidArgument(
                    "unknown-fields",
                    f"message carries {len(data) - msg.ByteSize()} bytes of unknown fields or non-canonical "
                    "encoding (hgo.v1 has none)",
                )
            )
        return msg

    return deserialize


def serializer(metrics: ServerMetrics) -> Callable[[bytes | hgo_pb2.ServerMessage], bytes]:
    """The ``Session`` response serializer: ``bytes`` (an encoded outbox entry) pass through."""

    def serialize(msg: bytes | hgo_pb2.ServerMessage) -> bytes:
        data = msg if isinstance(msg, bytes) else msg.SerializeToString()
        metrics.sent_bytes.inc(len(data))
        return data

    return serialize
