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

// sigmoid(2u), u = k·(g + c·g³): 0.5·(1 + tanh(u))
inline float gelu_sigmoid(float g) { return sigmoid(2.0f * kGeluK * (g + kGeluC * g * g * g)); }

void gelu_forward(const float* g, const float* y, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = (g[i] * gelu_sigmoid(g[i])) * y[i];
}

void gelu_backward(const float* dy, const float* g, const float* y, float* dg, float* dy_in, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float x = g[i], s = gelu_sigmoid(x);
    const float du = 2.0f * kGeluK * (1.0f + 3.0f * kGeluC * x * x);
    dg[i] = dy[i] * y[i] * (s + x * s * (1.0f - s) * du);
    dy_in[i] = dy[i] * (x * s);
  }
}

}  // namespace

SiluMulKernels silu_mul_kernels() { return {"scalar", &forward, &backward, &gelu_forward, &gelu_backward}; }

}  // namespace bitttt::train::scalar
