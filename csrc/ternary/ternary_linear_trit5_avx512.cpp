// AVX-512 VNNI trit5 kernels (trit5.h; compiled with the AVX-512 F/BW/VL/DQ/VNNI flags;
// chosen at run time). Per 64 bytes of weights (320 codes), per code digit: 2 unsigned
// compares into masks (t >= 86, t >= 171), 2 masked moves (the digit), 2 adds (the next
// t * 3 mod 256) and one vpdpbusd straight into int32 lanes.
#include <immintrin.h>

#include <algorithm>

#include "ternary/trit5.h"

namespace bitttt::ternary {
namespace {

inline int32_t hsum(__m512i v) { return _mm512_reduce_add_epi32(v); }

// dots[i][j] = sum_k code(row i, k) * xq(token j, k) over Kt, for R rows x C tokens.
template <int R, int C>
inline void dot_tile(const int8_t* x, int64_t Kt, const uint8_t* w, int64_t row_bytes, int32_t dots[R][C]) {
  const __m512i one = _mm512_set1_epi8(1), two = _mm512_set1_epi8(2);
  const __m512i third = _mm512_set1_epi8(86), two_thirds = _mm512_set1_epi8(static_cast<char>(171));
  __m512i acc[R][C];
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < C; ++j) acc[i][j] = _mm512_setzero_si512();
  for (int64_t block = 0; block < Kt / kTrit5BlockK; ++block) {
    const uint8_t* wb = w + block * kTrit5BlockBytes;
    const int8_t* xb = x + block * kTrit5BlockK;
    for (int i = R; i < 2 * R; ++i) _mm_prefetch(reinterpret_cast<const char*>(wb + i * row_bytes), _MM_HINT_T0);
    for (int i = 0; i < R; ++i) {
      __m512i t = _mm512_loadu_si512(wb + i * row_bytes);
      for (int d = 0; d < kTrit5Digits; ++d) {
        const __mmask64 ge1 = _mm512_cmpge_epu8_mask(t, third), ge2 = _mm512_cmpge_epu8_mask(t, two_thirds);
        const __m512i c = _mm512_mask_mov_epi8(_mm512_maskz_mov_epi8(ge1, one), ge2, two);
        for (int j = 0; j < C; ++j)
          acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], c, _mm512_loadu_si512(xb + j * Kt + d * kTrit5BlockBytes));
        if (d + 1 < kTrit5Digits) t = _mm512_add_epi8(t, _mm512_add_epi8(t, t));
      }
    }
  }
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < C; ++j) dots[i][j] = hsum(acc[i][j]);
}

constexpr int kDecodeRows = 4;

#include "ternary/trit5_tiles.inc"

}  // namespace

const Trit5Kernels& trit5_kernels_avx512() {
  const Bt2Kernels& q = bt2_kernels_avx2();  // natural-order activations (the AVX-512 set interleaves)
  static const Trit5Kernels kernels{"avx512", q.quantize_f32, q.quantize_bf16, q.layout_int8, matmul};
  return kernels;
}

}  // namespace bitttt::ternary
