#!/usr/bin/env bash
# Set up everything the project needs, idempotently: a virtual environment, the dependencies, and the compiled
# extension built against the torch in that environment. Sourced by scripts/test.sh and scripts/main.sh.
#
# Knobs: BSCONV_VENV (default .venv in the repo), PYTHON (default python3), and the build knobs of setup.py
# (BSCONV_FUSED_SKIP_BUILD, BSCONV_FUSED_CPU_ONLY, TORCH_CUDA_ARCH_LIST, MAX_JOBS, CUDA_HOME).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${BSCONV_VENV:-$ROOT/.venv}
if [ ! -x "$VENV/bin/python" ]; then
    echo "== creating virtual environment $VENV"
    "${PYTHON:-python3}" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
echo "== installing dependencies"
# plain `torch` is the CUDA build on Linux x86_64 (it carries the CUDA libraries the extension links against and
# pins the triton it wants); `bsconv` is the reference implementation, a test-only oracle, installed without deps.
python -m pip install -q --disable-pip-version-check torch ninja numpy pytest pytest-benchmark matplotlib
python -m pip install -q --disable-pip-version-check --no-deps bsconv==0.4.0
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then
    export CUDA_HOME=/usr/local/cuda
fi
echo "== building bsconv_fused (extension: $( [ "${BSCONV_FUSED_SKIP_BUILD:-0}" = 1 ] && echo skipped || echo yes ))"
MAX_JOBS=${MAX_JOBS:-2} python -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e "$ROOT"
python - <<'PY'
import bsconv_fused
for name, st in bsconv_fused.available_backends().items():
    print(f"   backend {name:7s} {'yes' if st.available else 'no ':3s} {st.reason}")
PY
