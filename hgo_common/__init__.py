"""hgo_common: the pure, transport-free core of HGO.

Coordinate orders (``order``), block construction and aggregation (``blocks``), the
round rule shared by server and simulator (``rounds``), robust aggregation rules
(``aggregators``), attacks (``attacks``), models (``models``), datasets (``datasets``),
hardware profiles and the throttle model (``profiles``, ``throttle``), worker budget
policies (``budget``) and the round log (``roundlog``).
"""

__version__ = "0.1.0"
