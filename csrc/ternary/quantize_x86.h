// Per-token activation quantization with AVX2, shared by the AVX2 and AVX-512 translation
// units (each compiles it with its own flags). Same rule as bt2.h's activation_scale and the
// scalar kernel: absmax pass, then scale/round-half-even/saturate, summing the int8 codes.
#pragma once

#include <immintrin.h>

#include "ternary/bt2.h"

namespace bitttt::ternary::x86 {
namespace {  // per translation unit: each ISA compiles these with its own flags (see bt2.h)

inline __m256 load8(const float* x) { return _mm256_loadu_ps(x); }
inline __m256 load8(const uint16_t* x) {
  const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}
inline float load1(const float* x) { return *x; }
inline float load1(const uint16_t* x) { return bf16_to_float(*x); }

inline int32_t hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

inline float hmax_ps(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
  return _mm_cvtss_f32(m);
}

// Quantizes x[K] into xq. Chunk c (32 consecutive k) is written at chunk_offset(c): the
// natural order for AVX2, the run-pair interleave for AVX-512. Unwritten padding is zero.
template <typename T, typename ChunkOffset>
void quantize_token(const T* x, int64_t K, int64_t Kp, int8_t* xq, float* x_scale, int32_t* x_sum,
                    ChunkOffset chunk_offset) {
  const __m256 sign = _mm256_set1_ps(-0.0f), zero = _mm256_setzero_ps();
  __m256 vmax = zero, poison = zero;  // poison: NaN once any x is NaN or +-inf (x * 0)
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    const __m256 v = load8(x + k);
    vmax = _mm256_max_ps(vmax, _mm256_andnot_ps(sign, v));
    poison = _mm256_add_ps(poison, _mm256_mul_ps(v, zero));
  }
  float absmax = hmax_ps(vmax), tail_poison = 0.0f;
  for (; k < K; ++k) {
    absmax = std::fmax(absmax, std::fabs(load1(x + k)));
    tail_poison += load1(x + k) * 0.0f;
  }
  alignas(32) float p[8];
  _mm256_store_ps(p, poison);
  std::memset(xq, 0, Kp);
  *x_sum = 0;
  for (float v : p) tail_poison += v;
  if (std::isnan(tail_poison)) {  // defined behaviour: this token's outputs are NaN
    *x_scale = NAN;
    return;
  }
  const float s = activation_scale(absmax);
  const __m256 vs = _mm256_set1_ps(s);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);  // undo the per-lane packs
  __m256i vsum = _mm256_setzero_si256();
  int32_t sum = 0;
  int64_t c = 0;
  for (; (c + 1) * 32 <= K; ++c) {
    const T* xc = x + c * 32;
    // cvtps rounds half to even (default MXCSR), like torch.round; packs saturate to int8.
    const __m256i a = _mm256_cvtps_epi32(_mm256_mul_ps(load8(xc), vs));
    const __m256i b = _mm256_cvtps_epi32(_mm256_mul_ps(load8(xc + 8), vs));
    const __m256i d = _mm256_cvtps_epi32(_mm256_mul_ps(load8(xc + 16), vs));
    const __m256i e = _mm256_cvtps_epi32(_mm256_mul_ps(load8(xc + 24), vs));
    vsum = _mm256_add_epi32(vsum, _mm256_add_epi32(_mm256_add_epi32(a, b), _mm256_add_epi32(d, e)));
    const __m256i q = _mm256_packs_epi16(_mm256_packs_epi32(a, b), _mm256_packs_epi32(d, e));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(xq + chunk_offset(c)), _mm256_permutevar8x32_epi32(q, order));
  }
  for (k = c * 32; k < K; ++k) {  // the last partial chunk
    const float r = std::nearbyint(load1(x + k) * s);
    const int8_t q = static_cast<int8_t>(std::min(127.0f, std::max(-128.0f, r)));
    xq[chunk_offset(c) + (k - c * 32)] = q;
    sum += q;
  }
  *x_scale = 1.0f / s;
  *x_sum = sum + hsum_epi32(vsum);
}

// Copies already-quantized int8 activations into the same chunk layout.
template <typename ChunkOffset>
void layout_token(const int8_t* x, int64_t K, int64_t Kp, int8_t* xq, int32_t* x_sum, ChunkOffset chunk_offset) {
  std::memset(xq, 0, Kp);
  int32_t sum = 0;
  for (int64_t k = 0; k < K; ++k) {
    xq[chunk_offset(k / 32) + k % 32] = x[k];
    sum += x[k];
  }
  *x_sum = sum;
}

}  // namespace
}  // namespace bitttt::ternary::x86
