// The trit5 layout (trit5.h): the BT2 -> trit5 repack, and the scalar reference kernel every
// trit5 kernel is tested against (it reads codes through trit5_code, one at a time).
#include <algorithm>

#include "ternary/trit5.h"

namespace bitttt::ternary {
namespace {

void matmul(const int8_t* xq, int64_t Kt, const uint8_t* layout, int64_t m0, int64_t m1, int64_t n0, int64_t n1,
            const Epilogue& ep) {
  const int64_t row_bytes = Kt / kTrit5Digits;
  for (int64_t m = m0; m < m1; ++m) {
    const int8_t* x = xq + m * Kt;
    for (int64_t n = n0; n < n1; ++n) {
      const uint8_t* row = layout + n * row_bytes;
      int32_t dot = 0;
      for (int64_t k = 0; k < Kt; ++k) dot += x[k] * trit5_code(row, k);
      store_output(ep, m, n, dot);
    }
  }
}

}  // namespace

void repack_bt2_to_trit5(const uint8_t* packed, int64_t K, uint8_t* layout, int64_t n0, int64_t n1) {
  const int64_t Kp = bt2_padded_k(K), Kt = trit5_padded_k(K);
  const int64_t in_bytes = Kp / kBT2WeightsPerByte, out_bytes = Kt / kTrit5Digits;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = packed + n * in_bytes;
    uint8_t* out = layout + n * out_bytes;
    for (int64_t block = 0; block < Kt / kTrit5BlockK; ++block) {
      for (int64_t j = 0; j < kTrit5BlockBytes; ++j) {
        int c[kTrit5Digits];
        for (int i = 0; i < kTrit5Digits; ++i) {
          const int64_t k = block * kTrit5BlockK + i * kTrit5BlockBytes + j;
          c[i] = k < Kp ? std::min(bt2_code(row, k), 2) : 1;  // past BT2's padding: weight 0 too
        }
        out[block * kTrit5BlockBytes + j] = trit5_encode(c);
      }
    }
  }
}

const Trit5Kernels& trit5_kernels_scalar() {
  const Bt2Kernels& q = bt2_kernels_scalar();
  static const Trit5Kernels kernels{"scalar", q.quantize_f32, q.quantize_bf16, q.layout_int8, matmul};
  return kernels;
}

}  // namespace bitttt::ternary
