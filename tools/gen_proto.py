"""Regenerate the protobuf and gRPC stubs in hgo_common/net/proto from proto/.

Usage: python tools/gen_proto.py [OUT_DIR]   (default: hgo_common/net/proto)

The stubs are committed; tests/test_proto_stubs.py regenerates them into a
temporary folder and fails when the committed copies are stale.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PROTO_FILE = "hgo/v1/hgo.proto"
GENERATED = ("hgo_pb2.py", "hgo_pb2.pyi", "hgo_pb2_grpc.py")


def generate(out_dir: Path) -> list[Path]:
    """Run protoc (from grpcio-tools) and rewrite imports so the stubs live in a package."""
    from grpc_tools import protoc

    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "_protoc"
    tmp.mkdir(exist_ok=True)
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={tmp}",
        f"--pyi_out={tmp}",
        f"--grpc_python_out={tmp}",
        str(PROTO_ROOT / PROTO_FILE),
    ]
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed on {PROTO_ROOT / PROTO_FILE}")
    written = []
    for name in GENERATED:
        text = (tmp / "hgo" / "v1" / name).read_text()
        # protoc writes absolute imports (`from hgo.v1 import hgo_pb2`); the stubs live
        # inside hgo_common.net.proto, so make the import relative.
        text = re.sub(r"^from hgo\.v1 import hgo_pb2", "from . import hgo_pb2", text, flags=re.M)
        target = out_dir / name
        target.write_text(text)
        written.append(target)
    for path in sorted(tmp.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    tmp.rmdir()
    return written


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "hgo_common" / "net" / "proto"
    for p in generate(out):
        print(p)
