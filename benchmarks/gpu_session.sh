#!/usr/bin/env bash
# Every GPU figure issue 13 asks for, in one device call, so that a session lent a GPU spends its
# few minutes measuring. Prepare here first: `bash ../shared/gpu/ray-wheels.sh` (makes .gpu-wheels/),
# then call the device tool once with:
#   command: bash benchmarks/gpu_session.sh      carry: [".gpu-wheels"]      timeout_s: 560
# It installs Ray from the carried wheels, runs the GPU tests (the pinned staging, the side-stream
# gradient copy and fp16/bf16 autocast on a real device) and the Ray GPU worker benchmark against a
# plain bf16 + channels_last loop; the results come back under $OUT.
set -uo pipefail
out=${OUT:-/tmp/gpu-out}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu-wheels/*.whl
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH RAY_USAGE_STATS_ENABLED=0 OUT="$out"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, ray; print('torch', torch.__version__, 'ray', ray.__version__)"
  nproc; free -g | head -2; } 2>&1 | tee "$out/machine.txt"
timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py 2>&1 \
  | tail -15 | tee "$out/test_gpu.txt"
timeout 360 python3 benchmarks/bench_gpu_ray_worker.py --rounds 1 --steps 20 2>&1 \
  | grep -v "^\s*$" | tail -20 | tee "$out/bench_gpu_ray_worker.txt"
