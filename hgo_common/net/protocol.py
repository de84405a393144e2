"""Protocol constants both ends of the ``hgo.v1.HGO`` Session stream agree on.

See docs/protocol.md for the message sequence and what each side may send. The sizes a
message may reach are computed here once (:func:`vector_message_bytes`,
:func:`max_vector_values`) and used by the server's configuration checks, its servicer
and the worker alike.
"""

from __future__ import annotations

from hgo_common.wire import DEFAULT_MAX_CHUNK_VALUES

__all__ = [
    "DEFAULT_MAX_CHUNK_VALUES",
    "MAX_MESSAGE_BYTES",
    "MESSAGE_MARGIN",
    "PROTOCOL_VERSION",
    "SERVICE",
    "SHARD_PART_BYTES",
    "max_vector_values",
    "vector_fit_error",
    "vector_message_bytes",
]

PROTOCOL_VERSION = 1
"""``Join.protocol_version`` a server of this version accepts."""

SERVICE = "hgo.v1.HGO"
"""The fully qualified gRPC service name."""

SHARD_PART_BYTES = 1 << 20
"""Target payload of one ``ShardPart`` message (features + labels), in bytes."""

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""A worker's channel limit on one message either way (w_k of d = 16 M float32 fits)."""

MESSAGE_MARGIN = 1024
"""Bytes a vector-carrying message (RoundTask, GradientChunk) needs beyond its float32
values: the envelope, round, offset or seed, deadline, session id (a few dozen bytes)."""


def vector_message_bytes(values: int) -> int:
    """The most bytes a message carrying ``values`` float32 values (w_k, a chunk) takes."""
    return 4 * int(values) + MESSAGE_MARGIN


def max_vector_values(max_bytes: int) -> int:
    """The most float32 values one message of at most ``max_bytes`` bytes carries."""
    return max(0, (int(max_bytes) - MESSAGE_MARGIN) // 4)


def vector_fit_error(what: str, values: int, max_bytes: int, limit: str) -> str | None:
    """Why ``values`` float32 values do not fit one message of ``max_bytes``; None if they do.

    The one "does w_k fit in one message" check: the server's setup and servicer check
    their ``--max-message-mb``, the worker its :data:`MAX_MESSAGE_BYTES`. ``what`` names
    the vector (e.g. ``"the weights of d=…"``), ``limit`` the setting that bounds it.
    """
    need = vector_message_bytes(values)
    if need <= max_bytes:
        return None
    return (
        f"{what} ({values} float32 values) need messages of {need} bytes, over {limit} "
        f"({max_bytes} bytes = {max_bytes / 2**20:g} MiB; at most {max_vector_values(max_bytes)} values)"
    )
