"""The committed gRPC stubs must match what proto/ generates today."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(importlib.util.find_spec("grpc_tools") is None, reason="grpcio-tools missing")
def test_committed_stubs_are_fresh(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import gen_proto
    finally:
        sys.path.pop(0)
    for fresh in gen_proto.generate(tmp_path):
        committed = ROOT / "hgo_common" / "net" / "proto" / fresh.name
        assert committed.read_text() == fresh.read_text(), (
            f"{committed} is stale: run `make proto` and commit the result"
        )


def test_stubs_round_trip_a_chunk() -> None:
    import numpy as np

    from hgo_common import wire
    from hgo_common.net.proto import hgo_pb2

    vec = np.arange(10, dtype=np.float32) / 3
    msg = hgo_pb2.WorkerMessage(chunk=hgo_pb2.GradientChunk(round=7, offset=3, values=wire.encode(vec)))
    back = hgo_pb2.WorkerMessage.FromString(msg.SerializeToString())
    assert back.WhichOneof("kind") == "chunk"
    assert back.chunk.round == 7 and back.chunk.offset == 3
    np.testing.assert_array_equal(wire.decode(back.chunk.values), vec)
