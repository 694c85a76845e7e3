// AVX2 lut16 kernels (lut16.h; compiled with -mavx2 -mfma; chosen at run time): the decode
// GEMV by table lookup. Per 32 bytes of weights (16 rows x 8 weights) the loop spends 2
// ANDs, a shift, 4 vpshufb, 4 unpacks and 4 adds, and no multiply: vpshufb and the unpacks
// issue on two ports from Ice Lake and on Zen, where the BT2 multiply-add loop (3 shifts,
// 4 ANDs, 4 vpmaddubsw, 4 activation loads and 4 adds) is compute-bound (issue 25).
#include <immintrin.h>

#include <algorithm>

#include "ternary/lut16.h"
#include "ternary/quantize_x86.h"

namespace bitttt::ternary {
namespace {

// Table entries a * x0 + b * x1 with x in [-128, 127] lie in [-512, 508] for BT2 codes
// a, b <= 2, and in [-768, 762] if a layout holds code 3 (never written by BT2; it reads
// +2 as in every BT2 kernel). Each int16 accumulator lane adds 2 entries per quad, so 16
// quads (128 weights of K) reach at most 32 * 768 = 24576 in magnitude: the lanes are
// widened to int32 every 16 quads and never overflow.
constexpr int64_t kQuadsPerWiden = 16;
static_assert(2 * kQuadsPerWiden * 768 <= 32767, "int16 partial sums could overflow");
static_assert(kBT2PadK % (kQuadsPerWiden * kLut16QuadK) == 0, "Kp holds whole widening blocks");

// Blocks of 16 rows that share each table load: 4 blocks = 64 rows = one task of the op.
constexpr int kTileBlocks = 4;
// Software prefetch distance along each block's stream of weights. The tile reads
// kTileBlocks streams at once; the hardware prefetcher alone leaves a cold GEMV short of
// the memory bandwidth (see ternary_linear_avx2.cpp).
constexpr int64_t kPrefetchBytes = 1024;

// Tables of one token: for quad q, 128 bytes:
//   [L(4q) | L(4q+1)] [H(4q) | H(4q+1)] [L(4q+2) | L(4q+3)] [H(4q+2) | H(4q+3)]
// with L(g), H(g) the low and high bytes of pair g's 16 int16 entries T_g[a | b << 2].
void tables(const int8_t* xq, int64_t Kp, uint8_t* out) {
  const __m256i a_of = _mm256_setr_epi16(0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3);
  const __m256i b_of = _mm256_setr_epi16(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  // Per lane: the 8 low bytes of the 8 int16 entries, then their 8 high bytes.
  const __m256i split = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15,
                                         0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
  // One pair's table as [L(g) | H(g)].
  auto pair_table = [&](const int8_t* x) {
    const __m256i t = _mm256_add_epi16(_mm256_mullo_epi16(a_of, _mm256_set1_epi16(x[0])),
                                       _mm256_mullo_epi16(b_of, _mm256_set1_epi16(x[1])));
    return _mm256_permute4x64_epi64(_mm256_shuffle_epi8(t, split), 0xD8);  // lanes' halves: L, L, H, H
  };
  for (int64_t q = 0; q < Kp / kLut16QuadK; ++q) {
    const int8_t* x = xq + q * kLut16QuadK;
    __m256i* t = reinterpret_cast<__m256i*>(out + q * kLut16QuadK * kLut16TableBytesPerK);
    const __m256i g0 = pair_table(x), g1 = pair_table(x + 2), g2 = pair_table(x + 4), g3 = pair_table(x + 6);
    _mm256_storeu_si256(t + 0, _mm256_permute2x128_si256(g0, g1, 0x20));
    _mm256_storeu_si256(t + 1, _mm256_permute2x128_si256(g0, g1, 0x31));
    _mm256_storeu_si256(t + 2, _mm256_permute2x128_si256(g2, g3, 0x20));
    _mm256_storeu_si256(t + 3, _mm256_permute2x128_si256(g2, g3, 0x31));
  }
}

// dots[16 * B] of B blocks (block_bytes apart, starting at w) against one token's tables.
template <int B>
void dot_blocks(const uint8_t* tab, int64_t Kp, const uint8_t* w, int64_t block_bytes, int32_t* dots) {
  const __m256i nibble = _mm256_set1_epi8(0x0f);
  __m256i acc[B][2];  // int32: rows 0-7 and 8-15 of each block
  for (int i = 0; i < B; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_si256();
  const int64_t quads = Kp / kLut16QuadK;
  for (int64_t q0 = 0; q0 < quads; q0 += kQuadsPerWiden) {
    // int16: lane 0 sums pairs 4q and 4q + 2, lane 1 pairs 4q + 1 and 4q + 3; [0] rows 0-7, [1] rows 8-15.
    __m256i acc16[B][2];
    for (int i = 0; i < B; ++i) acc16[i][0] = acc16[i][1] = _mm256_setzero_si256();
    for (int64_t q = q0; q < q0 + kQuadsPerWiden; ++q) {
      const __m256i* t = reinterpret_cast<const __m256i*>(tab + q * kLut16QuadK * kLut16TableBytesPerK);
      const __m256i lo01 = _mm256_loadu_si256(t), hi01 = _mm256_loadu_si256(t + 1);
      const __m256i lo23 = _mm256_loadu_si256(t + 2), hi23 = _mm256_loadu_si256(t + 3);
      for (int i = 0; i < B; ++i) {
        const uint8_t* wq = w + i * block_bytes + q * kLut16QuadBytes;
        if (q % 2 == 0) _mm_prefetch(reinterpret_cast<const char*>(wq + kPrefetchBytes), _MM_HINT_T0);
        const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wq));
        const __m256i i01 = _mm256_and_si256(wv, nibble);
        const __m256i i23 = _mm256_and_si256(_mm256_srli_epi16(wv, 4), nibble);
        const __m256i l01 = _mm256_shuffle_epi8(lo01, i01), h01 = _mm256_shuffle_epi8(hi01, i01);
        const __m256i l23 = _mm256_shuffle_epi8(lo23, i23), h23 = _mm256_shuffle_epi8(hi23, i23);
        acc16[i][0] = _mm256_add_epi16(acc16[i][0], _mm256_add_epi16(_mm256_unpacklo_epi8(l01, h01),
                                                                     _mm256_unpacklo_epi8(l23, h23)));
        acc16[i][1] = _mm256_add_epi16(acc16[i][1], _mm256_add_epi16(_mm256_unpackhi_epi8(l01, h01),
                                                                     _mm256_unpackhi_epi8(l23, h23)));
      }
    }
    for (int i = 0; i < B; ++i)
      for (int j = 0; j < 2; ++j)
        acc[i][j] = _mm256_add_epi32(
            acc[i][j], _mm256_add_epi32(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(acc16[i][j])),
                                        _mm256_cvtepi16_epi32(_mm256_extracti128_si256(acc16[i][j], 1))));
  }
  for (int i = 0; i < B; ++i) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dots + 16 * i), acc[i][0]);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dots + 16 * i + 8), acc[i][1]);
  }
}

#include "ternary/lut16_tiles.inc"

}  // namespace

const Lut16Kernels& lut16_kernels_avx2() {
  const Bt2Kernels& q = bt2_kernels_avx2();  // natural activation order, AVX2 quantization
  static const Lut16Kernels kernels{"avx2", q.quantize_f32, q.quantize_bf16, q.layout_int8, tables, gemv};
  return kernels;
}

}  // namespace bitttt::ternary
