#!/usr/bin/env bash
# The GPU half of the norm + activation work, as one prepared run (about 8 minutes on an
# H100/H200; each step has its own time limit so one slow step cannot eat the others):
#
#   1. the Triton kernel tests, compiled for the GPU instead of interpreted
#      (tests/norm/test_kernels.py with SHARENORM_TEST_DEVICE=cuda);
#   2. bench_fused over the shapes in bf16 (the targets are 16-bit) without
#      torch.compile, plus the ResNet-like step peak (torch.cuda.max_memory_allocated);
#   3. bench_fused with torch.compile for the headline cases (bf16, GN/IN/BN, none/silu);
#   4. (not by default) fp16 and fp32 rows.
#
# Triton compiles each kernel specialization on first use (act × dtype × layout × tile):
# step 2 alone is a few hundred compiles on a fresh machine, hence the narrower sweeps.
#
# Usage (results land in $OUT, default gpu-results/):
#   bash benchmarks/gpu_check.sh            # steps 1-3
#   bash benchmarks/gpu_check.sh 1 3 4      # some steps
set -u
PY=${PYTHON:-python}
OUT=${OUT:-gpu-results}
STEPS=${*:-1 2 3}
mkdir -p "$OUT"
unset TRITON_INTERPRET
export TRITON_DEFAULT_FP_FUSION=1
{ nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.memory --format=csv
  $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
} > "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"

for step in $STEPS; do
  case $step in
    1) SHARENORM_TEST_DEVICE=cuda timeout 240 $PY -m pytest tests/norm/test_kernels.py \
         -q -p no:cacheprovider 2>&1 | tail -25 | tee "$OUT/kernel_tests.txt" ;;
    2) timeout 300 $PY benchmarks/bench_fused.py --no-compile --dtypes bfloat16 \
         --acts none,relu,silu,gelu --csv "$OUT/fused.csv" --resnet 2>&1 \
         | tee "$OUT/fused.txt" | tail -15 ;;
    3) timeout 300 $PY benchmarks/bench_fused.py --dtypes bfloat16 --acts none,silu \
         --csv "$OUT/fused_compile.csv" 2>&1 | tee "$OUT/fused_compile.txt" | tail -15 ;;
    4) timeout 300 $PY benchmarks/bench_fused.py --no-compile --dtypes float16,float32 \
         --acts none,silu --csv "$OUT/fused_fp16_fp32.csv" 2>&1 \
         | tee "$OUT/fused_fp16_fp32.txt" | tail -15 ;;
    *) echo "unknown step $step (1, 2, 3 or 4)" >&2; exit 2 ;;
  esac
done
