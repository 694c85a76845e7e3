// AVX2 trit5 kernels (trit5.h; compiled with -mavx2 -mfma; chosen at run time).
//
// Per 32 bytes of weights (160 codes): one XOR, then per code digit 2 compares, an add and
// an abs (the digit), 2 adds (the next *3), a vpmaddubsw and its add. The *3 and the
// compares work on s = t - 128 (mod 256): s also triples mod 256 from digit to digit, and
// the signed compares s > -43 and s > 42 are t >= 86 and t >= 171, whose sum is the digit.
#include <immintrin.h>

#include <algorithm>

#include "ternary/quantize_x86.h"
#include "ternary/trit5.h"

namespace bitttt::ternary {
namespace {

using x86::hsum_epi32;

// The 5 codes (0..2 as unsigned bytes) of 32 trit5 bytes; c[i] holds digit i.
inline void decode(__m256i bytes, __m256i c[kTrit5Digits]) {
  const __m256i bias = _mm256_set1_epi8(-128), one_third = _mm256_set1_epi8(-43), two_thirds = _mm256_set1_epi8(42);
  __m256i s = _mm256_xor_si256(bytes, bias);
  for (int i = 0; i < kTrit5Digits; ++i) {
    const __m256i sum = _mm256_add_epi8(_mm256_cmpgt_epi8(s, one_third), _mm256_cmpgt_epi8(s, two_thirds));
    c[i] = _mm256_abs_epi8(sum);  // (-1) + (-1) -> 2
    if (i + 1 < kTrit5Digits) s = _mm256_add_epi8(s, _mm256_add_epi8(s, s));
  }
}

// dots[i][j] = sum_k code(row i, k) * xq(token j, k) over Kt, for R rows x C tokens; w points at
// row 0, x at token 0. One vpmaddubsw lane is at most 2 * 2 * 128 = 512 in magnitude; a block
// adds 10 of them per int16 lane (5120), widened to int32 after every block.
template <int R, int C>
inline void dot_tile(const int8_t* x, int64_t Kt, const uint8_t* w, int64_t row_bytes, int32_t dots[R][C]) {
  static_assert(2 * kTrit5Digits * 512 <= 32767, "int16 partial sums could overflow");
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i acc[R][C];
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < C; ++j) acc[i][j] = _mm256_setzero_si256();
  for (int64_t block = 0; block < Kt / kTrit5BlockK; ++block) {
    const uint8_t* wb = w + block * kTrit5BlockBytes;
    const int8_t* xb = x + block * kTrit5BlockK;
    // The same bytes of the next tile's rows: the hardware prefetcher alone leaves a cold
    // GEMV short of the memory bandwidth (see ternary_linear_avx2.cpp).
    for (int i = R; i < 2 * R; ++i) _mm_prefetch(reinterpret_cast<const char*>(wb + i * row_bytes), _MM_HINT_T0);
    for (int i = 0; i < R; ++i) {
      __m256i acc16[C];
      for (int j = 0; j < C; ++j) acc16[j] = _mm256_setzero_si256();
      for (int half = 0; half < 2; ++half) {
        __m256i c[kTrit5Digits];
        decode(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + i * row_bytes + 32 * half)), c);
        for (int d = 0; d < kTrit5Digits; ++d)
          for (int j = 0; j < C; ++j) {
            const __m256i xv =
                _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb + j * Kt + d * kTrit5BlockBytes + 32 * half));
            acc16[j] = _mm256_add_epi16(acc16[j], _mm256_maddubs_epi16(c[d], xv));
          }
      }
      for (int j = 0; j < C; ++j) acc[i][j] = _mm256_add_epi32(acc[i][j], _mm256_madd_epi16(acc16[j], ones));
    }
  }
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < C; ++j) dots[i][j] = hsum_epi32(acc[i][j]);
}

constexpr int kDecodeRows = 4;

#include "ternary/trit5_tiles.inc"

}  // namespace

const Trit5Kernels& trit5_kernels_avx2() {
  const Bt2Kernels& q = bt2_kernels_avx2();  // natural-order activations
  static const Trit5Kernels kernels{"avx2", q.quantize_f32, q.quantize_bf16, q.layout_int8, matmul};
  return kernels;
}

}  // namespace bitttt::ternary
