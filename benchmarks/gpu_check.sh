#!/usr/bin/env bash
# The GPU half of the norm + activation work, as one prepared run that fits one 10-minute
# command (each step has its own time limit, LIMIT1..LIMIT4 seconds, so one slow step cannot
# eat the others):
#
#   1. the Triton kernel tests, compiled for the GPU instead of interpreted, and torch's
#      module_db samples through torch's CUDA layers and sharenorm's (tests/norm/test_kernels.py
#      and test_module_db.py with SHARENORM_TEST_DEVICE=cuda; 8 pytest workers when
#      pytest-xdist is installed: compiling the kernel specializations dominates). The second
#      needs expecttest, which the H200 image lacks: carry its wheel (.whl/, see the device
#      tool's README) and this script installs what lies there into /tmp/site first;
#   2. bench_fused in bf16 (the targets are 16-bit) without torch.compile, over the
#      issue's shapes plus 32x256x64x64 (64 MiB: the HBM-fraction target is for tensors
#      >= 64 MB), then the ResNet-like step peak (torch.cuda.max_memory_allocated);
#   3. bench_fused with torch.compile for the headline cases (bf16, GN/BN, none/silu);
#   4. (not by default) fp16 and fp32 rows.
#
# Triton compiles each kernel specialization on first use (act × dtype × layout × tile),
# hence the narrower sweeps and 10 timed blocks per contender instead of 30.
#
# Usage (results land in $OUT, default gpu-results/):
#   bash benchmarks/gpu_check.sh            # steps 1-3
#   bash benchmarks/gpu_check.sh 1 3 4      # some steps
set -u
PY=${PYTHON:-python}
OUT=${OUT:-gpu-results}
STEPS=${*:-1 2 3}
LIMIT1=${LIMIT1:-150} LIMIT2=${LIMIT2:-250} LIMIT3=${LIMIT3:-170} LIMIT4=${LIMIT4:-200}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
XDIST=$($PY -c "import xdist" 2>/dev/null && echo "-n 8")
BIG=32x128x56x56,2x320x64x64,1x512x64x64,32x256x64x64
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then  # carried wheels (expecttest), no index there
  $PY -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
unset TRITON_INTERPRET
export TRITON_DEFAULT_FP_FUSION=1
{ nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.memory --format=csv
  $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
} > "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"

for step in $STEPS; do
  case $step in
    1) SHARENORM_TEST_DEVICE=cuda timeout $LIMIT1 $PY -m pytest tests/norm/test_kernels.py \
         tests/norm/test_module_db.py \
         $XDIST -p no:cacheprovider -p no:logging > "$OUT/kernel_tests.txt" 2>&1
       tail -8 "$OUT/kernel_tests.txt" ;;
    2) timeout $LIMIT2 $PY benchmarks/bench_fused.py --no-compile --dtypes bfloat16 \
         --acts none,silu --shapes $BIG --repeats 10 --csv "$OUT/fused.csv" --resnet 2>&1 \
         | tee "$OUT/fused.txt" | tail -15 ;;
    3) timeout $LIMIT3 $PY benchmarks/bench_fused.py --dtypes bfloat16 --acts none,silu \
         --norms gn,bn --shapes 32x128x56x56,2x320x64x64 --repeats 10 --csv "$OUT/fused_compile.csv" 2>&1 | tee "$OUT/fused_compile.txt" | tail -15 ;;
    4) timeout $LIMIT4 $PY benchmarks/bench_fused.py --no-compile --dtypes float16,float32 --repeats 10 \
         --acts none,silu --csv "$OUT/fused_fp16_fp32.csv" 2>&1 \
         | tee "$OUT/fused_fp16_fp32.txt" | tail -15 ;;
    *) echo "unknown step $step (1, 2, 3 or 4)" >&2; exit 2 ;;
  esac
done
