// SwiGLU's elementwise middle, silu(gate) * up, forward and backward over rows of h = [gate | up]
// (csrc/train/silu_mul_cpu.cpp; issue 26). One ISA file each (scalar reference, AVX2, AVX-512),
// picked at run time with the ternary kernel set (BITTTT_ISA). All compute
//   s = 1 / (1 + exp(-clamp(g, -80, 80))),  y = (g·s)·u,
//   dg = dy·u·s·(1 + g·(1 − s)),  du = dy·(g·s),
// the SIMD files with a polynomial exp within a few ulp of the scalar file's std::exp.
// The clamp keeps exp finite and normal in every ISA (sigmoid(±80) is 0 or 1 in float32 to
// within 2e-35), so infinities come out the same everywhere: silu(-inf) = -inf.
//
// The TTT layers' output gate, gelu_tanh(g) * y (F.gelu(approximate="tanh")), takes the same
// sigmoid: 0.5·(1 + tanh(u)) = sigmoid(2u) with u = k·(g + c·g³), k = sqrt(2/pi), c = 0.044715, so
//   s = sigmoid(2u),  out = (g·s)·y,
//   dg = dy·y·(s + g·2s(1 − s)·k(1 + 3c·g²)),  dy_in = dy·(g·s).
#pragma once

#include <cstdint>

namespace bitttt::train {

struct SiluMulKernels {
  const char* name;
  // h: n gates then n ups (one row of [gate | up]); y: n outputs.
  void (*forward)(const float* h, float* y, int64_t n);
  // dy: n, h: 2n as above -> dh: 2n (the gates' gradients, then the ups').
  void (*backward)(const float* dy, const float* h, float* dh, int64_t n);
  // gelu_tanh(g) * y over n elements of g, y -> out; its backward -> dg, dy_in.
  void (*gelu_forward)(const float* g, const float* y, float* out, int64_t n);
  void (*gelu_backward)(const float* dy, const float* g, const float* y, float* dg, float* dy_in, int64_t n);
};

constexpr float kGeluK = 0.7978845608028654f;  // sqrt(2 / pi)
constexpr float kGeluC = 0.044715f;

constexpr float kSiluExpClamp = 80.0f;

namespace scalar {
SiluMulKernels silu_mul_kernels();
}
#if defined(BITTTT_X86)
namespace avx2 {
SiluMulKernels silu_mul_kernels();
}
namespace avx512 {
SiluMulKernels silu_mul_kernels();
}
#endif

}  // namespace bitttt::train
