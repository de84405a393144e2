"""Protocol violations by a worker, as the round loop raises them.
from hgo_common.errors import HGOError

The servicer maps each class to one gRPC status code, in one place
(``hgo_server.service.STATUS_CODES``); round logic never sees gRPC.

Exception tree::

    ProtocolError(reason)          a worker message the protocol forbids; ends that session
     ├── InvalidArgument           bad Join, gap/overlap offset, values past d, bad length
     ├── FailedPrecondition        chunk for a round the worker was not sampled into
     ├── PermissionDenied          chunk naming another session's id
     ├── ResourceExhausted         chunk with more than max_chunk_values values, oversized
     │                             message, join rate or per-peer session cap exceeded
     ├── DeadlineExceeded          session silent for 3 heartbeat intervals, or evicted
     │                             (sampled and silent for --evict-after rounds)
     └── Aborted                   replaced by a newer session of the same identity

``reason`` is the label of ``hgo_rejected_messages_total``.
"""

from __future__ import annotations

from hgo_common.errors import HGOError


class ProtocolError(HGOError):
    """A worker message the protocol forbids; ``reason`` is the metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class InvalidArgument(ProtocolError):
    pass


class FailedPrecondition(ProtocolError):
    pass


class PermissionDenied(ProtocolError):
    pass


class ResourceExhausted(ProtocolError):
    pass


class DeadlineExceeded(ProtocolError):
    pass


class Aborted(ProtocolError):
    pass
