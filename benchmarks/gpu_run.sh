#!/usr/bin/env bash
# The whole GPU run in one call (docs/gpu.md): the CUDA test suite, the toy device check, attribute recipes trained in
# bf16 (images/s, Frechet distance against the floor over time), then, with the GPU to themselves, the sampling
# benchmark (throughput, bandwidth bound, host syncs, peak memory) and the UNet benchmark against diffusers.
#
# Run from the repository root on a CUDA machine: OUT=/some/folder bash benchmarks/gpu_run.sh
# (python3 must have torch with CUDA; diffusers is taken from wheels in .whl/ when that folder exists).
# Everything goes to $OUT/gpu_run.log; the attribute models' float16 weights to $OUT/*.pt.
set -u
OUT=${OUT:-build/gpu}
mkdir -p "$OUT"
LOG="$OUT/gpu_run.log"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 DIFFMATH_CACHE=/tmp/diffmath-cache
PY=${PY:-python3}
SECONDS_PER_RECIPE=${SECONDS_PER_RECIPE:-200}
# SMOKE=1: the same run on the CPU with tiny sizes, to check the script itself (the CUDA tests skip there)
DEV=cuda ATTR=(--seconds "$SECONDS_PER_RECIPE") IMG=(--seconds 15 --batch 128 --threads 4) SAMP=()
if [ "${SMOKE:-0}" = 1 ]; then
    DEV=cpu ATTR=(--steps 10 --evals 1 --draws 2 --n 16) IMG=(--seconds 1 --n 16 --batch 8) SAMP=(--batch 8 --nfe 3)
fi
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
say() { echo "$*" | tee -a "$LOG"; }
part() { # part NAME LIMIT_S CMD...: run, keep its output in the log, note its exit status and time
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    say "=== $name (limit ${limit}s)"
    timeout "$limit" "$@" >>"$LOG" 2>&1
    say "=== $name: rc=$? in $((SECONDS - t0)) s"
}
say "gpu_run: $(date -u +%FT%TZ) $(git rev-parse --short HEAD 2>/dev/null)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >>"$LOG" 2>&1
$PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)" >>"$LOG" 2>&1
$PY -c "import diffusers; print('diffusers', diffusers.__version__)" >>"$LOG" 2>&1 || say "diffusers: not importable"

# phase 1: the attribute recipes train in the background (4 processes share the GPU) while the tests run
pids=()
train_bg() { # train_bg TAG ARGS...: one attribute run, its table into the log when it ends
    local tag=$1
    shift
    (timeout $((SECONDS_PER_RECIPE + 150)) $PY benchmarks/attr_training.py "$@" --device "$DEV" --precision bf16 \
        --out "$OUT" >"/tmp/attr-$tag.log" 2>&1; echo "rc=$?" >>"/tmp/attr-$tag.log") &
    pids+=($!)
}
if [ "${SMOKE:-0}" = 1 ]; then train_bg recipe attr-uncond "${ATTR[@]}"; else train_bg recipe attr-uncond; fi
train_bg long attr-uncond "${ATTR[@]}"
train_bg batch128 attr-uncond "${ATTR[@]}" --batch 128
train_bg joint attr-joint "${ATTR[@]}"
part "pytest tests/test_cuda.py" 240 $PY -m pytest -q -p no:cacheprovider -p no:randomly tests/test_cuda.py
part "gpu_check (toy recipe, CUDA vs CPU)" 120 $PY benchmarks/gpu_check.py --steps 200
part "judge for images.py (shapes, 32 px)" 200 $PY -c \
    "from diffmath.recipes import train_attribute_classifier as t; t('shapes', size=32, progress=False)"
for pid in "${pids[@]}"; do wait "$pid"; done
for tag in recipe long batch128 joint; do
    say "=== attr_training $tag"
    cat "/tmp/attr-$tag.log" >>"$LOG"
done

# phase 2: timings with the GPU to themselves
part "gpu_sampling" 150 $PY benchmarks/gpu_sampling.py --device "$DEV" "${SAMP[@]}"
part "images.py float32" 120 $PY benchmarks/images.py --device "$DEV" "${IMG[@]}"
part "images.py bf16" 120 $PY benchmarks/images.py --device "$DEV" "${IMG[@]}" --precision bf16
part "gpu_sampling --compile" 150 $PY benchmarks/gpu_sampling.py --device "$DEV" "${SAMP[@]}" --compile
say "gpu_run: done in $SECONDS s"
grep -E "^(===|\||ratio|[a-z-]+: )" "$LOG" | grep -v "^| ---" | tail -120
