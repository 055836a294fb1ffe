#!/usr/bin/env bash
# One lent-GPU session's checks in one call (device time is short): the training path on CUDA
# (each tiny model, 2 epochs, bf16 autocast, EMA, augmentation; the runs table read back), then
# benchmarks/gpu_check.py (4GF ViT_P/ViT_C images/s and MFU vs timm, tracing overhead).
#   bash benchmarks/gpu_session.sh [OUT_DIR]    # on the GPU machine, from the repository root
set -u
out=${1:-${OUT:-/tmp/gpu_session}}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi -L
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, torch.cuda.get_device_name(0))"
for m in vit_p_tiny vit_c_tiny regnety_tiny; do
  timeout 180 python3 -m stability.cli train model=$m epochs=2 ema_alpha=8.5e-3 ema_period=4 \
    augment=affine results="$out/results" sweep=cuda_smoke || echo "CUDA TRAIN FAILED: $m"
done
python3 - "$out/results" <<'PY'
import sys, pandas as pd, pathlib
runs = pd.concat(pd.read_parquet(p) for p in pathlib.Path(sys.argv[1]).rglob("runs/**/*.parquet"))
cols = [c for c in ("model", "status", "device", "top1_err", "ema_top1_err", "collapsed", "wall_time_s", "error") if c in runs]
print(runs[cols].to_string())
PY
timeout 420 python3 benchmarks/gpu_check.py --batch 128 --reps 3 --steps 10 || echo "GPU CHECK FAILED"
cp benchmarks/RESULTS.md "$out/RESULTS.md"
