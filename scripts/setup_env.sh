#!/usr/bin/env bash
# Set up everything the project needs, idempotently: a virtual environment, the dependencies, and the compiled
# extension built against the torch in that environment. Sourced by scripts/test.sh and scripts/main.sh.
#
# Each step says what it does and how long it took. A stamp in the venv records what the last successful setup
# installed and built from (torch flavour and version, arch list, build knobs, a hash of setup.py and csrc/): when
# nothing changed, the next run skips straight to the end (seconds); a changed source rebuilds the extension only.
#
# Knobs:
#   BSCONV_VENV        the venv (default .venv in the repo); PYTHON: the interpreter that creates it (python3)
#   BSCONV_TORCH       cpu | cuda | auto (default). auto: the CUDA build of torch when a GPU is visible
#                      (nvidia-smi) or BSCONV_FUSED_FORCE_CUDA=1, the CPU build otherwise. The CPU build of torch is
#                      ~0.7 GB and builds the CPU extension in minutes; the CUDA build is ~5.5 GB and compiles the
#                      CUDA kernels for every arch in TORCH_CUDA_ARCH_LIST (tens of minutes on 2 cores).
#   BSCONV_TORCH_CPU   the pip requirement of the CPU flavour (default torch==2.13.0, the CPU wheel in this
#                      project's pip find-links; elsewhere e.g. "torch --index-url https://download.pytorch.org/whl/cpu")
#   BSCONV_TORCH_CUDA  the pip requirement of the CUDA flavour (default torch: PyPI's Linux wheel is the CUDA build)
#   BSCONV_SETUP_LOG   where the full pip/compiler output goes (default $VENV/setup.log)
#   BSCONV_SETUP_TESTS 1: also the test dependencies (scripts/test.sh sets it; the main job does not need them)
#   the build knobs of setup.py: BSCONV_FUSED_SKIP_BUILD, BSCONV_FUSED_CPU_ONLY, BSCONV_FUSED_FORCE_CUDA,
#   BSCONV_FUSED_FORCE_BUILD, TORCH_CUDA_ARCH_LIST, MAX_JOBS, CUDA_HOME.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${BSCONV_VENV:-$ROOT/.venv}
SETUP_T0=$SECONDS

step() { echo "== [setup $((SECONDS - SETUP_T0))s] $*"; }
flag() { case "${1:-}" in 1|true|yes|on) return 0;; *) return 1;; esac; }

# ---------------------------------------------------------------------------------------------- torch flavour
FLAVOUR=${BSCONV_TORCH:-auto}
case "$FLAVOUR" in
    auto)
        if flag "${BSCONV_FUSED_FORCE_CUDA:-}" || { command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -q GPU; }; then
            FLAVOUR=cuda
        else
            FLAVOUR=cpu
        fi
        step "BSCONV_TORCH=auto -> $FLAVOUR ($( [ "$FLAVOUR" = cuda ] && echo "a GPU is visible or BSCONV_FUSED_FORCE_CUDA=1" || echo "no GPU visible: CPU build of torch, CPU extension" ))";;
    cpu|cuda) step "BSCONV_TORCH=$FLAVOUR";;
    *) echo "setup_env.sh: BSCONV_TORCH must be cpu, cuda or auto, got '$FLAVOUR'" >&2; exit 2;;
esac
TORCH_REQ=$( [ "$FLAVOUR" = cuda ] && echo "${BSCONV_TORCH_CUDA:-torch}" || echo "${BSCONV_TORCH_CPU:-torch==2.13.0}" )
if [ "$FLAVOUR" = cpu ] && [ -z "${BSCONV_FUSED_CPU_ONLY:-}" ]; then
    export BSCONV_FUSED_CPU_ONLY=1  # a CPU torch has no CUDA to build against anyway; say it explicitly
fi
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then
    export CUDA_HOME=/usr/local/cuda
fi

if [ ! -x "$VENV/bin/python" ]; then
    step "creating virtual environment $VENV"
    "${PYTHON:-python3}" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
LOG=${BSCONV_SETUP_LOG:-$VENV/setup.log}
: >"$LOG"
PIP=(python -m pip --disable-pip-version-check)

