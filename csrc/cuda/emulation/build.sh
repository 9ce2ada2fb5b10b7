#!/bin/sh
# Build the host emulation of the kernels (no GPU needed) into ${OUT:-/tmp/bsconv_emu}/emu_test.
set -e
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-/tmp/bsconv_emu}
cuda=${CUDA_HOME:-/usr/local/cuda}
mkdir -p "$out"
for f in forward backward; do python3 "$here/translate.py" "$here/../$f.cu" "$out/$f.emu.cpp"; done
flags="-std=c++20 -O1 -g -pthread -I$here/include -I$here/.. -I$cuda/include -include $here/include/emu_prelude.h -w"
for f in "$out/forward.emu.cpp" "$out/backward.emu.cpp" "$here/emu_runtime.cpp" "$here/emu_test.cpp"; do
  g++ $flags -c "$f" -o "$out/$(basename "$f" .cpp).o" &
done
wait
g++ -pthread "$out"/*.o -o "$out/emu_test"
echo "$out/emu_test"
