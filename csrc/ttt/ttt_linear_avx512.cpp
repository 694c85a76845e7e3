// TTT-Linear kernels built with the AVX-512 flags: 64-byte vectors (one zmm register) and
// register blocks of 16 accumulators (AVX-512 has 32 vector registers). Only called when
// the CPU runs the "avx512" kernel set (run-time check in ttt_linear_cpu.cpp).
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>

#include "ttt/ttt.h"

namespace bitttt::ttt::avx512 {

#define BITTTT_TTT_ISA_NAME "avx512"
#define BITTTT_TTT_VEC_BYTES 64
#define BITTTT_TTT_ACCS 16
#include "ttt/ttt_linear_cpu_kernels.inc"
#undef BITTTT_TTT_ACCS
#undef BITTTT_TTT_VEC_BYTES
#undef BITTTT_TTT_ISA_NAME

}  // namespace bitttt::ttt::avx512
