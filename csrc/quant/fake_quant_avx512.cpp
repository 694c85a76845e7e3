// The fake quantization's row kernels for AVX-512 (16 lanes): fake_quant_kernels.inc.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "quant/fake_quant.h"

#define BITTTT_FAKE_QUANT_ISA "avx512"

namespace bitttt::quant::avx512 {
#include "quant/fake_quant_kernels.inc"
}  // namespace bitttt::quant::avx512
