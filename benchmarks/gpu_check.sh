#!/usr/bin/env bash
# One-command GPU check, for a machine with an NVIDIA GPU, nvcc and a CUDA build of torch:
# builds odecore._C with the CUDA kernels in place, runs the CUDA tests and the GPU
# benchmarks, and writes the results (text and JSON) to $OUT (default: gpu-results/).
#   OUT=/some/dir TORCH_CUDA_ARCH_LIST=9.0 bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-results}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export PATH="$CUDA_HOME/bin:$PATH"
status=0

echo "== build (FORCE_CUDA=1, arch ${TORCH_CUDA_ARCH_LIST:-9.0})"
if ! FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16} \
        "$PY" setup.py build_ext --inplace > "$OUT/build.log" 2>&1; then
    tail -n 60 "$OUT/build.log"
    echo "gpu_check: build failed (full log: $OUT/build.log)"
    exit 1
fi
"$PY" -m odecore info | tee "$OUT/info.txt"
"$PY" -m odecore info --json > "$OUT/info.json"

echo "== CUDA tests"
"$PY" -m pytest tests/test_cuda.py -q -rs -p no:cacheprovider --junitxml="$OUT/cuda-tests.xml" 2>&1 | tee "$OUT/cuda-tests.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "== GPU benchmarks"
for dtype in float32 float64; do
    "$PY" -m odecore bench --device cuda --dtype "$dtype" --repeats 5 -q \
        --json "$OUT/bench-cuda-$dtype.json" 2>&1 | tee "$OUT/bench-cuda-$dtype.txt"
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
done
"$PY" -m odecore bench --device cuda --dtype float32 --grad --problems vdp spiral small_node --repeats 5 -q \
    --json "$OUT/bench-cuda-float32-grad.json" 2>&1 | tee "$OUT/bench-cuda-float32-grad.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

{
    echo "# odecore GPU check"
    echo
    echo '```'; cat "$OUT/info.txt"; echo '```'
    echo
    echo "## CUDA tests"; echo; echo '```'; tail -n 15 "$OUT/cuda-tests.txt"; echo '```'
    for f in "$OUT"/bench-cuda-*.txt; do
        echo; echo "## $(basename "$f" .txt)"; echo; grep '^|' "$f"
    done
} > "$OUT/RESULTS.md"
echo "gpu_check: results in $OUT/RESULTS.md (exit $status)"
exit $status
