"""The per-round buffer: validated gradient chunks into a preallocated (q x d) matrix.

Paper §3, Algorithm 1 step 3: worker i returns V_i, its gradient at the first b_i
coordinates of C_k. On the wire V_i arrives as a stream of chunks
``(round, offset, values)`` (docs/design.md §2); this module is the one place that decides
whether a chunk is legal and copies it straight into row i of a float32 buffer, so the
networked server, the in-process simulator and the fuzz tests share the same rules.

Rules (hgo.proto, docs/protocol.md "Wire protocol semantics"):

* a chunk must extend the slot's prefix contiguously: ``offset == prefix``
  (``offset < prefix`` is an *overlap*, ``offset > prefix`` a *gap*);
* it must not reach past d, must be a whole number of float32 values, and carry at
  most ``max_chunk_values`` values;
* it must be for the round the buffer is open for; once the round is closed every
  chunk is *late*: dropped, counted, never fatal (a worker cannot know exactly when
  the deadline fell);
* **non-finite policy**: a worker's prefix ends right before its first NaN or ±inf.
  The finite head of that chunk is kept, the rest of the round's values from that
  worker are ignored (reason ``"non-finite"``) and the slot counts as finished.

Rejections raise :class:`ChunkRejected`, whose ``reason`` is the label used in
``hgo_rejected_messages_total{reason}`` and whose ``fatal`` flag says whether the
sender's session must end. Non-fatal outcomes (late, non-finite) are returned in
:class:`ChunkResult` instead, so the caller's hot path has no exception on them.

Memory (issue 23, item 4): the buffer is (q x d) float32 — 3.5 GB at q = 80, d = 11M —
but it only ever holds what arrived. Above ``LAZY_MIN_BYTES`` it is an anonymous memory
map: the OS commits a page on its first write, so rows of workers that sent nothing cost
nothing, and :meth:`RoundCollector.close` hands back to the OS every whole page past
each row's prefix (``MADV_DONTNEED``: those values are stale, never read, and read as
zeros afterwards). Resident memory is therefore bounded by the values received in the
current and the previous round, ``sum_i max(p_i(k-1), p_i(k))`` float32 values plus a
page per row, never more than q x d; results are unchanged (the aggregation reads
``[:prefix]`` only). Not chosen: float16 storage (not exact: float32 gradients lose 13
mantissa bits and anything outside about [6e-5, 65504]); aggregating segments as
prefixes close (Krum and every vector rule need all rows of a segment at once, and a
prefix is final only when the round closes).

Exception tree::

    ValueError
     └── ChunkRejected(reason, fatal)
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass

import numpy as np

from hgo_common.errors import WireError

from . import wire

# Fatal reasons (the session ends; the transport maps each to a status code).
BAD_LENGTH = "bad-length"
GAP = "gap"
OVERLAP = "overlap"
PAST_D = "past-d"
OVERSIZED = "oversized"
WRONG_ROUND = "wrong-round"
BAD_SLOT = "bad-slot"
# Non-fatal outcomes (the chunk or part of it is dropped and counted).
LATE = "late"
NON_FINITE = "non-finite"

FATAL_REASONS = (BAD_LENGTH, GAP, OVERLAP, PAST_D, OVERSIZED, WRONG_ROUND, BAD_SLOT)

# Buffers from this size on are memory maps whose unused pages go back to the OS (below
# it the bookkeeping is not worth it: 64 MB is q = 80 at d = 200,000).
LAZY_MIN_BYTES = 64 << 20


def _allocate(q: int, d: int) -> tuple[mmap.mmap | None, np.ndarray]:
    """A zeroed (q x d) float32 buffer: an anonymous map (pages committed on first write)
    when it is large and the platform can release pages, a plain array otherwise."""
    nbytes = q * d * 4
    if nbytes < LAZY_MIN_BYTES or not hasattr(mmap, "MADV_DONTNEED"):
        return None, np.zeros((q, d), dtype=np.float32)
    # private: MADV_DONTNEED then frees the pages (a shared map would keep them)
    mm = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return mm, np.frombuffer(mm, dtype=np.float32).reshape(q, d)


class ChunkRejected(WireError):
    """A chunk that breaks the protocol; ``reason`` labels it, ``fatal`` ends the session."""

    def __init__(self, reason: str, message: str, *, fatal: bool = True) -> None:
        super().__init__(message)
        self.reason = reason
        self.fatal = fatal


@dataclass(frozen=True)
class ChunkResult:
    """What :meth:`RoundCollector.add` did with one chunk.

    ``accepted`` values were copied into the buffer; ``dropped`` values were ignored
    for ``reason`` (``None`` when nothing was dropped); ``prefix`` is the slot's prefix
    afterwards and ``finished`` whether the slot can deliver nothing more this round.
    """

    accepted: int
    dropped: int
    prefix: int
    finished: bool
    reason: str | None = None


class RoundCollector:
    """Collects one round's chunks from up to ``q`` sampled workers.

    The (q x d) float32 buffer is allocated once and reused by every round with the
    same shape (the server's steady state), so a round allocates nothing.

    Parameters
    ----------
    d : int
        Model dimension (values per complete gradient).
    max_chunk_values : int
        The most float32 values one chunk may carry (``TrainingSpec.max_chunk_values``).
    """

    def __init__(self, d: int, max_chunk_values: int = wire.DEFAULT_MAX_CHUNK_VALUES) -> None:
        if d < 1:
            raise ValueError(f"d must be >= 1, got {d}")
        if max_chunk_values < 1:
            raise ValueError(f"max_chunk_values must be >= 1, got {max_chunk_values}")
        self.d = int(d)
        self.max_chunk_values = int(max_chunk_values)
        self._map: mmap.mmap | None = None
        self._buffer = np.zeros((0, self.d), dtype=np.float32)
        self._prefix = np.zeros(0, dtype=np.int64)
        self._truncated = np.zeros(0, dtype=bool)
        self._gone = np.zeros(0, dtype=bool)
        self.round: int | None = None
        self.closed = True
        self.q = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self, round_index: int, q: int) -> None:
        """Open round ``round_index`` for ``q`` slots (rows 0..q-1), all prefixes 0.

        The buffer is reallocated only when ``q`` exceeds its rows; stale values
        beyond a prefix are never read (hgo_common.blocks reads ``[:prefix]`` only).
        """
        if q < 0:
            raise ValueError(f"q must be >= 0, got {q}")
        if q > self._buffer.shape[0]:
            # the old map is unmapped when its last view goes (a caller may still hold one)
            self._map, self._buffer = _allocate(q, self.d)
            self._prefix = np.zeros(q, dtype=np.int64)
            self._truncated = np.zeros(q, dtype=bool)
            self._gone = np.zeros(q, dtype=bool)
        self.q = int(q)
        self._prefix[:] = 0
        self._truncated[:] = False
        self._gone[:] = False
        self.round = int(round_index)
        self.closed = False

    def close(self) -> np.ndarray:
        """Close the round: every later chunk is late. Returns the prefixes, shape (q,).

        The whole pages past each row's prefix go back to the OS (see the module
        docstring); the values up to every prefix are untouched.
        """
        self.closed = True
        self.release_unused()
        return self.prefixes

    def release_unused(self) -> int:
        """Hand back to the OS the whole pages past each row's prefix; bytes released.

        No-op (0) for a plain in-memory buffer. Released pages read as zeros later.
        """
        if self._map is None:
            return 0
        page, row_bytes = mmap.PAGESIZE, self.d * 4
        released = 0
        for i in range(self._buffer.shape[0]):
            p = int(self._prefix[i]) if i < self.q else 0
            start = -(-(i * row_bytes + p * 4) // page) * page  # first whole page past the prefix
            end = ((i + 1) * row_bytes // page) * page  # last whole page of the row
            if end > start:
                self._map.madvise(mmap.MADV_DONTNEED, start, end - start)
                released += end - start
        return released

    def drop_slot(self, slot: int) -> None:
        """The slot's session ended: its prefix stays what it delivered, nothing more comes."""
        self._check_slot(slot)
        self._gone[slot] = True

    # ------------------------------------------------------------------ views

    @property
    def values(self) -> np.ndarray:
        """The round's (q x d) float32 buffer (a view; row i is valid up to ``prefixes[i]``)."""
        return self._buffer[: self.q]

    @property
    def prefixes(self) -> np.ndarray:
        """A copy of the q prefix lengths, shape (q,), int64."""
        return self._prefix[: self.q].copy()

    def truncated(self) -> np.ndarray:
        """Boolean (q,): the slot's prefix was cut by the non-finite policy (a copy)."""
        return self._truncated[: self.q].copy()

    def finished(self) -> np.ndarray:
        """Boolean (q,): the slot delivered d values, hit a non-finite value, or left."""
        q = self.q
        return np.asarray((self._prefix[:q] >= self.d) | self._truncated[:q] | self._gone[:q])

    def all_finished(self) -> bool:
        """True when no slot can deliver anything more this round (early close allowed)."""
        return bool(self.finished().all())

    def _check_slot(self, slot: int) -> None:
        if not 0 <= slot < self.q:
            raise ChunkRejected(BAD_SLOT, f"slot {slot} is outside [0, {self.q}) for this round")

    # ------------------------------------------------------------------ chunks

    def check_values(self, values: bytes | bytearray | memoryview) -> int:
        """The number of float32 values in a wire chunk; ChunkRejected when its size is illegal.

        Whole float32 values only (``bad-length``), at most ``max_chunk_values``
        (``oversized``). The transport calls this *before* deciding whether the chunk
        is late, so a late chunk of the wrong size is still refused.
        """
        size = len(values)
        if size % wire.WIRE_DTYPE.itemsize:
            raise ChunkRejected(
                BAD_LENGTH, f"chunk values: {size} bytes is not a whole number of float32 values"
            )
        n = size // wire.WIRE_DTYPE.itemsize
        if n > self.max_chunk_values:
            raise ChunkRejected(
                OVERSIZED, f"chunk carries {n} values, more than max_chunk_values={self.max_chunk_values}"
            )
        return n

    def add(self, slot: int, round_index: int, offset: int, values: bytes | np.ndarray) -> ChunkResult:
        """Validate one chunk and copy it into row ``slot``.

        Parameters
        ----------
        slot : int
            The sender's row in this round (its position among the sampled workers).
        round_index : int
            The round the chunk says it belongs to.
        offset : int
            The C_k position of its first value.
        values : bytes or ndarray of shape (n,)
            float32 little-endian bytes (the wire form) or a float array.

        Raises
        ------
        ChunkRejected
            For every fatal violation (see the module docstring).
        """
        if self.round is None or round_index != self.round:
            if self.round is not None and round_index < self.round:
                # A chunk of an earlier round: the caller checked the sender was sampled
                # into it, so it is late, not illegal.
                return ChunkResult(0, _count(values), 0, True, LATE)
            raise ChunkRejected(
                WRONG_ROUND, f"chunk for round {round_index}, but the open round is {self.round}"
            )
        if isinstance(values, bytes | bytearray | memoryview):
            try:
                vec = wire.decode(bytes(values))
            except wire.WireFormatError as exc:
                raise ChunkRejected(BAD_LENGTH, f"chunk values: {exc}") from exc
        else:
            # Cast before the finiteness check: the policy applies to what is stored, and a
            # float64 1e300 is finite but becomes inf in the float32 buffer.
            with np.errstate(over="ignore", invalid="ignore"):
                vec = np.asarray(values, dtype=np.float32)
            if vec.ndim != 1:
                raise ChunkRejected(BAD_LENGTH, f"chunk values must be 1-d, got shape {vec.shape}")
        n = int(vec.size)
        if n > self.max_chunk_values:
            raise ChunkRejected(
                OVERSIZED, f"chunk carries {n} values, more than max_chunk_values={self.max_chunk_values}"
            )
        if self.closed:
            return ChunkResult(0, n, 0, True, LATE)
        self._check_slot(slot)
        prefix = int(self._prefix[slot])
        if self._truncated[slot]:
            # After a non-finite value the rest of the round is ignored, whatever its offset.
            return ChunkResult(0, n, prefix, True, NON_FINITE)
        if offset < prefix:
            raise ChunkRejected(
                OVERLAP, f"chunk offset {offset} overlaps the prefix already received ({prefix})"
            )
        if offset > prefix:
            raise ChunkRejected(GAP, f"chunk offset {offset} leaves a gap after the prefix {prefix}")
        if offset + n > self.d:
            raise ChunkRejected(
                PAST_D, f"chunk at offset {offset} with {n} values reaches {offset + n}, past d={self.d}"
            )
        bad = ~np.isfinite(vec)
        if bad.any():
            keep = int(np.argmax(bad))
            self._buffer[slot, offset : offset + keep] = vec[:keep]
            self._prefix[slot] = offset + keep
            self._truncated[slot] = True
            return ChunkResult(keep, n - keep, offset + keep, True, NON_FINITE)
        self._buffer[slot, offset : offset + n] = vec
        self._prefix[slot] = offset + n
        return ChunkResult(n, 0, offset + n, offset + n >= self.d or bool(self._gone[slot]))


def _count(values: bytes | np.ndarray) -> int:
    if isinstance(values, bytes | bytearray | memoryview):
        return len(values) // wire.WIRE_DTYPE.itemsize
    return int(np.asarray(values).size)
