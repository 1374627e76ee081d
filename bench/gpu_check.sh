#!/usr/bin/env bash
# The GPU check of issue 20, for a session lent a device machine (../.library/device/README.md).
# The device's Python 3.12 has torch and transformers but not the service's other packages:
#   1. here, once:  bash bench/gpu_wheels.sh        (downloads them into .whl/, ~34 MB, ignored by git)
#   2. device run:  command "bash bench/gpu_check.sh", carry [".whl"], timeout_s 540
# It builds its random 1.1B model on the spot (no network there) and runs bench/gpu_check.py:
# RTN and GPTQ jobs on a CUDA worker in memory, RTN once more disk-offloaded; CUDA peak per
# phase beside the plan, wall time (~8 min).
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
timeout 500 python3 -m bench.gpu_check
