// AVX2 BT2 kernels (compiled with -mavx2 -mfma; chosen at run time).
//
// One 32-byte run of a packed row holds 128 codes: (byte >> 2s) & 3 gives k = 32s..32s+31,
// so activations stay in natural order. vpmaddubsw multiplies the unsigned codes (0..2) by
// the signed int8 activations and adds pairs into int16 lanes.
#include <immintrin.h>

#include <algorithm>

#include "ternary/bt2.h"
#include "ternary/quantize_x86.h"

namespace bitttt::ternary {
namespace {

using x86::hsum_epi32;

// One vpmaddubsw lane is c0*x0 + c1*x1 with c in [0, 2], x in [-128, 127]: in [-512, 508],
// so one run (4 of them) adds at most 2048 to an int16 lane. Lanes are widened to int32
// every kRunsPerWiden runs: 8 runs for a single token (fewer instructions per weight, and
// the accumulators still fit in registers), every run when several tokens share the tile.
template <int R, int C>
constexpr int64_t kRunsPerWiden = R * C <= 4 ? 8 : 1;
static_assert(kRunsPerWiden<1, 1> * 4 * 512 <= 32767, "int16 partial sums could overflow");
// While a tile reads its rows, it prefetches the same bytes of the next tile's rows (one
// tile ahead: R rows of K/4 bytes): the hardware prefetcher alone leaves a cold,
// DRAM-bound decode GEMV well short of the memory bandwidth.

// dots[i][j] = sum_k code(row i, k) * xq(token j, k) over k in [k0, k1) (multiples of
// kBT2PadK), for R rows x C tokens; x and w point at the starts of token 0 and row 0.
template <int R, int C>
inline void dot_tile(const int8_t* x, int64_t Kp, const uint8_t* w, int64_t row_bytes, int64_t k0, int64_t k1,
                     int32_t dots[R][C]) {
  const __m256i mask = _mm256_set1_epi8(3), ones = _mm256_set1_epi16(1);
  __m256i acc[R][C], acc16[R][C];
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < C; ++j) acc[i][j] = _mm256_setzero_si256();
  const int64_t runs = k1 / kBT2RunK;
  for (int64_t group = k0 / kBT2RunK; group < runs; group += kRunsPerWiden<R, C>) {
    for (int i = 0; i < R; ++i)
      for (int j = 0; j < C; ++j) acc16[i][j] = _mm256_setzero_si256();
    for (int64_t run = group; run < std::min(runs, group + kRunsPerWiden<R, C>); ++run) {
      const uint8_t* wr = w + run * kBT2RunBytes;
      const int8_t* xr = x + run * kBT2RunK;
      for (int i = R; i < 2 * R; ++i) _mm_prefetch(reinterpret_cast<const char*>(wr + i * row_bytes), _MM_HINT_T0);
      for (int i = 0; i < R; ++i) {
        const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr + i * row_bytes));
        const __m256i c0 = _mm256_and_si256(wv, mask);
        const __m256i c1 = _mm256_and_si256(_mm256_srli_epi16(wv, 2), mask);
        const __m256i c2 = _mm256_and_si256(_mm256_srli_epi16(wv, 4), mask);
        const __m256i c3 = _mm256_and_si256(_mm256_srli_epi16(wv, 6), mask);
        for (int j = 0; j < C; ++j) {
          const int8_t* xj = xr + j * Kp;
          const __m256i p01 = _mm256_add_epi16(
              _mm256_maddubs_epi16(c0, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xj))),
              _mm256_maddubs_epi16(c1, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xj + 32))));
          const __m256i p23 = _mm256_add_epi16(
              _mm256_maddubs_epi16(c2, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xj + 64))),
              _mm256_maddubs_epi16(c3, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xj + 96))));
          acc16[i][j] = _mm256_add_epi16(acc16[i][j], _mm256_add_epi16(p01, p23));
        }
      }
    }
    for (int i = 0; i < R; ++i)
      for (int j = 0; j < C; ++j) acc[i][j] = _mm256_add_epi32(acc[i][j], _mm256_madd_epi16(acc16[i][j], ones));
  }
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < C; ++j) dots[i][j] = hsum_epi32(acc[i][j]);
}

// 32-k chunks stay in natural order: a run's shift s reads k = 32s..32s+31.
int64_t chunk_offset(int64_t c) { return c * 32; }

// Prefill tiles are 1 row x 4 tokens: 4 int16 and 4 int32 accumulators, the 4 decoded code
// vectors and the constants fit the 16 ymm registers, so the int16 sums are widened only
// every 8 runs. (2 x 4 tiles needed widening every run and still spilled.)
constexpr int64_t kGemmRows = 1;

#include "ternary/tiles_x86.inc"

}  // namespace

const Bt2Kernels& bt2_kernels_avx2() {
  static const Bt2Kernels kernels{"avx2", quantize_f32, quantize_bf16, layout_int8, matmul};
  return kernels;
}

}  // namespace bitttt::ternary
