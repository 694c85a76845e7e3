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
  // The same two passes for the int8 GEMM training forward, also writing the int8 codes:
  // activation_row_int8 returns the token's x_scale = 1 / s (NaN, codes 0, for a non-finite token).
  float (*activation_row_int8)(const float* x, float* out, int8_t* xq, int64_t K);
  void (*weight_rows_int8)(const float* w, float* out, int8_t* q, int64_t K, float sc, int64_t r0, int64_t r1);
  // Rows [r0, r1) of y [M, N] = float(acc) * w_scale * x_scale[m] (+ bias[n]), bias may be null.
  void (*epilogue_rows)(const int32_t* acc, float* y, int64_t N, float w_scale, const float* x_scale,
                        const float* bias, int64_t r0, int64_t r1);
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