# The pip output streams to the terminal one line per package (no -q silence); compiler noise goes to the log.
pip_step() {
    local what=$1; shift
    step "$what"
    local t0=$SECONDS rc
    set +e
    "${PIP[@]}" install --progress-bar off "$@" 2>&1 | tee -a "$LOG" \
        | grep --line-buffered -E '^(Collecting|Downloading|Installing collected|Successfully|ERROR)' \
        | sed -u 's/^/     /'
    rc=${PIPESTATUS[0]}
    set -e
    if [ "$rc" != 0 ]; then
        echo "setup_env.sh: '$what' failed; the full output is in $LOG" >&2
        exit 1
    fi
    step "$what: done in $((SECONDS - t0)) s"
}

# "cpu", "cuda" or "none": the build of torch in the venv now, found without importing it (an import of torch takes
# seconds, and a no-op setup should take about as long as one)
installed_flavour() {
    python - <<'PY'
import importlib.util, os
spec = importlib.util.find_spec("torch")
if spec is None or not spec.submodule_search_locations:
    print("none")
else:
    lib = os.path.join(list(spec.submodule_search_locations)[0], "lib")
    print("cuda" if any(f.startswith("libtorch_cuda") for f in os.listdir(lib)) else "cpu")
PY
}

# ---------------------------------------------------------------------------------------------- stamps
# Two groups: what the package and the main job need, and what the tests add (pytest, the Triton interpreter the
# kernel tests run in, the reference package). scripts/test.sh asks for both (BSCONV_SETUP_TESTS=1).
CORE_DEPS=(ninja numpy matplotlib "setuptools>=77")
# the CUDA torch pins the triton it wants: keep that one; next to the CPU torch, any release the code supports
TEST_DEPS=(pytest pytest-benchmark hypothesis "$( [ "$FLAVOUR" = cuda ] && echo triton || echo 'triton>=3.6,<3.10')")
pyver() { python -c 'import sys; print(sys.version.split()[0])'; }
core_key() { printf '%s|%s|%s|%s' "$FLAVOUR" "$TORCH_REQ" "${CORE_DEPS[*]}" "$(pyver)"; }
test_key() { printf '%s|%s|%s' "$(core_key)" "${TEST_DEPS[*]}" "bsconv==0.4.0"; }
build_key() {
    python - <<'PY'
import hashlib, os, sys
root = os.environ["BSCONV_ROOT"]
h = hashlib.sha256()
for d, _, files in sorted(os.walk(os.path.join(root, "csrc"))):
    for f in sorted(files):
        p = os.path.join(d, f)
        h.update(p[len(root):].encode()); h.update(open(p, "rb").read())
for f in ("setup.py", "pyproject.toml"):
    h.update(open(os.path.join(root, f), "rb").read())
from importlib import metadata
try:
    tv = f"torch {metadata.version('torch')} {os.environ.get('BSCONV_SETUP_HAVE_TORCH', '')}"  # version and build, without the import
except metadata.PackageNotFoundError:
    tv = "no torch"
knobs = [f"{k}={os.environ.get(k, '')}" for k in ("BSCONV_FUSED_SKIP_BUILD", "BSCONV_FUSED_CPU_ONLY",
         "BSCONV_FUSED_FORCE_CUDA", "BSCONV_FUSED_FORCE_BUILD", "TORCH_CUDA_ARCH_LIST", "CUDA_HOME", "CXX")]
print(h.hexdigest()[:16], tv, root, *knobs)
PY
}
CORE_STAMP=$VENV/.bsconv_fused-core.stamp
TEST_STAMP=$VENV/.bsconv_fused-test.stamp
BUILD_STAMP=$VENV/.bsconv_fused-build.stamp

# ---------------------------------------------------------------------------------------------- dependencies
HAVE=$(installed_flavour)
if [ -f "$CORE_STAMP" ] && [ "$(cat "$CORE_STAMP")" = "$(core_key)" ] && [ "$HAVE" = "$FLAVOUR" ]; then
    step "torch and the package's dependencies: unchanged since the last setup"
