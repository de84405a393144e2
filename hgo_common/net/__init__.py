"""The wire: the only part of ``hgo_common`` that imports grpc or protobuf.

Server (``hgo_server``) and worker (``hgo_worker``) both import this package, and neither
imports the other. Everything else in ``hgo_common`` is the pure algorithm core
(tests/test_layers.py fails if any core module imports grpc or protobuf).

* :mod:`hgo_common.net.proto` — the generated stubs of ``proto/hgo/v1/hgo.proto``;
* :mod:`hgo_common.net.messages` — every message as a plain dataclass (no protobuf), what
  the server's round logic and the worker's session handle;
* :mod:`hgo_common.net.mapping` — the one protobuf ↔ dataclass mapping, used by the
  server's servicer and the worker's session stream alike;
* :mod:`hgo_common.net.protocol` — protocol constants both ends agree on, and the one
  "does a vector fit in one message" check;
* :mod:`hgo_common.net.credentials` — the bearer-token metadata and TLS channel
  credentials a client presents.
"""
