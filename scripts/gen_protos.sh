#!/usr/bin/env bash
# Regenerate the Python code of protos/ps_trainer/v1/*.proto into ps_trainer/v1/ (committed;
# tests/test_grpc_protocol.py fails if it differs from what this produces). Needs grpcio-tools
# (the `test` extra). Lint the protos with `buf lint protos` where buf is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
"$PY" -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. --grpc_python_out=. \
    protos/ps_trainer/v1/parameter_server.proto
