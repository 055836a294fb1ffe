#!/usr/bin/env bash
# One lent-GPU session's checks in one call (device time is short): the training path on CUDA
# (each tiny model, 2 epochs, the CUDA defaults: torch.compile, fused AdamW, bf16 autocast; EMA,
# augmentation; the runs table read back), then
# benchmarks/gpu_check.py (4GF ViT_P/ViT_C images/s and MFU vs timm, tracing overhead; the
# optimizer implementations (step_options.py --optimizers); then
# --pipeline: the loader + step with CPU and GPU JPEG decoding vs the step alone).
#   bash benchmarks/gpu_session.sh [OUT_DIR]    # on the GPU machine, from the repository root
#   SMOKE_MODELS="" bash benchmarks/gpu_session.sh    # the benchmarks only
set -u
fail=0
out=${1:-${OUT:-/tmp/gpu_session}}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi -L
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, torch.cuda.get_device_name(0))"
for m in ${SMOKE_MODELS-vit_p_tiny vit_c_tiny regnety_tiny}; do
  timeout 300 python3 -m stability.cli train model=$m epochs=2 ema_alpha=8.5e-3 ema_period=4 \
    augment=affine results="$out/results" sweep=cuda_smoke || { echo "CUDA TRAIN FAILED: $m"; fail=1; }
done
python3 - "$out/results" <<'PY'
import sys, pandas as pd, pathlib
files = list(pathlib.Path(sys.argv[1]).rglob("runs/**/*.parquet"))
if not files:
    sys.exit(0)
runs = pd.concat(pd.read_parquet(p) for p in files)
cols = [c for c in ("model", "status", "device", "compiled", "optimizer_impl", "amp_dtype", "top1_err",
                    "ema_top1_err", "collapsed", "wall_time_s", "error") if c in runs]
print(runs[cols].to_string())
PY
# eager, then the trainer's CUDA default (torch.compile + fused AdamW) at 256 and 512; AdamW fused in both
for flags in "--batch 256" "--batch 256 512 --compile"; do
  timeout 420 python3 benchmarks/gpu_check.py $flags --reps 3 --steps 10 || { echo "GPU CHECK FAILED: $flags"; fail=1; }
done
# AdamW loop vs foreach vs fused on the tiny models (the whole step and opt.step() alone)
timeout 120 python3 benchmarks/step_options.py --optimizers --device cuda --reps 5 --steps 5 \
  || { echo "OPTIMIZER CHECK FAILED"; fail=1; }
# the shipped step's tracing with every signal (attention probe, log Z, grad/update RMS): goal <= 3%
timeout 240 python3 benchmarks/tracing_overhead.py --model vit_c_4gf --px 224 --batch 128 --device cuda \
  --reps 5 --steps 10 || { echo "TRACING CHECK FAILED"; fail=1; }
# the input pipeline: step alone vs loader + step with CPU (workers auto) and GPU (nvJPEG) decoding
timeout 300 python3 benchmarks/gpu_check.py --pipeline --batch 256 --images 2560 --steps 20 \
  || { echo "PIPELINE CHECK FAILED"; fail=1; }
cp benchmarks/RESULTS.md "$out/RESULTS.md"
exit $fail
