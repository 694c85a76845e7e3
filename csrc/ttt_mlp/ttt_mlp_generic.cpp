// Portable build of the TTT-MLP kernels (baseline x86-64 / any CPU: SSE2 or NEON vectorisation).
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>

#include "ttt_mlp/ttt_mlp.h"

namespace bitttt::ttt_mlp::generic {

#define BITTTT_TTT_MLP_ISA_NAME "generic"
#include "ttt_mlp/ttt_mlp_kernels.inc"
#undef BITTTT_TTT_MLP_ISA_NAME

}  // namespace bitttt::ttt_mlp::generic
