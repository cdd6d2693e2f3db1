#!/usr/bin/env bash
# The PGL study's larger protocol on one GPU (H100/H200), service-free (benchmarks/study.py):
# 48x96x96 phantoms at 4x4x5 mm (pool 64 + 4 labelled kinds x 20), a wider tiny-family network,
# 3,000 pretraining steps per mode (tau fitted: 0.9920), the supervised gate (800 steps, all labels),
# then 4 kinds x 3 inits x 5 seeds fine-tunes (2 labelled cases, 800 steps, early evaluation at
# 200), 8 at a time. Prints the gate, the Dice table, paired differences with 95 % intervals and
# the verdict; results.json under $WORK. Budget: 8 minutes on one H200 (sized from the CPU
# protocol's step costs; re-measure and record the wall time when you run it).
# Wheels for what a bare GPU machine may lack (zarr, numcodecs, pydantic, monai, ...) go in .whl/.
set -euo pipefail
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-$PWD} PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
WORK=${WORK:-/tmp/pgl-study-gpu}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
time python3 benchmarks/study.py --config deploy/configs/study-small.yaml --work "$WORK" --device cuda \
  --shape 48 96 96 --spacing 4 4 5 --pool 64 --cases 20 --seeds 5 --parallel 8 --threads 2 --gate-steps 800 \
  --set "model.widths=[16,32,64,128]" --set finetune.loader_workers=2 \
  --pretrain-set train.steps=3000 --pretrain-set train.batch_size=32 --pretrain-set "views.patch_vox=[16,48,48]" \
  --pretrain-set train.loader_workers=6 --pretrain-set train.probe_every=250 \
  --finetune-set finetune.steps=800 --finetune-set finetune.early_eval_step=200 \
  --finetune-set "finetune.patch_vox=[32,64,64]" --finetune-set finetune.batch_size=4 "$@"
