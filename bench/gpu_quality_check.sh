#!/usr/bin/env bash
# The GPU check of issue 22 (AutoRound, mask-aware GPTQ, imatrix scales, quantization-aware
# distillation on CUDA), for a session lent a device machine (../.library/device/README.md):
#   1. here, once:  bash bench/gpu_wheels.sh        (downloads the wheels into .whl/, ignored by git)
#   2. device run:  command "bash bench/gpu_quality_check.sh", carry [".whl"], timeout_s 420
# Builds a random 8-layer Llama on the spot and prints one line per method (~3 min).
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
timeout 380 python3 -m bench.gpu_quality_check
