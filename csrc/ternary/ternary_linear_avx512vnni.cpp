// AVX-512 VNNI BT2 kernels (compiled with -mavx512{f,bw,vl,dq,vnni}; chosen at run time).
//
// A 64-byte load covers two runs (256 codes): (bytes >> 2s) & 3 gives run 0's
// k = 32s..32s+31 in the low half and run 1's in the high half. Activations are stored in
// that order (chunk_offset below), so one vpdpbusd per shift multiplies unsigned codes
// (0..2) by signed int8 activations and accumulates straight into int32: a lane adds at
// most 4 * 2 * 128 = 1024 per 256 weights, no overflow below K = 2^29.
//
// This file is also compiled a second time against SIMDe's portable intrinsics
// (ternary_linear_avx512vnni_emulated.cpp) so that CPUs without AVX-512 test its logic.
#if !defined(BITTTT_AVX512_EMULATED)
#include <immintrin.h>
#define BITTTT_AVX512_KERNELS bt2_kernels_avx512vnni
#define BITTTT_AVX512_NAME "avx512"
#endif

#include <algorithm>

#include "ternary/bt2.h"
#include "ternary/quantize_x86.h"

namespace bitttt::ternary {
namespace {

constexpr int64_t kPairBytes = 2 * kBT2RunBytes;  // one zmm of packed codes
constexpr int64_t kPairK = 2 * kBT2RunK;
static_assert(kBT2PadK % kPairK == 0, "Kp must hold whole run pairs");

// Natural 32-k chunk c -> its place in a 256-k block: [run0 s0, run1 s0, run0 s1, ...].
int64_t chunk_offset(int64_t c) {
  const int64_t block = c / 8, run = (c % 8) / 4, shift = c % 4;
  return block * kPairK + (shift * 2 + run) * 32;
}

inline int32_t hsum_epi32(__m512i v) {
  return x86::hsum_epi32(_mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1)));
}

// dots[i][j] over k in [k0, k1) (multiples of kBT2PadK), as in the AVX2 kernel.
template <int R, int C>
inline void dot_tile(const int8_t* x, int64_t Kp, const uint8_t* w, int64_t row_bytes, int64_t k0, int64_t k1,
                     int32_t dots[R][C]) {
  const __m512i mask = _mm512_set1_epi8(3);
  __m512i acc[R][C];
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < C; ++j) acc[i][j] = _mm512_setzero_si512();
  for (int64_t p = k0 / kPairK; p < k1 / kPairK; ++p) {
    const uint8_t* wp = w + p * kPairBytes;
    const int8_t* xp = x + p * kPairK;
    // Prefetch the next tile's rows, one tile ahead (see the AVX2 kernel).
    for (int i = R; i < 2 * R; ++i) _mm_prefetch(reinterpret_cast<const char*>(wp + i * row_bytes), _MM_HINT_T0);
    for (int i = 0; i < R; ++i) {
      const __m512i wv = _mm512_loadu_si512(reinterpret_cast<const void*>(wp + i * row_bytes));
      const __m512i c0 = _mm512_and_si512(wv, mask);
      const __m512i c1 = _mm512_and_si512(_mm512_srli_epi16(wv, 2), mask);
      const __m512i c2 = _mm512_and_si512(_mm512_srli_epi16(wv, 4), mask);
      const __m512i c3 = _mm512_and_si512(_mm512_srli_epi16(wv, 6), mask);
      for (int j = 0; j < C; ++j) {
        const int8_t* xj = xp + j * Kp;
        __m512i a = acc[i][j];
        a = _mm512_dpbusd_epi32(a, c0, _mm512_loadu_si512(reinterpret_cast<const void*>(xj)));
        a = _mm512_dpbusd_epi32(a, c1, _mm512_loadu_si512(reinterpret_cast<const void*>(xj + 64)));
        a = _mm512_dpbusd_epi32(a, c2, _mm512_loadu_si512(reinterpret_cast<const void*>(xj + 128)));
        a = _mm512_dpbusd_epi32(a, c3, _mm512_loadu_si512(reinterpret_cast<const void*>(xj + 192)));
        acc[i][j] = a;
      }
    }
  }
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < C; ++j) dots[i][j] = hsum_epi32(acc[i][j]);
}

// Prefill tiles are 4 rows x 4 tokens: 16 zmm accumulators of 32.
constexpr int64_t kGemmRows = 4;
// Serve batches of 5..16 tokens: 2 rows x up to 8 tokens (16 accumulators), each row's
// codes decoded once per 8 tokens (tiles.inc, matmul_few).
constexpr int kFewGroupTokens = 8;

#include "ternary/tiles_x86.inc"

}  // namespace

const Bt2Kernels& BITTTT_AVX512_KERNELS() {
  static const Bt2Kernels kernels{BITTTT_AVX512_NAME, quantize_f32, quantize_bf16, layout_int8,
                                  matmul<kFewGroupTokens>};
  return kernels;
}

}  // namespace bitttt::ternary
