#!/usr/bin/env bash
# Regenerate protos/gen from protos/flotilla. Generated code is checked in; `make test`
# fails if it drifts from the .proto files (see tests/unit/test_protos_drift.py).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$here/protos/gen}
python=${PYTHON:-$here/.venv/bin/python}
rm -rf "$out/flotilla"
mkdir -p "$out"
cd "$here/protos"
"$python" -m grpc_tools.protoc -I. \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  $(find flotilla -name '*.proto' | sort)
