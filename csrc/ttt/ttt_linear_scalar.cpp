// Portable build of the TTT-Linear kernels (baseline x86-64 / any CPU: SSE2 vectorisation;
// NEON on AArch64), the "scalar" kernel set of BITTTT_ISA / set_isa.
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>

#include "ttt/ttt.h"

namespace bitttt::ttt::scalar {

#define BITTTT_TTT_ISA_NAME "scalar"
#include "ttt/ttt_linear_cpu_kernels.inc"
#undef BITTTT_TTT_ISA_NAME

}  // namespace bitttt::ttt::scalar
