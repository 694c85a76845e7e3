// AVX2 int8 GEMM on vpmaddubsw, 32 multiply-adds per instruction: it multiplies unsigned by
// signed bytes, so the weight's sign moves onto the token (|w| * sign(x, w) = w * x) and its
// pairs of products, at most 2 * 128 * 127 = 32512, fit int16 exactly. That needs x > -128
// (sign(-128) would stay -128); the entry runs the scalar kernel for a token holding -128.
//
// At decode this reads the weights once from DRAM, so the loop is shaped for the read: one
// row at a time (a single address stream; two interleaved rows read 35% slower on a Zen 2
// EPYC), 64 bytes a step into two accumulators per token, and a software prefetch 1 KiB ahead
// (+10% there). Tokens go in blocks of up to 4, so a row is read once per block.
#include <immintrin.h>

#include <algorithm>

#include "int8/int8_matmul.h"

namespace bitttt::int8 {
namespace {

constexpr int64_t kTokenBlock = 4;
constexpr int64_t kPrefetchBytes = 1024;

inline int32_t hsum(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(s);
}

inline __m256i load32(const int8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }

// acc += w * x over 32 bytes, in int32 lanes (vpmaddwd by ones sums the int16 pairs).
inline __m256i dot32(__m256i acc, __m256i w_abs, __m256i w, __m256i x, __m256i ones) {
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(w_abs, _mm256_sign_epi8(x, w)), ones));
}

// One weight row w [K] against tokens [0, MB) of x (MB <= 4): out[m * ldo] for each.
template <int MB>
void row(const int8_t* x, int64_t K, const int8_t* w, int32_t* out, int64_t ldo) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i acc0[MB], acc1[MB];
  for (int m = 0; m < MB; ++m) acc0[m] = acc1[m] = _mm256_setzero_si256();
  int64_t k = 0;
  for (; k + 64 <= K; k += 64) {
    // past the row's end it fetches the next row, which comes next
    _mm_prefetch(reinterpret_cast<const char*>(w + k + kPrefetchBytes), _MM_HINT_T0);
    const __m256i a = load32(w + k), b = load32(w + k + 32);
    const __m256i a_abs = _mm256_abs_epi8(a), b_abs = _mm256_abs_epi8(b);
    for (int m = 0; m < MB; ++m) {
      acc0[m] = dot32(acc0[m], a_abs, a, load32(x + m * K + k), ones);
      acc1[m] = dot32(acc1[m], b_abs, b, load32(x + m * K + k + 32), ones);
    }
  }
  if (k + 32 <= K) {
    const __m256i a = load32(w + k), a_abs = _mm256_abs_epi8(a);
    for (int m = 0; m < MB; ++m) acc0[m] = dot32(acc0[m], a_abs, a, load32(x + m * K + k), ones);
    k += 32;
  }
  for (int m = 0; m < MB; ++m) {
    int32_t s = hsum(_mm256_add_epi32(acc0[m], acc1[m]));
    for (int64_t j = k; j < K; ++j) s += int32_t{x[m * K + j]} * int32_t{w[j]};
    out[m * ldo] = s;
  }
}

template <int MB>
void block(const int8_t* x, int64_t K, const int8_t* w, int64_t n0, int64_t n1, int32_t* out, int64_t ldo) {
  for (int64_t n = n0; n < n1; ++n) row<MB>(x, K, w + n * K, out + n, ldo);
}

}  // namespace

void matmul_avx2(const int8_t* x, int64_t M, int64_t K, const int8_t* w, int64_t n0, int64_t n1, int32_t* out,
                 int64_t ldo) {
  for (int64_t m0 = 0; m0 < M; m0 += kTokenBlock) {
    const int8_t* xb = x + m0 * K;
    int32_t* o = out + m0 * ldo;
    switch (std::min(M - m0, kTokenBlock)) {
      case 1: block<1>(xb, K, w, n0, n1, o, ldo); break;
      case 2: block<2>(xb, K, w, n0, n1, o, ldo); break;
      case 3: block<3>(xb, K, w, n0, n1, o, ldo); break;
      default: block<4>(xb, K, w, n0, n1, o, ldo); break;
    }
  }
}

}  // namespace bitttt::int8
