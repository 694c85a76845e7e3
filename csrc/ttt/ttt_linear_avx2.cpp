// TTT-Linear kernels built with -mavx2 -mfma; only called when the CPU has both (run-time check).
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>

#include "ttt/ttt.h"

namespace bitttt::ttt::avx2 {

#define BITTTT_TTT_ISA_NAME "avx2"
#include "ttt/ttt_linear_cpu_kernels.inc"
#undef BITTTT_TTT_ISA_NAME

}  // namespace bitttt::ttt::avx2
