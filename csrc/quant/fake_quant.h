// The fake quantization's row kernels, one set per ISA file (fake_quant_kernels.inc compiled
// with each file's flags), picked at run time with the ternary kernel set (BITTTT_ISA).
#pragma once

#include <cstdint>

namespace bitttt::quant {

struct FakeQuantKernels {
  const char* name;
  // One token x [K] -> out [K]: per-token int8 absmax quantize-dequantize (x + (dq - x)).
  void (*activation_row)(const float* x, float* out, int64_t K);
  // Rows [r0, r1) of w [N, K] with the absmean scale sc -> out: ternary quantize-dequantize.
  void (*weight_rows)(const float* w, float* out, int64_t K, float sc, int64_t r0, int64_t r1);
};

namespace scalar {
FakeQuantKernels fake_quant_kernels();
}
#if defined(BITTTT_X86)
namespace avx2 {
FakeQuantKernels fake_quant_kernels();
}
namespace avx512 {
FakeQuantKernels fake_quant_kernels();
}
#endif

}  // namespace bitttt::quant
