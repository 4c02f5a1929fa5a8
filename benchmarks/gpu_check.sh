#!/usr/bin/env bash
# Validates stn-ext on a GPU machine in one go (torch preinstalled, no internet needed):
#   bash benchmarks/gpu_check.sh OUT_DIR [CIFAR_DATA]
# 1. builds the extension for this GPU's architecture only (pip install --no-build-isolation
#    --no-deps -e .);
# 2. runs the test suite on the GPU: the cuda and triton backends (the CPU and emulated backends
#    are CI's);
# 3. runs compute-sanitizer memcheck, racecheck and synccheck on benchmarks/sanitizer_driver.py;
# 4. runs bench_sampling.py and bench_train.py on CUDA and kernel_resources.py (registers and
#    stack of the kernels just built), recording into benchmarks/results/ (and copies of the
#    JSON into OUT_DIR);
# 5. with CIFAR_DATA (train/cifar.py's --data: e.g. the archive copied into a git-ignored folder
#    of the checkout), trains 2 epochs with the step replayed from a CUDA graph (the default on a
#    GPU) and 2 without, side by side (metrics.json of each under OUT_DIR/train-*);
# then prints a summary. Every log is under OUT_DIR. Each step has a time limit so that the
# whole check ends within about 8 minutes; a step that fails or times out is reported and the
# script exits non-zero. Without a GPU it says so and exits 2.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: bash benchmarks/gpu_check.sh OUT_DIR [CIFAR_DATA]" >&2
  exit 2
fi
out=$(mkdir -p "$1" && cd "$1" && pwd)
data=${2:-}
python=${PYTHON:-python}

if ! "$python" -c "import torch" 2>/dev/null; then
  echo "gpu_check.sh: $python cannot import torch (activate the environment that has it)" >&2
  exit 2
fi
if ! "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check.sh: no CUDA device is available (torch.cuda.is_available() is False)" >&2
  exit 2
fi

declare -a summary
status=0
# step NAME SECONDS COMMAND...: runs COMMAND with a time limit, its output in OUT_DIR/NAME.log.
step() {
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  timeout --kill-after=10 "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  local verdict=ok
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then verdict="TIMED OUT after ${limit}s"; status=1
  elif [ $rc -ne 0 ]; then verdict="FAILED (exit $rc)"; status=1; fi
  summary+=("$(printf '%-20s %-24s %4ss  %s' "$name" "$verdict" $((SECONDS - start)) \
    "$(tail -n 1 "$out/$name.log" | cut -c1-90)")")
  return $rc
}

{
  date -u +"date: %Y-%m-%d %H:%M UTC"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo '+dirty')"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  "$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  "$python" -c "import triton; print('triton', triton.__version__)" 2>&1
  nvcc --version | tail -n 1
} >"$out/environment.txt" 2>&1

arch=$("$python" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
step build 240 env TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS="$(nproc)" \
  "$python" -m pip install --no-build-isolation --no-deps -e .

# Every test marked cuda: the cuda and triton backends of the shared matrix, and the GPU-only
# tests.
step tests 240 "$python" -m pytest -q -p no:cacheprovider -m cuda tests

sanitizer=$(command -v compute-sanitizer || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer")
for tool in memcheck racecheck synccheck; do
  timeout --kill-after=10 200 "$sanitizer" --tool "$tool" --error-exitcode 1 \
    "$python" benchmarks/sanitizer_driver.py >"$out/sanitizer-$tool.log" 2>&1 &
done
sanitizer_start=$SECONDS
for tool in memcheck racecheck synccheck; do
  wait -n
done
for tool in memcheck racecheck synccheck; do
  if grep -q "ERROR SUMMARY: 0 errors" "$out/sanitizer-$tool.log" \
      && grep -q "sanitizer_driver.py: done" "$out/sanitizer-$tool.log"; then verdict=ok
  else verdict=FAILED; status=1; fi
  summary+=("$(printf '%-20s %-24s %4ss  %s' "sanitizer-$tool" "$verdict" \
    $((SECONDS - sanitizer_start)) "$(grep 'ERROR SUMMARY' "$out/sanitizer-$tool.log" | tail -n 1)")")
done

before=$(ls benchmarks/results/ 2>/dev/null)
step bench-sampling 210 "$python" benchmarks/bench_sampling.py --device cuda --json \
  --min-run-time 0.2 --note "benchmarks/gpu_check.sh"
step bench-train 90 "$python" benchmarks/bench_train.py --device cuda --json \
  --min-run-time 1.0 --note "benchmarks/gpu_check.sh"
step kernel-resources 30 "$python" benchmarks/kernel_resources.py \
  --json "benchmarks/results/kernels-sm_${arch//./}-$(date -u +%F).json"
if [ -n "$data" ]; then
  for graph in cuda-graph no-cuda-graph; do
    step "train-$graph" 150 "$python" train/cifar.py --device cuda --data "$data" --epochs 2 \
      --no-plots --"$graph" --out "$out/train-$graph"
  done
fi
for f in benchmarks/results/*; do
  if ! grep -qxF "$(basename "$f")" <<<"$before"; then cp "$f" "$out/"; fi
done

{
  echo "stn-ext gpu_check: $(head -n 3 "$out/environment.txt" | tr '\n' ' ')"
  printf '%s\n' "${summary[@]}"
  echo "logs and results: $out"
} | tee "$out/summary.txt"
exit $status
