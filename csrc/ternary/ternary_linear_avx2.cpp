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
template <int C>
constexpr int64_t kRunsPerWiden = C == 1 ? 8 : 1;
static_assert(kRunsPerWiden<1> * 4 * 512 <= 32767, "int16 partial sums could overflow");
// While a tile reads its rows, it prefetches the same bytes of the next tile's rows (one
// tile ahead: R rows of K/4 bytes): the hardware prefetcher alone leaves a cold,
// DRAM-bound decode GEMV well short of the memory bandwidth.

// dots[i][j] = sum_k code(row i, k) * xq(token j, k) over the padded K, for R rows x C tokens.
template <int R, int C>
inline void dot_tile(const int8_t* x, int64_t Kp, const uint8_t* w, int64_t row_bytes, int32_t dots[R][C]) {
  const __m256i mask = _mm256_set1_epi8(3), ones = _mm256_set1_epi16(1);
  __m256i acc[R][C], acc16[R][C];
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < C; ++j) acc[i][j] = _mm256_setzero_si256();
  const int64_t runs = Kp / kBT2RunK;
  for (int64_t group = 0; group < runs; group += kRunsPerWiden<C>) {
    for (int i = 0; i < R; ++i)
      for (int j = 0; j < C; ++j) acc16[i][j] = _mm256_setzero_si256();
    for (int64_t run = group; run < std::min(runs, group + kRunsPerWiden<C>); ++run) {
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

// Computes an R x C tile at (n, m) and writes it through the epilogue.
template <int R, int C>
void tile(const int8_t* xq, int64_t Kp, const uint8_t* packed, int64_t m, int64_t n, const Epilogue& ep) {
  const int64_t row_bytes = Kp / kBT2WeightsPerByte;
  int32_t dots[R][C];
  dot_tile<R, C>(xq + m * Kp, Kp, packed + n * row_bytes, row_bytes, dots);
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < C; ++j) store_output(ep, m + j, n + i, dots[i][j]);
}

// Tiles of up to 4 rows x 4 tokens; the block sizes below pick the shape.
using TileFn = void (*)(const int8_t*, int64_t, const uint8_t*, int64_t, int64_t, const Epilogue&);
constexpr TileFn kTiles[4][4] = {
    {tile<1, 1>, tile<1, 2>, tile<1, 3>, tile<1, 4>},
    {tile<2, 1>, tile<2, 2>, tile<2, 3>, tile<2, 4>},
    {tile<3, 1>, tile<3, 2>, tile<3, 3>, tile<3, 4>},
    {tile<4, 1>, tile<4, 2>, tile<4, 3>, tile<4, 4>},
};

// Few tokens (decode): 4 rows per pass share each activation load and stream 4 weight rows.
// Many tokens (prefill): 2 rows x 4 tokens, so each decoded code vector feeds 4 multiplies.
void matmul(const int8_t* xq, int64_t Kp, const uint8_t* packed,
            int64_t m0, int64_t m1, int64_t n0, int64_t n1, const Epilogue& ep) {
  const int64_t rows = (m1 - m0) >= 4 ? 2 : 4;
  for (int64_t m = m0; m < m1; m += 4) {
    const int64_t tokens = std::min<int64_t>(4, m1 - m);
    for (int64_t n = n0; n < n1; n += rows) {
      const int64_t r = std::min(rows, n1 - n);
      if (tokens < 4) {  // decode: one token at a time keeps 4 rows in flight
        for (int64_t j = 0; j < tokens; ++j) kTiles[r - 1][0](xq, Kp, packed, m + j, n, ep);
      } else {
        kTiles[r - 1][tokens - 1](xq, Kp, packed, m, n, ep);
      }
    }
  }
}

int64_t natural_chunk(int64_t c) { return c * 32; }

void quantize_f32(const float* x, int64_t K, int64_t Kp, int8_t* xq, float* x_scale, int32_t* x_sum) {
  x86::quantize_token(x, K, Kp, xq, x_scale, x_sum, natural_chunk);
}
void quantize_bf16(const uint16_t* x, int64_t K, int64_t Kp, int8_t* xq, float* x_scale, int32_t* x_sum) {
  x86::quantize_token(x, K, Kp, xq, x_scale, x_sum, natural_chunk);
}
void layout_int8(const int8_t* x, int64_t K, int64_t Kp, int8_t* xq, int32_t* x_sum) {
  x86::layout_token(x, K, Kp, xq, x_sum, natural_chunk);
}

}  // namespace

const Bt2Kernels& bt2_kernels_avx2() {
  static const Bt2Kernels kernels{"avx2", quantize_f32, quantize_bf16, layout_int8, matmul};
  return kernels;
}

}  // namespace bitttt::ternary
