// float32 [M, N] = x [M, K] @ w[N, K].T for 16-bit float weights (bfloat16 or float16) and
// float32 activations: the float LM head at decode (bitttt.nn.half_linear.HalfLinear). At
// M = 1..4 it reads the whole [V, C] head once per token, so it must run at the memory's speed;
// torch's bf16/fp16 GEMV reached 40-50% of it on the 2B head (4 GB/s of 8.7 on a Xeon).
// Kernels see raw pointers; checks and threading live in half_matmul_cpu.cpp.
#pragma once

#include <cstdint>

namespace bitttt::half {

enum class Format { bf16, f16 };

// Rows [n0, n1) of out for all M tokens of x [M, K]; w is [N, K] 16-bit values of format f;
// out has row stride ldo. Sums in float32; the summation order is the kernel's own.
using MatmulKernel = void (*)(const float* x, int64_t M, int64_t K, const uint16_t* w, Format f, int64_t n0,
                              int64_t n1, float* out, int64_t ldo);

// The scalar reference: one float32 sum per output, in order of k.
void matmul_scalar(const float* x, int64_t M, int64_t K, const uint16_t* w, Format f, int64_t n0, int64_t n1,
                   float* out, int64_t ldo);
#if defined(BITTTT_X86)
void matmul_avx2(const float* x, int64_t M, int64_t K, const uint16_t* w, Format f, int64_t n0, int64_t n1,
                 float* out, int64_t ldo);
#endif

// One 16-bit value as float32 (exact for both formats).
float to_float(uint16_t v, Format f);

}  // namespace bitttt::half
