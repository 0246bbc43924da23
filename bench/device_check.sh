#!/usr/bin/env bash
# One GPU check for regdiff, run on the device machine from the repo root with `.whl` carried:
#
#     bash bench/device_check.sh            # about 6-7 minutes on an H100; give the call timeout_s 600
#
# Stages, each time-boxed with `timeout` and run whatever the previous one did:
#   (a) smoke     bench/cuda_smoke.py: bf16 training, ddim + checkpointing, samplers, host syncs per step
#   (b) throughput bench/train_throughput.py --device cuda: anchor vs regdiff vs each estimator
#   (c) sweep     bench/lambda_sweep.py on mnist-5k / unet-s: lambda in {0,.03,.1,.3,1} + ddim 4:1@0.3
# Outputs under $OUT (one folder deep, 5 files): log.txt (everything, the smoke check's lines too),
# throughput_cuda.md, sweep/sweep.md, sweep/sweep.json, sweep/sweep.png; each bench rewrites its
# files after every variant or run, so a stage cut by its time box keeps what it finished.
# Budget: stage limits 60 + 200 + 290 s plus ~20 s of install and versions: at most ~570 s.
# SWEEP_STEPS (default 600) sets the sweep's training steps per run (6 runs).
set -u -o pipefail

OUT="${OUT:-/tmp/regdiff-device-out}"
mkdir -p "$OUT/sweep"
exec > >(tee -a "$OUT/log.txt") 2>&1
TEE_PID=$!
export PYTHONUNBUFFERED=1
SWEEP_STEPS="${SWEEP_STEPS:-400}"
CACHE=/tmp/regdiff-cache  # mnist-5k parsed once (~5 s), then read from its .npz by every stage
T0=$(date +%s)

# The wheels (.whl: pydantic, pydantic-core, annotated-types, typing-inspection, typing-extensions,
# diffusers, mlxtend) go to /tmp/site, unless an earlier install in this call already put them there.
if ! PYTHONPATH=/tmp/site python3 -c "import pydantic, diffusers, mlxtend" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "FATAL: wheel install failed"; exit 1; }
fi
export PYTHONPATH="/tmp/site:$PWD"

stage() {  # stage NAME LIMIT_SECONDS COMMAND...: run it time-boxed, log its status, never abort the script
  local name=$1 limit=$2; shift 2
  local t=$(date +%s)
  echo; echo "=== [$name] $(date -u +%H:%M:%S) limit ${limit}s: $*"
  timeout --kill-after=5 "$limit" "$@"
  local rc=$?
  local verdict=ok; [ $rc -ne 0 ] && verdict="FAILED"; [ $rc -eq 124 ] || [ $rc -eq 137 ] && verdict="TIMED OUT"
  echo "=== [$name] $verdict (rc $rc) in $(( $(date +%s) - t ))s"
  SUMMARY="${SUMMARY:-}[$name] $verdict rc=$rc $(( $(date +%s) - t ))s; "
}

echo "=== environment $(date -u +%Y-%m-%dT%H:%M:%SZ)"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || nvidia-smi
python3 - <<'EOF'
import platform, torch, diffusers, pydantic, pydantic_core, huggingface_hub, mlxtend, numpy
print(f"python {platform.python_version()}, torch {torch.__version__} (cuda {torch.version.cuda},"
      f" available {torch.cuda.is_available()}), diffusers {diffusers.__version__}, pydantic {pydantic.VERSION}"
      f" (core {pydantic_core.__version__}), huggingface_hub {huggingface_hub.__version__},"
      f" mlxtend {mlxtend.__version__}, numpy {numpy.__version__}")
print("diffusers from", diffusers.__file__)
EOF

if [ "${BENCH_DEVICE:-cuda}" = cpu ]; then  # a rehearsal of this script on a CPU box, tiny sizes
  SMOKE=(--device cpu --dataset digits --preset unet-xs --batch 32 --steps 6)
  THROUGHPUT=(--device cpu --warmup 2 --steps 3 --only anchor,vanilla,tweedie,ddim2-g1)
  SWEEP=(--device cpu --dataset digits --preset unet-xs --steps 10 --eval-samples 16 --eval-steps 5
         --classifier-steps 20 --lambdas 0,1)
else
  SMOKE=(--device cuda)
  THROUGHPUT=(--device cuda --steps 100)
  SWEEP=(--device cuda --dataset mnist-5k --preset unet-s --steps "$SWEEP_STEPS" --eval-samples 256)
fi
stage smoke 40 python3 bench/cuda_smoke.py "${SMOKE[@]}" --cache-dir "$CACHE"
stage throughput 120 python3 bench/train_throughput.py "${THROUGHPUT[@]}" --cache-dir "$CACHE" \
  --out "$OUT/throughput_cuda.md"
stage sweep 150 python3 bench/lambda_sweep.py "${SWEEP[@]}" --cache-dir "$CACHE" --out "$OUT/sweep"

echo
echo "=== throughput_cuda.md"; cat "$OUT/throughput_cuda.md" 2>/dev/null
echo "=== sweep/sweep.md"; cat "$OUT/sweep/sweep.md" 2>/dev/null
echo "=== done in $(( $(date +%s) - T0 ))s: ${SUMMARY:-}"
exec 1>&- 2>&-  # let tee see the end of its input and finish writing log.txt before the call returns
wait "$TEE_PID" 2>/dev/null || sleep 1
