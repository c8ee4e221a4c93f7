#!/bin/sh
# Compile ggml_matmul_bench.c against a built llama.cpp:  LLAMA_CPP_DIR=/path/to/llama.cpp sh build.sh
# (llama.cpp built with CMake into $LLAMA_CPP_DIR/build with BUILD_SHARED_LIBS=ON; see benchmarks/README.md).
set -e
: "${LLAMA_CPP_DIR:?set LLAMA_CPP_DIR to a llama.cpp source tree built with CMake into build/}"
here=$(cd "$(dirname "$0")" && pwd)
lib=$(dirname "$(find "$LLAMA_CPP_DIR/build" -name 'libggml-base.so' | head -n 1)")
out=${OUT:-$LLAMA_CPP_DIR/build/bin/minimmf_ggml_matmul_bench}
cc -O2 -o "$out" "$here/ggml_matmul_bench.c" -I"$LLAMA_CPP_DIR/ggml/include" \
   -L"$lib" -lggml -lggml-base -lggml-cpu -Wl,-rpath,"$lib" -lm -lpthread
echo "$out"
