// silu_mul's scalar reference (silu_mul.h): std::exp, one element at a time. The SIMD files are
// tested against it.
#include <algorithm>
#include <cmath>

#include "train/silu_mul.h"

namespace bitttt::train::scalar {
namespace {

inline float sigmoid(float g) {
  const float a = std::min(std::max(-g, -kSiluExpClamp), kSiluExpClamp);  // NaN stays NaN
  return 1.0f / (1.0f + std::exp(a));
}

void forward(const float* h, float* y, int64_t n) {
  const float* u = h + n;
  for (int64_t i = 0; i < n; ++i) y[i] = (h[i] * sigmoid(h[i])) * u[i];
}

void backward(const float* dy, const float* h, float* dh, int64_t n) {
  const float* u = h + n;
  for (int64_t i = 0; i < n; ++i) {
    const float g = h[i], s = sigmoid(g);
    dh[i] = dy[i] * u[i] * s * (1.0f + g * (1.0f - s));
    dh[n + i] = dy[i] * (g * s);
  }
}

}  // namespace

SiluMulKernels silu_mul_kernels() { return {"scalar", &forward, &backward}; }

}  // namespace bitttt::train::scalar
