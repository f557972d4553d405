#!/usr/bin/env bash
# Create a virtual environment and install ps-trainer into it: torch first, from the index that
# matches the machine, then the project (whose `torch>=2.11,<2.15` the installed torch then satisfies).
#   bash scripts/setup.sh [VENV=.venv] [PYTHON=python3]
#
# Which torch build (torch==$TORCH_VERSION, 2.13.0 unless set):
# - TORCH_INDEX set: from that index, nothing else tried. PyTorch's indexes by CUDA version:
#     https://download.pytorch.org/whl/cpu     CPU only
#     https://download.pytorch.org/whl/cu126   CUDA 12.6 (NVIDIA driver >= 525 on Linux)
#     https://download.pytorch.org/whl/cu128   CUDA 12.8 (driver >= 570 advised; Blackwell GPUs need it)
#     https://download.pytorch.org/whl/cu130   CUDA 13.0 (driver >= 580)
#   e.g. TORCH_INDEX=https://download.pytorch.org/whl/cu128 make setup
# - else, where `nvidia-smi` sees a GPU: the default index (PyPI's Linux torch is a CUDA build).
# - else (no GPU): PyTorch's CPU index, since PyPI's torch would be a multi-GB CUDA build. When
#   that index does not answer within a few seconds (a machine that reaches only PyPI or a mirror
#   of it), the default index, said in one line: there it is whatever build the index serves
#   (on the project's dev and CI machines, a local CPU build).
set -euo pipefail
venv=${1:-.venv}
py=${2:-python3}
version=${TORCH_VERSION:-2.13.0}
cpu_index=https://download.pytorch.org/whl/cpu

"$py" -m venv "$venv"
pip=("$venv/bin/python" -m pip)
"${pip[@]}" install -q --upgrade pip

reachable() {  # $1 answers an HTTP request within 5 s (connect and reply)
  "$venv/bin/python" - "$1" <<'EOF'
import sys, urllib.request
try:
    urllib.request.urlopen(sys.argv[1], timeout=5).close()
except Exception as e:
    print(f"{type(e).__name__}: {getattr(e, 'reason', e)}")
    sys.exit(1)
EOF
}

if [ -n "${TORCH_SPEC:-}" ]; then  # older override: a full requirement, from the default index
  echo "setup: torch: ${TORCH_SPEC} (TORCH_SPEC), default index"
  "${pip[@]}" install -q "$TORCH_SPEC"
elif [ -n "${TORCH_INDEX:-}" ]; then
  echo "setup: torch==$version from $TORCH_INDEX (TORCH_INDEX)"
  "${pip[@]}" install -q --index-url "$TORCH_INDEX" "torch==$version"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "setup: torch==$version, CUDA build from the default index (a GPU: $(nvidia-smi -L | head -1))"
  "${pip[@]}" install -q "torch==$version"
elif why=$(reachable "$cpu_index/"); then
  echo "setup: torch==$version, CPU build from $cpu_index (no GPU here)"
  "${pip[@]}" install -q --timeout 30 --index-url "$cpu_index" "torch==$version"
else
  echo "setup: $cpu_index does not answer (${why}); torch==$version from the default index" \
       "instead. Where that is PyPI itself it is a multi-GB CUDA build: set TORCH_INDEX to a" \
       "mirror of the CPU index to avoid it."
  "${pip[@]}" install -q "torch==$version"
fi
"${pip[@]}" install -q -e ".[test]"
"$venv/bin/python" -c "import torch, ray; print('torch', torch.__version__, '| ray', ray.__version__)"
