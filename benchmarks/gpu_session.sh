#!/usr/bin/env bash
# Every GPU measurement of a lent-GPU session in one call, within a deadline (default 480 s: a
# session has ~15 device minutes in all, a call at most 10). Each part gets its own timeout, never
# past the deadline; a part that fails or runs out is named and the rest still run. Its tables are
# appended to benchmarks/RESULTS.md (copied to OUT_DIR with every part's log), the card named.
#   bash benchmarks/gpu_session.sh [OUT_DIR]        # on the GPU machine, from the repository root
#   DEADLINE=300 PARTS="mfu pipeline" bash benchmarks/gpu_session.sh out/
#   REHEARSE=1 bash benchmarks/gpu_session.sh out/  # here, before a GPU session: every part's command
#       and the code it runs, CPU-sized (tiny models, 32 px, eager, few steps, CPU decoding; ~1 min
#       on 2 idle cores); RESULTS.md is left as it was. What only CUDA runs (nvJPEG, the side stream,
#       inductor's GPU kernels) it cannot check.
# Parts, in order (the goals' figures first):
#   mfu       ours vs timm, 4GF ViT_P / ViT_C, 224 px, compiled + fused AdamW, batch 256
#   pipeline  loader + step vs the step alone (compiled): GPU decode with and without the overlap,
#             and with AutoAugment
#   tracing   every trace signal at the default interval on the shipped (compiled, fused) step
#   smoke     the trainer on CUDA with its defaults (compile auto = on, fused AdamW, bf16) and the
#             GPU-decode path (nvJPEG, the prefetch thread, the batched AutoAugment) on written JPEGs;
#             two RegNets through a local grid (forked by the warm launcher, CUDA in the child)
#   policy    the batched policy vs the per-image loop on the GPU (224 px)
#   batch512  mfu at batch 512 (each batch size compiles anew: late, if time is left)
#   optimizers  AdamW loop / foreach / fused on the tiny models (step_options.py --optimizers)
set -u
out=${1:-${OUT:-/tmp/gpu_session}}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
deadline=$(( $(date +%s) + ${DEADLINE:-480} ))
cp benchmarks/RESULTS.md "$out/RESULTS.before.md"  # what this call appends is the difference
parts=${PARTS:-mfu pipeline tracing smoke policy batch512 optimizers}
fail=0
child=

finish() {  # at any exit, a kill included: no part left running, the tables kept, a rehearsal undone
  trap - EXIT TERM INT
  # timeout(1) runs its command in a process group of its own: a killed script would leave it
  # running (holding the GPU, appending to RESULTS.md later); TERM to timeout is passed on.
  if [ -n "$child" ]; then kill -TERM "$child" 2>/dev/null; wait "$child" 2>/dev/null; fi  # timeout -k: bounded
  cp benchmarks/RESULTS.md "$out/RESULTS.md"
  diff -u "$out/RESULTS.before.md" benchmarks/RESULTS.md > "$out/RESULTS.diff"
  if [ -n "${REHEARSE:-}" ]; then  # CPU-sized figures are not results
    cp "$out/RESULTS.before.md" benchmarks/RESULTS.md
    echo "== rehearsal: RESULTS.md restored; what the parts would have appended is in $out/RESULTS.diff"
  fi
}
trap finish EXIT
trap 'echo "== stopped by a signal"; exit 143' TERM
trap 'echo "== interrupted"; exit 130' INT

part() {  # part NAME CAP_SECONDS COMMAND...: run it if named in $parts, within min(cap, time left)
  local name=$1 cap=$2; shift 2
  case " $parts " in *" $name "*) ;; *) return 0 ;; esac
  local left=$(( deadline - $(date +%s) ))
  if [ "$left" -lt 20 ]; then echo "== $name: SKIPPED (deadline)"; fail=1; return 0; fi
  local limit=$(( cap < left ? cap : left ))
  echo "== $name (limit ${limit} s)"
  local t0=$(date +%s)
  timeout -k 15 "$limit" "$@" > "$out/$name.log" 2>&1 &  # a part deaf to TERM is killed 15 s later
  child=$!
  wait "$child"
  local rc=$?
  child=
  tail -n 30 "$out/$name.log"
  echo "== $name: rc $rc after $(( $(date +%s) - t0 )) s"
  [ "$rc" -eq 0 ] || fail=1
}

