#!/usr/bin/env bash
# Create a virtual environment and install ps-trainer into it.
# Where no NVIDIA GPU is present, install the CPU build of torch first: a bare `torch`
# requirement would otherwise pull a multi-GB CUDA build. Override with TORCH_SPEC=...
set -euo pipefail
venv=${1:-.venv}
py=${2:-python3}
$py -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
if [ -z "${TORCH_SPEC:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    TORCH_SPEC="torch"                      # CUDA build from PyPI
  else
    TORCH_SPEC="torch==2.13.0"              # CPU build (a local wheel on the dev VMs)
  fi
fi
"$venv/bin/python" -m pip install -q "$TORCH_SPEC" -e ".[test]"
"$venv/bin/python" -c "import torch, ray; print('torch', torch.__version__, '| ray', ray.__version__)"
