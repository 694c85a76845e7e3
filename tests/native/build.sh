#!/usr/bin/env bash
# Builds the torch-free kernel tests, OUT/test_kernels (BT2 ternary kernels) and OUT/test_ttt
# (TTT-Linear kernels), with the given C++ compiler for the compiler's target: x86-64
# (scalar, avx2, avx512, and amx where the compiler has it; TTT scalar, avx2, avx512) or
# aarch64 (scalar, neon, neon_dotprod; TTT scalar). Language mode and per-file flags are
# CMakeLists.txt's.
#   tests/native/build.sh [CXX] [OUT]      e.g. tests/native/build.sh aarch64-linux-gnu-g++ build/native/aarch64
set -euo pipefail
CXX=${1:-g++}
OUT=${2:-build/native/$("$CXX" -dumpmachine)}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$OUT/obj"
# GCC: -flto=auto as pybind11 builds the extension, so per-file ISA flags must survive
# link-time inlining (the cortex-a53 run under qemu traps any SDOT that leaked out of the
# dotprod file). Clang: no LTO (it would need the gold plugin or lld here).
LTO=-flto=auto
if "$CXX" --version | grep -qi clang; then LTO=; fi
COMMON=(-std=gnu++17 -O3 $LTO -Wall -Wextra -Wno-unused-parameter -I"$ROOT/csrc")
NOFMA=-ffp-contract=off  # the ternary kernel files' epilogue rounds alike in every ISA (CMakeLists.txt)

# "source|flags" relative to csrc/
case $("$CXX" -dumpmachine) in
  x86_64*)
    COMMON+=(-DBITTTT_X86=1)
    TERNARY=("ternary/ternary_linear_avx2.cpp|-mavx2 -mfma -mf16c $NOFMA"
             "ternary/ternary_linear_avx512vnni.cpp|-mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni -mfma -mf16c $NOFMA"
             "ternary/ternary_linear_lut16_avx2.cpp|-mavx2 -mfma -mf16c $NOFMA"
             "ternary/ternary_linear_trit5_avx2.cpp|-mavx2 -mfma -mf16c $NOFMA"
             "ternary/ternary_linear_trit5_avx512.cpp|-mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni -mfma -mf16c $NOFMA")
    TTT=("ttt/ttt_linear_scalar.cpp|-Wno-psabi" "ttt/ttt_linear_avx2.cpp|-mavx2 -mfma -mf16c"
         "ttt/ttt_linear_avx512.cpp|-mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni -mfma -mf16c")
    # The AMX tiles where the compiler takes their flags (CMakeLists.txt's check); they run
    # only where the CPU has AMX and the OS grants it (test_kernels says which).
    if echo 'int main() { return 0; }' | "$CXX" -mamx-tile -mamx-int8 -x c++ -c -o /dev/null - 2>/dev/null; then
      COMMON+=(-DBITTTT_AMX=1)
      TERNARY+=("ternary/ternary_linear_amx.cpp|-mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni -mfma -mf16c -mamx-tile -mamx-int8 $NOFMA")
    fi ;;
  aarch64*)
    COMMON+=(-DBITTTT_ARM64=1)
    TERNARY=("ternary/ternary_linear_neon.cpp|$NOFMA"
             "ternary/ternary_linear_neon_dotprod.cpp|-march=armv8.2-a+dotprod $NOFMA"
             "ternary/ternary_linear_lut16_neon.cpp|$NOFMA")
    TTT=("ttt/ttt_linear_scalar.cpp|-Wno-psabi") ;;
  *) echo "build.sh: unsupported target $("$CXX" -dumpmachine)" >&2; exit 2 ;;
esac
TERNARY+=("ternary/ternary_linear_scalar.cpp|$NOFMA" "ternary/ternary_linear_lut16_scalar.cpp|$NOFMA" "ternary/ternary_linear_trit5_scalar.cpp|$NOFMA" "ternary/dispatch.cpp|" "../tests/native/test_kernels.cpp|")
TTT+=("../tests/native/test_ttt.cpp|")
SHARED=("cpu_features.cpp|")

pids=()
# compile UNIT: csrc/SRC -> OUT/obj/NAME.o, in the background
compile() {
  local src=${1%%|*} flags=${1#*|}
  # shellcheck disable=SC2086  # flags are words
  "$CXX" "${COMMON[@]}" $flags -c "$ROOT/csrc/$src" -o "$OUT/obj/$(basename "${src%.cpp}").o" &
  pids+=($!)
}
objects() { for u in "$@"; do local s=${u%%|*}; echo "$OUT/obj/$(basename "${s%.cpp}").o"; done; }
for unit in "${SHARED[@]}" "${TERNARY[@]}" "${TTT[@]}"; do compile "$unit"; done
for pid in "${pids[@]}"; do wait "$pid"; done
mapfile -t t_objs < <(objects "${SHARED[@]}" "${TERNARY[@]}")
mapfile -t ttt_objs < <(objects "${SHARED[@]}" "${TTT[@]}")
"$CXX" -O3 $LTO "${t_objs[@]}" -o "$OUT/test_kernels"
"$CXX" -O3 $LTO "${ttt_objs[@]}" -o "$OUT/test_ttt"
echo "built $OUT/test_kernels and $OUT/test_ttt ($("$CXX" -dumpmachine))"
