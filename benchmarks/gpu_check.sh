#!/usr/bin/env bash
# The prepared GPU check: run on a machine with CUDA and torch (no project install needed).
# Wheels for what such a machine may lack (zarr, numcodecs, pydantic, ...) can be put in .whl/.
set -uo pipefail
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-$PWD} PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
python3 -m pytest -q -s -p no:cacheprovider -o addopts="" -m gpu \
  tests/gpu tests/method/test_gpu.py tests/evaluation/test_sliding_window.py tests/train/test_pretrain_loop.py
