#!/usr/bin/env bash
# The wire, servicer and health tests on the oldest, a 6.x and the newest protobuf hgo supports.
#
# pyproject.toml says protobuf>=OLDEST,<8 (the committed stubs are grpcio-tools 1.66.2's
# output, gencode 5.27.2); the dev venv runs protobuf 5.29 (grpcio-tools 1.66.2 needs <6), so
# this script checks both ends of the range in throw-away venvs (.venv-protobuf-*), each
# with the grpcio-health-checking that pip picks for that protobuf. Run by .ci/run; about
# 1-2 minutes per venv on 2 cores. Usage: tools/protobuf_range.sh [PYTHON]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-${PY:-python3}}
OLDEST=$(sed -n 's/^ *"protobuf>=\([0-9.]*\),.*/\1/p' pyproject.toml)
if [ -z "$OLDEST" ]; then
    echo "protobuf_range.sh: no 'protobuf>=X,...' line in pyproject.toml" >&2
    exit 2
fi
TESTS=(tests/test_proto_stubs.py tests/test_server.py tests/test_health_service.py
       tests/test_deploy.py::test_health_check_on_a_live_server
       tests/test_deploy.py::test_health_check_over_tls)
venv=""
trap 'if [ -n "$venv" ]; then rm -rf "$venv"; fi' EXIT
# oldest, the 6.x line (what pip picks beside Flower 1.42: protobuf 6.33, grpcio-health-checking
# 1.81), newest
for spec in "protobuf==$OLDEST" "protobuf>=6,<7" "protobuf>=7,<8"; do
    venv=.venv-protobuf-$(echo "$spec" | tr -c 'a-z0-9.\n' '_')
    rm -rf "$venv"
    "$PY" -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip
    # hgo with its runtime dependencies only (no grpcio-tools: it would pin protobuf < 6),
    # plus what these tests import
    "$venv/bin/pip" install --quiet -e . "$spec" pytest pytest-asyncio pytest-timeout cryptography pyyaml
    "$venv/bin/python" - <<'PYEOF'
import importlib.metadata as md
print("protobuf-range venv:", ", ".join(f"{p} {md.version(p)}" for p in ("protobuf", "grpcio", "grpcio-health-checking")))
PYEOF
    "$venv/bin/python" -m pytest -q -p no:cacheprovider -m "not slow" "${TESTS[@]}"
    rm -rf "$venv"
done
