#!/usr/bin/env bash
# The main job, from a fresh machine: sets up the environment (scripts/setup_env.sh), then runs
# `python -m bsconv_fused`: the backend report, the parity check of every backend present, and the benchmark on the
# best device present (GPU, else the CPU contenders plus the Triton traffic report). Extra args go to the CLI
# (e.g. --quick).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=setup_env.sh
. "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
python -m bsconv_fused "$@"
