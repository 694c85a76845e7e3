// The fake quantization's row kernels for the baseline ISA (SSE2 on x86-64; also every non-x86 build): fake_quant_kernels.inc.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "quant/fake_quant.h"

#define BITTTT_FAKE_QUANT_ISA "scalar"

namespace bitttt::quant::scalar {
#include "quant/fake_quant_kernels.inc"
}  // namespace bitttt::quant::scalar