if [ -n "${REHEARSE:-}" ]; then
  python3 -c "import torch, timm; print('rehearsal on the CPU: torch', torch.__version__, 'timm', timm.__version__)" \
    || { echo "needs torch and timm (pip install -e '.[bench]')"; exit 2; }
  dev=cpu
  mfu=(--device cpu --tiny --batch 8 --reps 1 --steps 2)
  pipe=(--device cpu --tiny --batch 8 --images 48 --steps 2 --workers 1 --feeds "CPU decode" "GPU decode")
  trace=(--model vit_c_tiny --px 32 --batch 8 --device cpu --shipped --reps 1 --steps 2)
  smoke_train=(device=cpu decode=cpu compile=false steps_per_epoch=2 epochs=1)
  policy=(--device cpu --px 32 --batch 16 --reps 1)
  b512=(--device cpu --tiny --batch 16 --reps 1 --steps 2)
  opts=(--optimizers --device cpu --reps 1 --steps 1)
else
  nvidia-smi -L || { echo "no NVIDIA GPU here (nvidia-smi): nothing to measure"; exit 2; }
  python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, torch.cuda.get_device_name(0))" \
    || { echo "needs torch with CUDA and timm (pip install -e '.[bench]')"; exit 2; }
  dev=cuda
  mfu=(--batch 256 --compile --reps 3 --steps 10)
  pipe=(--compile --batch 256 --images 2560 --steps 20 --feeds "GPU decode, no overlap" "GPU decode"
        "GPU decode + autoaugment")
  trace=(--model vit_c_4gf --px 224 --batch 256 --device cuda --shipped --reps 3 --steps 10)
  smoke_train=(decode=gpu epochs=2)
  policy=(--device cuda --px 224 --reps 3)
  b512=(--batch 512 --compile --reps 3 --steps 10)
  opts=(--optimizers --device cuda --reps 5 --steps 5)
fi

smoke() {  # smoke TRAIN_OVERRIDES...: the trainer's defaults on the device, then RegNets via a local grid
  python3 - "$out/jpegs" <<'PY' || return 1
import sys, pathlib, torch
from PIL import Image
root = pathlib.Path(sys.argv[1]); g = torch.Generator().manual_seed(0)
for split, n in (("train", 48), ("val", 8)):
    for c in range(4):
        (root / split / f"c{c}").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = (torch.rand(60, 80, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(arr).save(root / split / f"c{c}" / f"{i}.jpg", quality=85)
PY
  python3 -m stability.cli train model=vit_c_tiny dataset=imagefolder data_root="$out/jpegs" image_size=32 \
    batch_size=32 auto_augment=autoaugment mixup_alpha=0.8 cutmix_alpha=1.0 results="$out/results" sweep=cuda_smoke \
    "$@" || return 1
  # the RegNet through a local grid: its runs are forked from the warm launcher after its preloads
  # (torch, the trainer, torch._dynamo), then take the GPU in the child
  cat > "$out/grid.yaml" <<YAML
name: cuda_grid
base: {model: regnety_tiny, epochs: 1, compile: false${REHEARSE:+, device: cpu, steps_per_epoch: 2}}
space: {lr: [5.0e-4, 1.0e-3]}
sampler: {name: grid, n: 1, seed: 0}
executor: {kind: local, max_parallel: 2}
results: $out/results
YAML
  python3 -m stability.cli grid run "$out/grid.yaml" --quiet || return 1
  python3 - "$out/results" "$dev" <<'PY'
import sys, pandas as pd, pathlib
runs = pd.concat(pd.read_parquet(p) for p in pathlib.Path(sys.argv[1]).rglob("runs/**/*.parquet"))
cols = [c for c in ("model", "dataset", "status", "device", "compiled", "optimizer_impl", "amp_dtype", "top1_err",
                    "wall_time_s", "error") if c in runs]
print(runs[cols].to_string())
sys.exit(0 if (runs["status"] == "completed").all() and (runs["device"].str.startswith(sys.argv[2])).all() else 1)
PY
}

part mfu 170 python3 benchmarks/gpu_check.py "${mfu[@]}"
part pipeline 130 python3 benchmarks/gpu_check.py --pipeline "${pipe[@]}"
part tracing 70 python3 benchmarks/tracing_overhead.py "${trace[@]}"
export -f smoke
export out dev
part smoke 120 bash -c 'smoke "$@"' smoke "${smoke_train[@]}"
part policy 30 python3 benchmarks/batch_policy.py "${policy[@]}"
part batch512 100 python3 benchmarks/gpu_check.py "${b512[@]}"
part optimizers 40 python3 benchmarks/step_options.py "${opts[@]}"
finish
echo "== done: fail=$fail"
exit $fail
