#!/usr/bin/env bash
# `make sanitize` (issue 24): the C++ CPU kernels (csrc/) built once more with AddressSanitizer +
# UndefinedBehaviorSanitizer into build/sanitize/ (the normal fresco_kernels/_C*.so is untouched) and the ops' CPU
# tests plus two small whole renders (patch, flow) run against it; then the shipped build under valgrind memcheck on
# every C++ op at small shapes. Any sanitizer report fails the run. Summary lines go to $LOG.
#   PY: the python with torch (default .venv/bin/python); LOG: default build/sanitize/summary.txt
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=build/sanitize
LOG=${LOG:-$OUT/summary.txt}
mkdir -p "$OUT"
: > "$LOG"
note() { echo "$*" | tee -a "$LOG"; }

# 1. the instrumented library: same sources and defines as setup.py, -O1 -g, sanitizers on, abort on the first report
TORCH_VERSION=$($PY -c 'import torch; print(torch.__version__.split("+")[0])')
TORCH_DIR=$($PY -c 'import os, torch; print(os.path.dirname(torch.__file__))')
ABI=$($PY -c 'import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))')
CXX=${CXX:-g++}
SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
for f in csrc/*.cpp; do
    o="$OUT/$(basename "$f" .cpp).o"
    if [ ! -f "$o" ] || [ "$f" -nt "$o" ] || [ csrc/simd.h -nt "$o" ] || [ csrc/bilinear.h -nt "$o" ]; then
        $CXX -c -fPIC -std=c++17 -O1 -g $SAN -fopenmp -D_GLIBCXX_USE_CXX11_ABI=$ABI \
            -DFRESCO_TORCH_VERSION="\"$TORCH_VERSION\"" -DTORCH_EXTENSION_NAME=_C \
            -I"$TORCH_DIR/include" -I"$TORCH_DIR/include/torch/csrc/api/include" "$f" -o "$o" &
    fi
done
wait
$CXX -shared $SAN -fopenmp "$OUT"/*.o -L"$TORCH_DIR/lib" -lc10 -ltorch_cpu -ltorch -o "$OUT/_C_asan.so"
note "built $OUT/_C_asan.so (-fsanitize=address,undefined)"

# 2. the ops' CPU tests and a whole render against it. libasan must be loaded before python's own libraries, and
# libstdc++ with it (else ASan's __cxa_throw interceptor finds no real one when Triton's module throws while it
# loads): LD_PRELOAD both. Leaks are off (the interpreter keeps memory until exit); an UBSan report aborts.
ASAN_ENV=(env FRESCO_C_LIB="$OUT/_C_asan.so"
          LD_PRELOAD="$($CXX -print-file-name=libasan.so) $($CXX -print-file-name=libstdc++.so)"
          ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1:log_path="$OUT/asan"
          UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1:log_path="$OUT/ubsan" PYTHONPATH=. OMP_NUM_THREADS=2)
rm -f "$OUT"/asan.* "$OUT"/ubsan.*
OPS_TESTS="tests/test_patch_synthesis.py tests/test_flow_warp.py tests/test_correspondence.py tests/test_gram_loss.py
           tests/test_warp_loss.py tests/test_trajectory_attention.py"
"${ASAN_ENV[@]}" $PY -c 'import fresco_kernels as fk, os; assert fk.cpu_impls()["patch_synthesis"] == "cpp"
print("loaded", os.environ["FRESCO_C_LIB"], fk.cpu_impls())' | tee -a "$LOG"
# test_no_hw_by_hw_buffer measures peak resident memory, which ASan's shadow memory and quarantine inflate
"${ASAN_ENV[@]}" $PY -m pytest $OPS_TESTS -q -p no:cacheprovider -m "not slow and not cuda" \
    --deselect tests/test_gram_loss.py::test_no_hw_by_hw_buffer 2>&1 \
    | tee "$OUT/ops-tests.log" | tail -3 | tee -a "$LOG"
"${ASAN_ENV[@]}" $PY -m fresco.cli make-clip "$OUT/clip.mp4" --frames 9 --size 64x64
for method in patch flow; do
    "${ASAN_ENV[@]}" HF_HUB_OFFLINE=1 $PY -m fresco.cli render "$OUT/clip.mp4" -o "$OUT/render-$method" \
        --model tiny-random --prompt "a test" --size 64x64 --steps 2 --warmup-steps 0 --interval 4 --opt-iters 1 \
        --propagation $method --overwrite > "$OUT/render-$method.log" 2>&1
    note "whole render ($method propagation) under ASan+UBSan: ok ($(ls "$OUT/render-$method" | tr "\n" " "))"
done
if ls "$OUT"/asan.* "$OUT"/ubsan.* >/dev/null 2>&1; then
    note "sanitizer reports:"; cat "$OUT"/asan.* "$OUT"/ubsan.* | tee -a "$LOG"; exit 1
fi
note "AddressSanitizer + UndefinedBehaviorSanitizer: no reports"

# 3. the shipped build under valgrind memcheck (uninitialised reads, invalid accesses) on every C++ op, small
# shapes; only reports whose stack passes through the fresco kernels count (python and torch have their own noise)
PYTHONPATH=. PYTHONMALLOC=malloc OMP_NUM_THREADS=2 valgrind --tool=memcheck --error-limit=no --num-callers=40 \
    --track-origins=yes --log-file="$OUT/valgrind.log" $PY tools/sanitize_ops.py | tee -a "$LOG"
ours=$(grep -c "fresco::" "$OUT/valgrind.log" || true)
note "valgrind memcheck: $(grep "ERROR SUMMARY" "$OUT/valgrind.log" | tail -1 | sed 's/^==[0-9]*== //') (all" \
     "libraries); reports with a fresco kernel on the stack: $ours"
test "$ours" = 0
