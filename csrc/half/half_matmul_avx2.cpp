// AVX2 half_matmul (half_matmul.h): 16-bit weights widened to float32 in registers
// (bfloat16: a 16-bit shift; float16: F16C's vcvtph2ps), then FMA against float32 tokens.
// Shaped like the int8 head's kernel (int8_matmul_avx2.cpp) for the decode read: one weight
// row at a time (one address stream), 64 bytes a step into two accumulators per token, a
// software prefetch 1 KiB ahead, and tokens in blocks of up to 4 so a row is read once a block.
#include <immintrin.h>

#include <algorithm>

#include "half/half_matmul.h"

namespace bitttt::half {
namespace {

constexpr int64_t kTokenBlock = 4;
constexpr int64_t kPrefetchBytes = 1024;

// 8 weights at p as float32.
template <Format F>
inline __m256 load8(const uint16_t* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  if constexpr (F == Format::bf16) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  } else {
    return _mm256_cvtph_ps(h);
  }
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// One weight row w [K] against tokens [0, MB) of x: out[m * ldo] for each.
template <Format F, int MB>
void row(const float* x, int64_t K, const uint16_t* w, float* out, int64_t ldo) {
  __m256 acc0[MB], acc1[MB];
  for (int m = 0; m < MB; ++m) acc0[m] = acc1[m] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    // past the row's end it fetches the next row, which comes next
    _mm_prefetch(reinterpret_cast<const char*>(w + k) + kPrefetchBytes, _MM_HINT_T0);
    const __m256 a = load8<F>(w + k), b = load8<F>(w + k + 8);
    const __m256 c = load8<F>(w + k + 16), d = load8<F>(w + k + 24);
    for (int m = 0; m < MB; ++m) {
      const float* xm = x + m * K + k;
      acc0[m] = _mm256_fmadd_ps(a, _mm256_loadu_ps(xm), acc0[m]);
      acc1[m] = _mm256_fmadd_ps(b, _mm256_loadu_ps(xm + 8), acc1[m]);
      acc0[m] = _mm256_fmadd_ps(c, _mm256_loadu_ps(xm + 16), acc0[m]);
      acc1[m] = _mm256_fmadd_ps(d, _mm256_loadu_ps(xm + 24), acc1[m]);
    }
  }
  for (; k + 8 <= K; k += 8) {
    const __m256 a = load8<F>(w + k);
    for (int m = 0; m < MB; ++m) acc0[m] = _mm256_fmadd_ps(a, _mm256_loadu_ps(x + m * K + k), acc0[m]);
  }
  for (int m = 0; m < MB; ++m) {
    float s = hsum(_mm256_add_ps(acc0[m], acc1[m]));
    for (int64_t j = k; j < K; ++j) s += x[m * K + j] * to_float(w[j], F);
    out[m * ldo] = s;
  }
}

template <Format F, int MB>
void block(const float* x, int64_t K, const uint16_t* w, int64_t n0, int64_t n1, float* out, int64_t ldo) {
  for (int64_t n = n0; n < n1; ++n) row<F, MB>(x, K, w + n * K, out + n, ldo);
}

template <Format F>
void matmul(const float* x, int64_t M, int64_t K, const uint16_t* w, int64_t n0, int64_t n1, float* out,
            int64_t ldo) {
  for (int64_t m0 = 0; m0 < M; m0 += kTokenBlock) {
    const float* xb = x + m0 * K;
    float* o = out + m0 * ldo;
    switch (std::min(M - m0, kTokenBlock)) {
      case 1: block<F, 1>(xb, K, w, n0, n1, o, ldo); break;
      case 2: block<F, 2>(xb, K, w, n0, n1, o, ldo); break;
      case 3: block<F, 3>(xb, K, w, n0, n1, o, ldo); break;
      default: block<F, 4>(xb, K, w, n0, n1, o, ldo); break;
    }
  }
}

}  // namespace

void matmul_avx2(const float* x, int64_t M, int64_t K, const uint16_t* w, Format f, int64_t n0, int64_t n1,
                 float* out, int64_t ldo) {
  if (f == Format::bf16) {
    matmul<Format::bf16>(x, M, K, w, n0, n1, out, ldo);
  } else {
    matmul<Format::f16>(x, M, K, w, n0, n1, out, ldo);
  }
}

}  // namespace bitttt::half
