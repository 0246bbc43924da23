#!/usr/bin/env bash
# One GPU check for regdiff, run on the device machine from the repo root with `.whl` carried:
#
#     bash bench/device_check.sh            # about 7-8 minutes on an H100/H200; give the call timeout_s 600
#
# Stages, each time-boxed with `timeout` and run whatever the previous one did:
#   (a) smoke      bench/cuda_smoke.py: precision auto = fp32, bf16, graphs vs eager, ddim + checkpointing, stacked vs alone,
#                  samplers, host syncs per step
#   (b) tp128      bench/train_throughput.py --device cuda --batch 128: anchor vs regdiff eager vs regdiff
#                  CUDA graphs (vanilla, tweedie, ddim K=2/4), bf16; 3 interleaved rounds, spread shown
#   (c) tp512      the same at batch 512, 2 rounds, plus DDIM-50 sampling images/s (DDIMPipeline anchor)
#   (e) sweep8     bench/sweep_throughput.py: an 8-point lambda sweep as one stacked model vs 8 sequential runs
#   (d) sweep      only with LAMBDA_SWEEP=1: bench/lambda_sweep.py on mnist-5k / unet-s (science, not perf)
# Outputs under $OUT (one folder deep): log.txt (everything), throughput_128.md, throughput_512.md, sweep8.md and,
# with LAMBDA_SWEEP=1, sweep/sweep.{md,json,png}; each bench rewrites its file after every variant.
# Budget: stage limits 60 + 170 + 180 + 100 s plus ~20 s of install and versions: at most ~530 s.
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
  TP128=(--device cpu --batch 32 --warmup 2 --steps 3 --repeats 2 --only anchor,vanilla,tweedie,ddim2-g1)
  TP512=(--device cpu --batch 64 --warmup 2 --steps 2 --repeats 2 --only anchor,vanilla --sample 8)
  SWEEP8=(--device cpu --points 3 --batch 16 --warmup 2 --steps 2 --rounds 1)
  SWEEP=(--device cpu --dataset digits --preset unet-xs --steps 10 --eval-samples 16 --eval-steps 5
         --classifier-steps 20 --lambdas 0,1)
else
  SMOKE=(--device cuda)
  TP128=(--device cuda --batch 128 --warmup 10 --steps 40 --repeats 3)
  TP512=(--device cuda --batch 512 --warmup 6 --steps 20 --repeats 2 --sample 512)
  SWEEP8=(--device cuda --points 8 --batch 128 --warmup 10 --steps 30 --rounds 2)
  SWEEP=(--device cuda --dataset mnist-5k --preset unet-s --steps "$SWEEP_STEPS" --eval-samples 256)
fi
stage smoke 60 python3 bench/cuda_smoke.py "${SMOKE[@]}" --cache-dir "$CACHE"
stage tp128 170 python3 bench/train_throughput.py "${TP128[@]}" --cache-dir "$CACHE" --out "$OUT/throughput_128.md"
stage tp512 180 python3 bench/train_throughput.py "${TP512[@]}" --cache-dir "$CACHE" --out "$OUT/throughput_512.md"
stage sweep8 100 python3 bench/sweep_throughput.py "${SWEEP8[@]}" --cache-dir "$CACHE" --out "$OUT/sweep8.md"
if [ "${LAMBDA_SWEEP:-0}" = 1 ]; then
  stage sweep 290 python3 bench/lambda_sweep.py "${SWEEP[@]}" --cache-dir "$CACHE" --out "$OUT/sweep"
fi

for f in throughput_128.md throughput_512.md sweep8.md sweep/sweep.md; do
  [ -f "$OUT/$f" ] && { echo; echo "=== $f"; cat "$OUT/$f"; }
done
echo "=== done in $(( $(date +%s) - T0 ))s: ${SUMMARY:-}"
exec 1>&- 2>&-  # let tee see the end of its input and finish writing log.txt before the call returns
wait "$TEE_PID" 2>/dev/null || sleep 1
