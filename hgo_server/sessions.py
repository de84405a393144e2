"""The server's record of one worker session and its bounded outbox.

A :class:`SessionRecord` is what the round loop knows of a connected worker: its ids,
what it declared in its Join (profile, rate, batch size, ``byzantine`` — claims, not
facts), the shard it holds, its row in the current round, and its :class:`Outbox`.
The servicer's per-stream handler drains the outbox onto the gRPC stream.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field

from .errors import ProtocolError
from .messages import Beat, Closed, End, Outgoing, Task

SAMPLED_HISTORY = 64  # sampled rounds a session remembers exactly (late vs not-sampled)


class Outbox:
    """A session's outbound messages, bounded however slowly its stream is written out.

    A worker that reads slower than the rounds go (a slow link, a stalled process that
    still sends heartbeats) must not make the server hold one :class:`Task` (w_k, 4d
    bytes, plus its serialized copy) per round forever. Messages that a newer one makes
    useless are therefore coalesced when queued:

    * a :class:`Task` removes any queued Task: only the newest round can still be served;
    * a :class:`Closed` removes any queued Closed: ``RoundClosed{k}`` tells the worker
      that every round up to k is over (hgo_worker stops any round <= k on it);
    * a :class:`Beat` is dropped when one is already queued.

    The replaced entry is removed and the new one appended, so the relative order of the
    surviving messages is the order they were sent in (Task k before Closed k before
    Task k+1). Welcome, ShardSlices, Stop and End are appended: a bounded number per
    session. One consumer (the transport's writer) awaits :meth:`get`.
    """

    def __init__(self) -> None:
        self._items: deque[Outgoing] = deque()
        self._ready = asyncio.Event()

    def put_nowait(self, msg: Outgoing) -> None:
        if isinstance(msg, Task | Closed | Beat):
            kind = type(msg)
            stale = [m for m in self._items if type(m) is kind]
            if isinstance(msg, Beat) and stale:
                return
            for m in stale:
                self._items.remove(m)
        self._items.append(msg)
        self._ready.set()

    async def get(self) -> Outgoing:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()

    def empty(self) -> bool:
        return not self._items

    def get_nowait(self) -> Outgoing:
        if not self._items:
            raise asyncio.QueueEmpty
        return self._items.popleft()


class TokenBucket:
    """A token bucket: ``rate`` units per second, at most ``burst`` saved up.

    :meth:`take` never refuses; it returns how long the caller should wait before the
    units are covered (0 when they already are). The servicer sleeps that long before
    reading the next message of the stream, which pushes back on the peer through HTTP/2
    flow control instead of buffering its flood. ``rate <= 0`` disables the bucket.
    """

    def __init__(self, rate: float, burst: float, now: float | None = None) -> None:
        self.rate = float(rate)
        self.burst = float(max(burst, 1.0))
        self.level = self.burst
        self.t = time.monotonic() if now is None else now

    def take(self, units: float = 1.0, now: float | None = None) -> float:
        """Spend ``units``; seconds to wait until the balance is back to >= 0."""
        if self.rate <= 0:
            return 0.0
        t = time.monotonic() if now is None else now
        self.level = min(self.burst, self.level + (t - self.t) * self.rate)
        self.t = t
        self.level -= units
        return 0.0 if self.level >= 0 else -self.level / self.rate

    def allow(self, units: float = 1.0, now: float | None = None) -> bool:
        """Spend ``units`` only if they are covered now; False (nothing spent) otherwise."""
        if self.rate <= 0:
            return True
        t = time.monotonic() if now is None else now
        self.level = min(self.burst, self.level + (t - self.t) * self.rate)
        self.t = t
        if self.level < units:
            return False
        self.level -= units
        return True


@dataclass(eq=False)
class SessionRecord:
    """One worker's stream. ``slot`` is its row in the current round (None: not sampled)."""

    session_id: str
    worker_id: int
    name: str
    profile: str
    rate: float
    batch_size: int
    byzantine: bool
    shard_index: int
    identity: str | None  # None: anonymous (shared token or no auth); one session per identity otherwise
    last_seen: float
    peer: str = ""  # the peer's host as gRPC reports it, for the per-peer session cap
    outbox: Outbox = field(default_factory=Outbox)
    slot: int | None = None
    sampled_rounds: deque[int] = field(default_factory=lambda: deque(maxlen=SAMPLED_HISTORY))
    active: bool = True
    first_round: int = 0  # no round before this one can have sampled the session
    silent_rounds: int = 0  # sampled rounds in a row with an empty prefix (eviction)
    silent_since: float = 0.0  # monotonic time of the first of them
    received_bytes: int = 0  # measured: bytes of messages received on this stream
    ended: asyncio.Event = field(default_factory=asyncio.Event)  # set by Server.leave
    end_error: ProtocolError | None = None
    round_bytes: int = 0  # measured: chunk value bytes received since the last round it was sampled into
    round_chunks: int = 0
    messages: int = 0  # measured: messages received on this stream
    shard_rows: int | None = None  # rows of the shard the server sent (None: the worker holds its own data)

    def was_sampled(self, round_index: int) -> bool:
        """Whether the session may have been sampled into ``round_index`` (a past round).

        The last SAMPLED_HISTORY sampled rounds are remembered exactly; a round older than
        that window (the worker is far behind) but not older than the session is given the
        benefit of the doubt: its chunk can only be late and ignored.
        """
        rounds = self.sampled_rounds
        if round_index in rounds:
            return True
        full = len(rounds) == rounds.maxlen
        return full and self.first_round <= round_index < rounds[0]

    def send(self, msg: Outgoing) -> None:
        if self.active or isinstance(msg, End):
            self.outbox.put_nowait(msg)
