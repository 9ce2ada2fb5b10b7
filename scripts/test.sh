#!/usr/bin/env bash
# The whole test suite, from a fresh machine: sets up the environment (scripts/setup_env.sh), then runs the tests
# (tests/) and the benchmark smoke tests (benchmarks/, --benchmark-disable: each benchmark runs once, untimed).
# Without a GPU the Triton kernels run in the interpreter and the GPU-only tests skip. Extra args go to pytest.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export BSCONV_SETUP_TESTS=1
# shellcheck source=setup_env.sh
. "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
echo "== running tests"
python -m pytest tests benchmarks --benchmark-disable -ra -q "$@"
