// AArch64 NEON lut16 kernels (lut16.h; baseline Armv8-A, chosen at run time with the neon and
// neon_dotprod BT2 sets): the decode GEMV by table lookup with tbl (vqtbl1q_u8), the TL1 idea
// of bitnet.cpp. Per 32 bytes of weights (16 rows x 8 weights) the loop spends 2 ANDs, 2
// shifts, 8 tbl, 8 zips and 8 adds, and no multiply.
//
// Only correctness is checked (qemu, .ci/arm_check): there is no ARM hardware to time on.
#include <arm_neon.h>

#include <algorithm>

#include "ternary/lut16.h"

namespace bitttt::ternary {
namespace {

inline void prefetch(const void* p) {
#if defined(__GNUC__) || defined(__clang__)
  __builtin_prefetch(p);
#endif
}

// Table entries lie in [-768, 762] (see ternary_linear_lut16_avx2.cpp). Each int16 lane here
// adds one entry of each of the quad's 4 pairs, so 8 quads reach at most 32 * 768 = 24576 in
// magnitude: the lanes are widened to int32 every 8 quads and never overflow.
constexpr int64_t kQuadsPerWiden = 8;
static_assert(4 * kQuadsPerWiden * 768 <= 32767, "int16 partial sums could overflow");
static_assert(kBT2PadK % (kQuadsPerWiden * kLut16QuadK) == 0, "Kp holds whole widening blocks");

// Blocks of 16 rows that share each table load: 4 blocks = 64 rows = one task of the op.
constexpr int kTileBlocks = 4;
constexpr int64_t kPrefetchBytes = 1024;  // ahead along each block's stream, as on AVX2

// Tables of one token: for quad q, 128 bytes, L(g) then H(g) for g = 4q .. 4q + 3, with L(g),
// H(g) the low and high bytes of pair g's 16 int16 entries T_g[a | b << 2].
void tables(const int8_t* xq, int64_t Kp, uint8_t* out) {
  const int16x8_t a_of = {0, 1, 2, 3, 0, 1, 2, 3};
  const int16x8_t b_lo = {0, 0, 0, 0, 1, 1, 1, 1}, b_hi = {2, 2, 2, 2, 3, 3, 3, 3};
  for (int64_t g = 0; g < Kp / 2; ++g) {
    const int16x8_t x0 = vdupq_n_s16(xq[2 * g]), x1 = vdupq_n_s16(xq[2 * g + 1]);
    const uint8x16_t t0 = vreinterpretq_u8_s16(vmlaq_s16(vmulq_s16(a_of, x0), b_lo, x1));  // entries 0-7
    const uint8x16_t t1 = vreinterpretq_u8_s16(vmlaq_s16(vmulq_s16(a_of, x0), b_hi, x1));  // entries 8-15
    vst1q_u8(out + 32 * g, vuzp1q_u8(t0, t1));       // low bytes (little-endian lanes)
    vst1q_u8(out + 32 * g + 16, vuzp2q_u8(t0, t1));  // high bytes
  }
}

// The int16 sums of pair g's entries for 16 rows of 4-bit indices: rows 0-7 and 8-15.
inline void add_pair(const uint8_t* table, uint8x16_t idx, int16x8_t& rows0, int16x8_t& rows8) {
  const uint8x16_t lo = vqtbl1q_u8(vld1q_u8(table), idx), hi = vqtbl1q_u8(vld1q_u8(table + 16), idx);
  rows0 = vaddq_s16(rows0, vreinterpretq_s16_u8(vzip1q_u8(lo, hi)));
  rows8 = vaddq_s16(rows8, vreinterpretq_s16_u8(vzip2q_u8(lo, hi)));
}

// dots[16 * B] of B blocks (block_bytes apart, starting at w) against one token's tables.
template <int B>
void dot_blocks(const uint8_t* tab, int64_t Kp, const uint8_t* w, int64_t block_bytes, int32_t* dots) {
  const uint8x16_t nibble = vdupq_n_u8(0x0f);
  int32x4_t acc[B][4];  // rows 0-3, 4-7, 8-11, 12-15 of each block
  for (int i = 0; i < B; ++i)
    for (int j = 0; j < 4; ++j) acc[i][j] = vdupq_n_s32(0);
  const int64_t quads = Kp / kLut16QuadK;
  for (int64_t q0 = 0; q0 < quads; q0 += kQuadsPerWiden) {
    int16x8_t acc16[B][2];  // rows 0-7, 8-15
    for (int i = 0; i < B; ++i) acc16[i][0] = acc16[i][1] = vdupq_n_s16(0);
    for (int64_t q = q0; q < q0 + kQuadsPerWiden; ++q) {
      const uint8_t* t = tab + q * kLut16QuadK * kLut16TableBytesPerK;
      for (int i = 0; i < B; ++i) {
        const uint8_t* wq = w + i * block_bytes + q * kLut16QuadBytes;
        if (q % 2 == 0) prefetch(wq + kPrefetchBytes);
        // Bytes 0-15: pair 4q in the low nibble, 4q + 2 in the high one; bytes 16-31: 4q + 1, 4q + 3.
        const uint8x16_t w0 = vld1q_u8(wq), w1 = vld1q_u8(wq + 16);
        add_pair(t + 0, vandq_u8(w0, nibble), acc16[i][0], acc16[i][1]);
        add_pair(t + 32, vandq_u8(w1, nibble), acc16[i][0], acc16[i][1]);
        add_pair(t + 64, vshrq_n_u8(w0, 4), acc16[i][0], acc16[i][1]);
        add_pair(t + 96, vshrq_n_u8(w1, 4), acc16[i][0], acc16[i][1]);
      }
    }
    for (int i = 0; i < B; ++i)
      for (int j = 0; j < 2; ++j) {
        acc[i][2 * j] = vaddw_s16(acc[i][2 * j], vget_low_s16(acc16[i][j]));
        acc[i][2 * j + 1] = vaddw_high_s16(acc[i][2 * j + 1], acc16[i][j]);
      }
  }
  for (int i = 0; i < B; ++i)
    for (int j = 0; j < 4; ++j) vst1q_s32(dots + 16 * i + 4 * j, acc[i][j]);
}

#include "ternary/lut16_tiles.inc"

}  // namespace

const Lut16Kernels& lut16_kernels_neon() {
  const Bt2Kernels& q = bt2_kernels_neon();  // natural activation order, NEON quantization
  static const Lut16Kernels kernels{"neon", q.quantize_f32, q.quantize_bf16, q.layout_int8, tables, gemv};
  return kernels;
}

}  // namespace bitttt::ternary
