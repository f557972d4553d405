#!/usr/bin/env bash
# Create the reference environment for `make test-reference`: torchvision and timm beside a torch
# they load with, plus ps-trainer, so tests/test_models_reference.py runs instead of skipping.
# A second environment, because PyPI's torchvision does not load beside the CPU build of torch
# 2.13.0 that .venv uses ("operator torchvision::nms does not exist"); torch 2.14.1 with
# torchvision 0.29.1 does. That torch is a CUDA build (about 5.5 GB here); the tests run on the CPU.
# One pip command with the pins, so installing the project cannot move torch.
set -euo pipefail
venv=${1:-.venv-ref}
py=${2:-python3}
$py -m venv "$venv"
echo '*' > "$venv/.gitignore"               # the environment ignores itself (as Python 3.13's venv does)
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q "torch==${REF_TORCH:-2.14.1}" \
  "torchvision==${REF_TORCHVISION:-0.29.1}" timm -e ".[test]"
"$venv/bin/python" -c "import torch, torchvision, timm; print('torch', torch.__version__, \
'| torchvision', torchvision.__version__, '| timm', timm.__version__)"
