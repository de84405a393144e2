"""Vector encoding on the wire: raw little-endian float32 bytes (docs/design.md §2).

Encoding is one memcpy (``tobytes``), decoding one ``np.frombuffer`` view. The view is
read-only; callers that must write copy it into their own buffer.
"""

from __future__ import annotations

import numpy as np

from hgo_common.errors import WireError

WIRE_DTYPE = np.dtype("<f4")

DEFAULT_MAX_CHUNK_VALUES = 16384
"""Default ``TrainingSpec.max_chunk_values``: float32 values per ``GradientChunk`` (64 KiB,
docs/server.md "chunk size"). Defined here, in the core, because the collector sizes its
checks by it; ``hgo_common.net.protocol`` re-exports it for the wire."""


class WireFormatError(WireError):
    """A bytes field that is not a whole number of float32 values."""


def encode(vector: np.ndarray) -> bytes:
    """float32 little-endian bytes of ``vector`` (any real dtype, any shape, flattened)."""
    return np.ascontiguousarray(vector, dtype=WIRE_DTYPE).tobytes()


def decode(data: bytes, expected: int | None = None) -> np.ndarray:
    """Read-only float32 view of ``data``.

    Raises WireFormatError when the length is not a multiple of 4 or, with
    ``expected``, when the value count differs.
    """
    if len(data) % WIRE_DTYPE.itemsize:
        raise WireFormatError(f"byte length {len(data)} is not a multiple of 4 (float32)")
    out = np.frombuffer(data, dtype=WIRE_DTYPE)
    if expected is not None and out.size != expected:
        raise WireFormatError(f"expected {expected} float32 values, got {out.size}")
    return out
