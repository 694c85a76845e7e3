// Exact int8 GEMM for the int8 LM head (bitttt.hf.bitnet.Int8Linear): out [M, N] int32 =
// x [M, K] @ w[N, K].T. At decode (M = 1 token, or bitttt serve's batch of up to 16) it reads
// the whole [V, C] head once per call, so it runs at the memory's speed; torch._int_mm runs such a call compute-bound (2x slower
// on the 2B head). Kernels see raw pointers; checks and threading live in int8_matmul_cpu.cpp.
#pragma once

#include <cstdint>

namespace bitttt::int8 {

// The int32 sums stay exact while K * 128 * 128 < 2^31.
constexpr int64_t kMaxK = (int64_t{1} << 17) - 1;

// Rows [n0, n1) of out for all M tokens of x [M, K]; w is [N, K]; out has row stride ldo.
using MatmulKernel = void (*)(const int8_t* x, int64_t M, int64_t K, const int8_t* w, int64_t n0, int64_t n1,
                              int32_t* out, int64_t ldo);

// Any int8 inputs.

void matmul_scalar(const int8_t* x, int64_t M, int64_t K, const int8_t* w, int64_t n0, int64_t n1, int32_t* out,
                   int64_t ldo);
#if defined(BITTTT_X86)
// x must not hold -128 (vpmaddubsw's signed operand): the entry checks.
void matmul_avx2(const int8_t* x, int64_t M, int64_t K, const int8_t* w, int64_t n0, int64_t n1, int32_t* out,
                 int64_t ldo);
// AVX-512 F/BW + VNNI; any int8 inputs.
void matmul_avx512(const int8_t* x, int64_t M, int64_t K, const int8_t* w, int64_t n0, int64_t n1, int32_t* out,
                   int64_t ldo);
#endif
#if defined(BITTTT_AMX)
constexpr int64_t kAmxMinTokens = 2, kAmxMaxTokens = 16;
// AMX tiles, for kAmxMinTokens..kAmxMaxTokens tokens; any int8 inputs. Takes x in the VNNI layout
// that amx_layout builds (amx_layout_bytes(M, K) bytes), not [M, K].
void matmul_amx(const int8_t* xb, int64_t M, int64_t K, const int8_t* w, int64_t n0, int64_t n1, int32_t* out,
                int64_t ldo);
int64_t amx_layout_bytes(int64_t M, int64_t K);
void amx_layout(const int8_t* x, int64_t M, int64_t K, int8_t* xb);
#endif

}  // namespace bitttt::int8
