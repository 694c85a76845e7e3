// The lut16 layout (lut16.h): the BT2 -> lut16 repack, and the scalar reference kernel every
// lut16 kernel is tested against (it reads codes through lut16_code, no tables).
#include <cstring>

#include "ternary/lut16.h"

namespace bitttt::ternary {
namespace {

void no_tables(const int8_t*, int64_t, uint8_t*) {}

void gemv(const int8_t* xq, const uint8_t* /*tables*/, int64_t Kp, const uint8_t* layout, int64_t m, int64_t n0,
          int64_t n1, const Epilogue& ep) {
  const int8_t* x = xq + m * Kp;
  for (int64_t n = n0; n < n1; ++n) {
    int32_t dot = 0;
    for (int64_t k = 0; k < Kp; ++k) dot += x[k] * lut16_code(layout, Kp, n, k);
    store_output(ep, m, n, dot);
  }
}

}  // namespace

void repack_bt2_to_lut16(const uint8_t* packed, int64_t N, int64_t Kp, uint8_t* layout, int64_t n0, int64_t n1) {
  const int64_t row_bytes = Kp / kBT2WeightsPerByte, block_bytes = kLut16Rows * row_bytes;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = packed + n * row_bytes;
    uint8_t* block = layout + n / kLut16Rows * block_bytes;
    const int64_t r = n % kLut16Rows;
    for (int64_t q = 0; q < Kp / kLut16QuadK; ++q) {
      uint8_t bytes[2] = {0, 0};
      for (int64_t j = 0; j < kLut16QuadK; ++j) {
        const int code = n < N ? bt2_code(row, q * kLut16QuadK + j) : 1;  // padding rows: weight 0
        bytes[(j / 2) % 2] |= static_cast<uint8_t>(code << (4 * (j / 4) + 2 * (j % 2)));
      }
      block[q * kLut16QuadBytes + r] = bytes[0];
      block[q * kLut16QuadBytes + 16 + r] = bytes[1];
    }
  }
}

const Lut16Kernels& lut16_kernels_scalar() {
  const Bt2Kernels& q = bt2_kernels_scalar();
  static const Lut16Kernels kernels{"scalar", q.quantize_f32, q.quantize_bf16, q.layout_int8, no_tables, gemv};
  return kernels;
}

}  // namespace bitttt::ternary
