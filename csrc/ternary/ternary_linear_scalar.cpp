// Scalar reference kernels for BT2: the simplest correct loops. Every ISA is tested
// against these (and these against the int64 reference in Python).
#include "ternary/bt2.h"

#include <algorithm>

namespace bitttt::ternary {
namespace {

template <typename LoadFloat>
void quantize_scalar(LoadFloat load, int64_t K, int64_t Kp, int8_t* xq, float* x_scale, int32_t* x_sum) {
  float absmax = 0.0f;
  float poison = 0.0f;  // becomes NaN if any x is NaN or +-inf (x * 0)
  for (int64_t k = 0; k < K; ++k) {
    const float v = load(k);
    absmax = std::max(absmax, std::fabs(v));
    poison += v * 0.0f;
  }
  std::memset(xq, 0, Kp);
  *x_sum = 0;
  if (std::isnan(poison)) {  // defined behaviour: this token's outputs are NaN
    *x_scale = NAN;
    return;
  }
  const float s = activation_scale(absmax);
  int32_t sum = 0;
  for (int64_t k = 0; k < K; ++k) {
    const float r = std::nearbyint(load(k) * s);  // round half to even, like torch.round
    const int8_t q = static_cast<int8_t>(std::min(127.0f, std::max(-128.0f, r)));
    xq[k] = q;
    sum += q;
  }
  *x_scale = 1.0f / s;
  *x_sum = sum;
}

void quantize_f32(const float* x, int64_t K, int64_t Kp, int8_t* xq, float* x_scale, int32_t* x_sum) {
  quantize_scalar([x](int64_t k) { return x[k]; }, K, Kp, xq, x_scale, x_sum);
}

void quantize_bf16(const uint16_t* x, int64_t K, int64_t Kp, int8_t* xq, float* x_scale, int32_t* x_sum) {
  quantize_scalar([x](int64_t k) { return bf16_to_float(x[k]); }, K, Kp, xq, x_scale, x_sum);
}

void layout_int8(const int8_t* x, int64_t K, int64_t Kp, int8_t* xq, int32_t* x_sum) {
  std::memset(xq, 0, Kp);
  std::memcpy(xq, x, K);
  int32_t sum = 0;
  for (int64_t k = 0; k < K; ++k) sum += x[k];
  *x_sum = sum;
}

void matmul(const int8_t* xq, int64_t Kp, const uint8_t* packed,
            int64_t m0, int64_t m1, int64_t n0, int64_t n1, const Epilogue& ep) {
  const int64_t row_bytes = Kp / kBT2WeightsPerByte;
  for (int64_t m = m0; m < m1; ++m) {
    const int8_t* x = xq + m * Kp;
    for (int64_t n = n0; n < n1; ++n) {
      const uint8_t* row = packed + n * row_bytes;
      int32_t dot = 0;
      for (int64_t k = 0; k < Kp; ++k) dot += x[k] * bt2_code(row, k);
      store_output(ep, m, n, dot);
    }
  }
}

}  // namespace

const Bt2Kernels& bt2_kernels_scalar() {
  static const Bt2Kernels kernels{"scalar", quantize_f32, quantize_bf16, layout_int8, matmul};
  return kernels;
}

}  // namespace bitttt::ternary
