#!/usr/bin/env bash
# Build, test and benchmark bsconv_fused on a GPU machine that has torch, triton, nvcc and ninja but no package
# registry: nothing is downloaded. Leaves everything to commit in benchmarks/results/<card>-<date>/:
#   results.json / results.csv / summary.md / *.png   the full benchmark (python -m bsconv_fused)
#   pytest-benchmark.json                             the regression benchmarks (benchmarks/)
#   static-calibration.json / .log                    every kernel of the fp16 layer suite: measured vs the static
#                                                     model's predicted lower bound (python -m bsconv_fused.bench.static)
#   build.log, tests.log, bench.log                   what happened
# Usage: benchmarks/run_gpu.sh [extra flags for python -m bsconv_fused, e.g. --suites layers --dtypes fp16]
# Environment: PYTHON (default python), SKIP_BUILD=1, SKIP_TESTS=1, MAX_JOBS, TORCH_CUDA_ARCH_LIST, CUDA_HOME.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "run_gpu.sh: no CUDA GPU visible to torch; for the CPU suite run: $PY -m bsconv_fused" >&2
  exit 2
fi
if [ -z "${CUDA_HOME:-}" ]; then
  if [ -x /usr/local/cuda/bin/nvcc ]; then export CUDA_HOME=/usr/local/cuda
  elif command -v nvcc >/dev/null; then export CUDA_HOME="$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")"
  fi
fi
# Build for the card present only (minutes instead of one build per architecture).
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
SLUG=$("$PY" -c "import torch; from bsconv_fused.bench.machine import device_slug, machine_info; print(device_slug(machine_info(torch.device('cuda'))))")
OUT=benchmarks/results/${SLUG}-$(date -u +%Y-%m-%d)
mkdir -p "$OUT"
echo "card: $SLUG | CUDA_HOME=${CUDA_HOME:-unset} | arch $TORCH_CUDA_ARCH_LIST | results in $OUT"

status=0
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  echo "== building the extension against the torch present (no downloads)"
  # --no-index: never reach for a registry; --no-build-isolation: compile against this torch, not a fresh one
  if ! "$PY" -m pip install --no-index --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1; then
    echo "pip install failed (see $OUT/build.log); trying an in-place build"
    "$PY" setup.py build_ext --inplace >>"$OUT/build.log" 2>&1 || { echo "build failed: $OUT/build.log"; status=1; }
  fi
  tail -n 3 "$OUT/build.log"
fi
"$PY" -c "import bsconv_fused as b; [print(f'  {k:<7}{v.available!s:<6}{v.reason}') for k, v in b.available_backends().items()]" \
  | tee -a "$OUT/build.log"

if [ "${SKIP_TESTS:-0}" != 1 ]; then
  echo "== tests on the GPU"
  "$PY" -m pytest tests/ -q -p no:cacheprovider 2>&1 | tee "$OUT/tests.log" | tail -n 5
  [ "${PIPESTATUS[0]}" = 0 ] || { echo "tests failed: $OUT/tests.log"; status=1; }
fi

echo "== static cost model vs measured, per kernel (fp16 layer suite; the first GPU run calibrates the model)"
# each launch timed alone next to its predicted lower bound; a few minutes (compiles + 23 runs per kernel)
timeout 600 "$PY" -m bsconv_fused.bench.static.calibrate --dtypes fp16 --json "$OUT/static-calibration.json" \
  2>&1 | tee "$OUT/static-calibration.log" | tail -n 40
[ "${PIPESTATUS[0]}" = 0 ] || { echo "static calibration failed: $OUT/static-calibration.log"; status=1; }

echo "== regression benchmarks (pytest-benchmark)"
"$PY" -m pytest benchmarks/ -q -p no:cacheprovider --benchmark-json "$OUT/pytest-benchmark.json" \
  >"$OUT/pytest-benchmark.log" 2>&1 || { echo "benchmarks/ failed: $OUT/pytest-benchmark.log"; status=1; }

echo "== full benchmark (python -m bsconv_fused --out $OUT $*)"
"$PY" -m bsconv_fused --out "$OUT" "$@" 2>&1 | tee "$OUT/bench.log"
[ "${PIPESTATUS[0]}" = 0 ] || status=1

echo "results: $OUT (commit this folder; summary in $OUT/summary.md)"
exit $status
