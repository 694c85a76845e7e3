// Portable build of the TTT-Linear kernels (baseline x86-64 / any CPU: SSE2 vectorisation).
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>

#include "ttt/ttt.h"

namespace bitttt::ttt::generic {

#define BITTTT_TTT_ISA_NAME "generic"
#include "ttt/ttt_kernels.inc"
#undef BITTTT_TTT_ISA_NAME

}  // namespace bitttt::ttt::generic
