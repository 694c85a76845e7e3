// TTT-MLP kernels built with -mavx2 -mfma; only called when the CPU has both (run-time check).
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>

#include "ttt_mlp/ttt_mlp.h"

namespace bitttt::ttt_mlp::avx2 {

#define BITTTT_TTT_MLP_ISA_NAME "avx2"
#include "ttt_mlp/ttt_mlp_kernels.inc"
#undef BITTTT_TTT_MLP_ISA_NAME

}  // namespace bitttt::ttt_mlp::avx2
