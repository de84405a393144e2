"""Protocol constants both ends of the ``hgo.v1.HGO`` Session stream agree on.

See docs/protocol.md for the message sequence and what each side may send.
"""

from __future__ import annotations

PROTOCOL_VERSION = 1
"""``Join.protocol_version`` a server of this version accepts."""

SERVICE = "hgo.v1.HGO"
"""The fully qualified gRPC service name."""

SHARD_PART_BYTES = 1 << 20
"""Target payload of one ``ShardPart`` message (features + labels), in bytes."""

DEFAULT_MAX_CHUNK_VALUES = 16384
"""Default ``TrainingSpec.max_chunk_values``: float32 values per ``GradientChunk``."""

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""A worker's channel limit on one message either way (w_k of d = 16 M float32 fits)."""
