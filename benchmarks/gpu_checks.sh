#!/usr/bin/env bash
# Everything this project measures on a CUDA machine, in one run (about 10 minutes on one H200):
#   the CUDA tests (models vs CPU, AMP bf16 / fp16 + GradScaler, channels-last, torch.compile, DDP on NCCL
#   where there are two GPUs, the benchmark's training step), SDPA at GPViT-L1's head dimensions (as they are
#   and padded to multiples of 8, per backend), the training step with and without the dropped samples'
#   branches computed (bench_train_step.py: what skipping them, and its host syncs, gives on a GPU), and
#   `gpvit bench` training and inference images/s of GPViT L1-L4 and GC ViT-T at 224 and of GPViT-L1 against a
#   plain ViT-P16 at 800x1280.
# Results go to $OUT (default gpu-results/): at most 8 files, two folders deep.
# Run from the repository root; the package is imported from src/. Wheels in .whl/ (e.g. a newer timm for a
# machine without network) are installed into /tmp/site first and take precedence.
set -uo pipefail
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if compgen -G '.whl/*.whl' > /dev/null; then
  python -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
{ nvidia-smi -L; python -c 'import sys, torch, timm; print(sys.version.split()[0], "torch", torch.__version__,
  "timm", timm.__version__, torch.cuda.get_device_name())'; } 2>&1 | tee "$OUT/device.txt"
python -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tail -n 40 | tee "$OUT/test_cuda.txt"
python benchmarks/bench_sdpa_head_dim.py --device cuda --dtypes bfloat16 float16 float32 2>&1 | tee "$OUT/sdpa_head_dim.md"
for m in gpvit_l1 gc_vit_tiny; do
  python benchmarks/bench_train_step.py --device cuda --model $m --size 224x224x64 --drop-path-rate 0.2 \
    --variants eager eager_all bf16 bf16_all --iters 10 2>&1 | tail -n 9
done | tee "$OUT/train_step_cuda.md"
python -m gpvit bench --models gpvit_l1 gpvit_l2 gpvit_l3 gpvit_l4 gc_vit_tiny --sizes 224 --batch-sizes 64 \
  --dtypes bfloat16 float32 --devices cuda --modes infer train --time-budget 60 --out "$OUT/b224" --no-plot \
  2>&1 | tail -n 30
python -m gpvit bench --models gpvit_l1 vit_plain_p16_c216 --sizes 800x1280 --batch-sizes 1 8 \
  --dtypes bfloat16 --devices cuda --modes infer train --time-budget 60 --out "$OUT/b800" --no-plot 2>&1 | tail -n 20
rm -f "$OUT"/b224/*.csv "$OUT"/b800/*.csv  # the Markdown tables hold the same numbers (8 files come back)
