"""hgo_common: the pure, transport-free core of HGO (no grpc, no protobuf).

Coordinate orders (``order``), block construction and aggregation (``blocks``), the
round rule (``rounds``), one round written once for server and simulator (``driver``),
one worker step written once for hgo-worker and simulator (``local``), the round buffer
(``collector``), robust aggregation rules (``aggregators``), attacks (``attacks``),
models (``models``), datasets (``datasets``), hardware profiles and the throttle model
(``profiles``, ``throttle``), worker budget policies (``budget``), the wire encoding of
vectors (``wire``) and the round log (``roundlog``).

``hgo_common.net`` is the one exception: the gRPC wire (stubs, protocol constants,
client credentials), shared by ``hgo_server`` and ``hgo_worker``.
"""

__version__ = "0.1.0"
