#!/usr/bin/env bash
# One-command GPU check, for a machine with an NVIDIA GPU, nvcc and a CUDA build of torch:
# builds odecore._C with the CUDA kernels in place, runs the CUDA tests and the GPU
# benchmarks (the GPU suite of issue #3 at full sizes, then the default problems), and
# writes the results (text and JSON) to $OUT (default: gpu-results/), summed up in
# $OUT/RESULTS.md.
#   OUT=/some/dir TORCH_CUDA_ARCH_LIST=9.0 bash benchmarks/gpu_check.sh
#
# Every benchmark is its own process under `timeout`, writing its JSON after each problem,
# so a failure or a timeout loses at most that process's unfinished problem. No benchmark
# starts after BUDGET_S seconds of the whole run (build included), and none runs past it.
# Knobs (environment): BUDGET_S (default 450), REPEATS (3), CASE_BUDGET (20 s: one
# implementation on one problem; over it the case is skipped with a note, and so at the
# family's larger sizes), GPU_DTYPES (float32; e.g. "float32 float64"), SIZES (full),
# SYNC_EVERY (passed as --sync-every when set), DEVICE (cuda), SKIP_BUILD=1 (use the
# extension as built: for a dry run on the CPU with DEVICE=cpu SIZES=small).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-results}
PY=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-450}
REPEATS=${REPEATS:-3}
CASE_BUDGET=${CASE_BUDGET:-20}
GPU_DTYPES=${GPU_DTYPES:-float32}
SIZES=${SIZES:-full}
DEVICE=${DEVICE:-cuda}
SYNC_EVERY=${SYNC_EVERY:-}
mkdir -p "$OUT"
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export PATH="$CUDA_HOME/bin:$PATH"
START=$SECONDS
status=0
: > "$OUT/incidents.txt"

if [ "${SKIP_BUILD:-0}" = 1 ]; then
    echo "== build skipped (SKIP_BUILD=1)"
else
    echo "== build (FORCE_CUDA=1, arch ${TORCH_CUDA_ARCH_LIST:-9.0})"
    if ! FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16} \
            "$PY" setup.py build_ext --inplace > "$OUT/build.log" 2>&1; then
        tail -n 60 "$OUT/build.log"
        echo "gpu_check: build failed (full log: $OUT/build.log)"
        exit 1
    fi
    echo "   built in $((SECONDS - START)) s"
fi
"$PY" -m odecore info | tee "$OUT/info.txt"
"$PY" -m odecore info --json > "$OUT/info.json"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true

echo "== CUDA tests"
timeout -k 10 "${TEST_TIMEOUT:-180}" "$PY" -m pytest tests/test_cuda.py -q -rs -p no:cacheprovider \
    --junitxml="$OUT/cuda-tests.xml" 2>&1 | tee "$OUT/cuda-tests.txt"
rc=${PIPESTATUS[0]}
if [ "$rc" -ne 0 ]; then
    status=1
    echo "- CUDA tests: exit $rc$([ "$rc" -eq 124 ] && echo ' (timed out)')" >> "$OUT/incidents.txt"
fi

BENCHES=()
# bench NAME LIMIT_S ARGS...: one `odecore bench` process; stdout in NAME.txt, progress in
# NAME.log, results in NAME.json and the tables in NAME.md (both rewritten after every problem).
bench() {
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET_S - (SECONDS - START)))
    if [ "$left" -lt 15 ]; then
        echo "== $name: not run (time budget BUDGET_S=$BUDGET_S s spent)"
        echo "- $name: not run, time budget (BUDGET_S=$BUDGET_S s) spent" >> "$OUT/incidents.txt"
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name (at most ${limit} s; $((SECONDS - START)) s elapsed)"
    BENCHES+=("$name")
    local extra=()
    [ -n "$SYNC_EVERY" ] && extra+=(--sync-every "$SYNC_EVERY")
    timeout -k 10 "$limit" "$PY" -m odecore bench --device "$DEVICE" --repeats "$REPEATS" \
        --case-budget "$CASE_BUDGET" ${extra[@]+"${extra[@]}"} "$@" \
        --json "$OUT/$name.json" --markdown "$OUT/$name.md" > "$OUT/$name.txt" 2> "$OUT/$name.log"
    local rc=$?
    grep '^|' "$OUT/$name.txt" || true
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        echo "- $name: timed out after $limit s; the problems finished before are in $name.json" \
            | tee -a "$OUT/incidents.txt"
    elif [ "$rc" -ne 0 ]; then
        status=1
        echo "- $name: exit $rc (see $name.log); the problems finished before are in $name.json" \
            | tee -a "$OUT/incidents.txt"
        tail -n 20 "$OUT/$name.log"
    fi
}

echo "== GPU suite (sizes: $SIZES, dtypes: $GPU_DTYPES)"
for dtype in $GPU_DTYPES; do
    bench "gpu-vdp-$dtype"          90 --suite gpu --sizes "$SIZES" --problems gpu_vdp      --dtype "$dtype"
    bench "gpu-lorenz_rk4-$dtype"   150 --suite gpu --sizes "$SIZES" --problems lorenz_rk4   --dtype "$dtype"
    bench "gpu-lorenz_tsit5-$dtype" 120 --suite gpu --sizes "$SIZES" --problems lorenz_tsit5 --dtype "$dtype"
    bench "gpu-odenet_block-$dtype" 60  --suite gpu --sizes "$SIZES" --problems odenet_block --dtype "$dtype"
done

echo "== default problems"
for dtype in float32 float64; do
    bench "bench-$DEVICE-$dtype" 120 --dtype "$dtype"
done
bench "bench-$DEVICE-float32-grad" 90 --dtype float32 --grad --problems vdp spiral small_node

{
    echo "# odecore GPU check"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $((SECONDS - START)) s; REPEATS=$REPEATS CASE_BUDGET=$CASE_BUDGET" \
         "BUDGET_S=$BUDGET_S SIZES=$SIZES GPU_DTYPES=\"$GPU_DTYPES\" SYNC_EVERY=${SYNC_EVERY:-unset}" \
         "commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ' (+ local changes)')"
    echo
    echo '```'; cat "$OUT/info.txt"; grep -m1 -E 'NVIDIA|Driver' "$OUT/nvidia-smi.txt" 2>/dev/null; echo '```'
    echo
    echo "## CUDA tests"; echo; echo '```'; tail -n 15 "$OUT/cuda-tests.txt"; echo '```'
    if [ -s "$OUT/incidents.txt" ]; then
        echo; echo "## Incidents"; echo; cat "$OUT/incidents.txt"
    fi
    for name in ${BENCHES[@]+"${BENCHES[@]}"}; do
        echo; echo "## $name"; echo
        if [ -s "$OUT/$name.md" ]; then
            cat "$OUT/$name.md"
        else
            echo "(no results: see $name.log)"
        fi
    done
} > "$OUT/RESULTS.md"
echo "gpu_check: results in $OUT/RESULTS.md ($((SECONDS - START)) s, exit $status)"
exit $status
