#!/usr/bin/env bash
# The checks to run on the first machine with a GPU, in one command (under
# 8 minutes on one GPU):
#   1. tools/benchmarks/benchmark_update.py on cuda:0 (the teacher update of
#      BYOL ResNet-50: EMA, CosineEMA, TMA/STS/SE at each granularity);
#   2. BYOL ResNet-50 step time with and without the STS hook, on random
#      in-memory images (no data set needed), and their ratio;
#   3. torch.cuda.set_sync_debug_mode('error') around the STS teacher
#      update (tensor/channel/element, nonfinite skip/raise): it must never
#      synchronise host and device;
#   4. the tests that need CUDA (pytest marker `cuda`; CI skips them).
# Results go to work_dirs/gpu_check/ (GPU_CHECK_DIR to change it), and the
# figures to work_dirs/gpu_check/summary.md, which is printed at the end.
# Without CUDA it prints "skipped: no CUDA" and exits with status 0.
#
# Usage: bash tools/benchmarks/gpu_check.sh     (or: make gpu-check)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then
        PYTHON=.venv/bin/python
    else
        PYTHON=python3
    fi
fi
OUT="${GPU_CHECK_DIR:-work_dirs/gpu_check}"

if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check.sh: skipped: no CUDA (torch.cuda.is_available() is False for $PYTHON)"
    exit 0
fi

mkdir -p "$OUT"
failed=()

# check NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log.
check() {
    local name=$1 limit=$2
    shift 2
    echo "== $name (at most ${limit} s)"
    if ! timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"; then
        echo "gpu_check.sh: FAILED: $name (log: $OUT/$name.log)"
        failed+=("$name")
    fi
}

check benchmark_update 120 "$PYTHON" tools/benchmarks/benchmark_update.py \
    --device cuda:0 --repeat 40 --warmup 5 --json "$OUT/benchmark_update.json"
check step_time 240 "$PYTHON" tools/benchmarks/gpu_check.py step-time \
    --out "$OUT/step_time.json" --work-dir "$OUT"
check sync 90 "$PYTHON" tools/benchmarks/gpu_check.py sync \
    --out "$OUT/sync.json"
check cuda_tests 120 "$PYTHON" -m pytest -q -rs -m cuda tests

"$PYTHON" tools/benchmarks/gpu_check.py summary --dir "$OUT"

if (( ${#failed[@]} )); then
    echo "gpu_check.sh: ${#failed[@]} check(s) failed: ${failed[*]}"
    exit 1
fi
echo "gpu_check.sh: all checks ran; figures in $OUT/summary.md"