else
    if [ "$HAVE" != none ] && [ "$HAVE" != "$FLAVOUR" ]; then
        step "removing the installed torch: it is the $HAVE build, BSCONV_TORCH asks for $FLAVOUR"
        "${PIP[@]}" uninstall -y torch triton >>"$LOG" 2>&1 || true
        rm -f "$TEST_STAMP"
    fi
    # shellcheck disable=SC2086
    pip_step "installing torch ($FLAVOUR build: $TORCH_REQ)" $TORCH_REQ
    pip_step "installing the build and plotting dependencies" "${CORE_DEPS[@]}"
    core_key >"$CORE_STAMP"
    rm -f "$BUILD_STAMP"  # a new torch needs a new build
fi
if flag "${BSCONV_SETUP_TESTS:-0}"; then
    if [ -f "$TEST_STAMP" ] && [ "$(cat "$TEST_STAMP")" = "$(test_key)" ]; then
        step "test dependencies: unchanged since the last setup"
    else
        # triton: the CUDA torch pins the one it wants (already installed, so this keeps it); the CPU torch brings
        # none, and the tests run the Triton kernels through its interpreter. bsconv is the reference
        # implementation, a test-only oracle, installed without its dependencies.
        pip_step "installing the test dependencies (pytest, hypothesis, triton for its interpreter)" "${TEST_DEPS[@]}"
        pip_step "installing the reference package bsconv 0.4.0 (test oracle)" --no-deps bsconv==0.4.0
        test_key >"$TEST_STAMP"
    fi
fi

# ---------------------------------------------------------------------------------------------- the build
export BSCONV_ROOT=$ROOT
export BSCONV_SETUP_HAVE_TORCH=$(installed_flavour)
installed_here() {  # the editable install of this checkout is what `import bsconv_fused` finds
    python -c "import importlib.util, os, sys; s = importlib.util.find_spec('bsconv_fused'); \
sys.exit(0 if s and os.path.dirname(os.path.dirname(s.origin)) == sys.argv[1] else 1)" "$ROOT" 2>/dev/null
}
if [ -f "$BUILD_STAMP" ] && [ "$(cat "$BUILD_STAMP")" = "$(build_key)" ] && installed_here; then
    step "bsconv_fused: sources, torch and build knobs unchanged since the last build (stamp $BUILD_STAMP)"
else
    if flag "${BSCONV_FUSED_SKIP_BUILD:-}"; then
        what="pure Python, BSCONV_FUSED_SKIP_BUILD=1"
    elif flag "${BSCONV_FUSED_CPU_ONLY:-}"; then
        what="CPU extension (OpenMP kernels), typically 2-5 minutes on 2 cores"
    else
        what="CUDA + CPU extension for TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-<setup.py default>}, 10-40 minutes on 2 cores"
    fi
    step "building bsconv_fused ($what); compiler output in $LOG"
    t0=$SECONDS
    # -v: setup.py's own messages (what it builds, or why it installs pure Python) only reach the log that way;
    # the lines worth seeing (its messages and ninja's [n/m] progress) are echoed.
    set +e
    MAX_JOBS=${MAX_JOBS:-2} "${PIP[@]}" install -v --no-build-isolation --no-deps -e "$ROOT" 2>&1 | tee -a "$LOG" \
        | grep --line-buffered -E 'bsconv_fused setup:|^\s*\[[0-9]+/[0-9]+\]|Successfully installed|^ERROR' \
        | sed -u -E 's/^\s*(\[[0-9]+\/[0-9]+\]) .* -c ([^ ]*) .*/     \1 compiling \2/; s/^\s*(\[[0-9]+\/[0-9]+\]) c\+\+ .*/     \1 linking/; s/^\s*bsconv_fused setup:/     bsconv_fused setup:/'
    rc=${PIPESTATUS[0]}
    set -e
    if [ "$rc" != 0 ]; then
        echo "setup_env.sh: the install of bsconv_fused failed (exit $rc); the full output is in $LOG" >&2
        tail -n 20 "$LOG" >&2
        exit 1
    fi
    if [ -f "$ROOT/bsconv_fused/_build_failed.txt" ]; then
        rm -f "$BUILD_STAMP"  # installed as pure Python: try the build again next time
    else
        build_key >"$BUILD_STAMP"
    fi
    step "bsconv_fused installed in $((SECONDS - t0)) s"
fi
python - <<'PY'
import bsconv_fused
for name, st in bsconv_fused.available_backends().items():
    print(f"   backend {name:7s} {'yes' if st.available else 'no ':3s} {st.reason}")
PY
step "setup complete"
