// "lut16": a load-time layout of BT2 weights for lookup-table GEMV kernels (T-MAC, bitnet.cpp
// TL1 idea), and the interface of its kernels. Built from BT2 (docs/design.md §2) once per
// weight; never written to disk.
//
// Idea: per token, tabulate for every pair of activations (x[2g], x[2g+1]) the 16 sums
//   T_g[a | b << 2] = a * x[2g] + b * x[2g+1]      (a, b: BT2 codes 0..2; 3 never occurs)
// as int16, split into a low-byte and a high-byte table of 16 bytes each. A weight pair is
// then a 4-bit index, and vpshufb (AVX2) or tbl (NEON) looks up 32 rows' partial sums at once:
// one lookup replaces two multiply-adds and the code decoding.
//
// Layout: rows in blocks of kLut16Rows = 16 (N padded to Np, a multiple of 16, with code 1);
// each block holds Kp / 8 "quads" of 32 bytes, one quad = 16 rows x 8 weights (k = 8q..8q+7):
//   byte (h * 16 + r) of quad q, h in {0, 1}, row r of the block:
//     low nibble  = code(k = 8q + 2h) | code(k = 8q + 2h + 1) << 2
//     high nibble = code(k = 8q + 4 + 2h) | code(k = 8q + 5 + 2h) << 2
// so the low 16 bytes (one 128-bit lane) hold pairs g = 4q and 4q + 2, the high ones pairs
// 4q + 1 and 4q + 3: a 256-bit lookup uses pair 4q's table in its low lane and 4q + 1's in
// its high lane. Still 2 bits per weight: a block is 16 * Kp / 4 bytes, as the 16 BT2 rows.
// Memory: (Np - N) * Kp / 4 bytes more than BT2 (at most 15 rows).
//
// Tables of one token (kernel-specific bytes, kLut16TableBytesPerK per k): the kernels' dot
// products are sum_k x_q[k] * code[k] as for BT2 (bt2.h), so the BT2 epilogue applies unchanged.
#pragma once

#include <cstdint>

#include "ternary/bt2.h"

namespace bitttt::ternary {

constexpr int64_t kLut16Rows = 16;               // rows per block
constexpr int64_t kLut16QuadK = 8;               // weights of K per quad
constexpr int64_t kLut16QuadBytes = 32;          // bytes per quad (16 rows x 8 weights x 2 bits)
constexpr int64_t kLut16TableBytesPerK = 16;     // 128 table bytes per quad (4 pairs x 2 x 16)
static_assert(kLut16QuadBytes * 8 == kLut16Rows * kLut16QuadK * 2, "a quad is 2 bits per weight");
static_assert(kBT2PadK % kLut16QuadK == 0, "Kp holds whole quads");

namespace {

inline int64_t lut16_padded_rows(int64_t N) { return (N + kLut16Rows - 1) / kLut16Rows * kLut16Rows; }

// Code of weight (n, k) in a lut16 layout (the definition every lut16 kernel must agree with).
inline int lut16_code(const uint8_t* layout, int64_t Kp, int64_t n, int64_t k) {
  const int64_t block = n / kLut16Rows, r = n % kLut16Rows, q = k / kLut16QuadK, j = k % kLut16QuadK;
  const int64_t h = (j / 2) % 2, high = j / 4, second = j % 2;
  const uint8_t byte = layout[block * kLut16Rows * (Kp / 4) + q * kLut16QuadBytes + h * 16 + r];
  return (byte >> (4 * high + 2 * second)) & 3;
}

}  // namespace

// One ISA's lut16 kernels.
struct Lut16Kernels {
  const char* name;
  // Activation quantization into natural order (a BT2 kernel set's, see bt2.h).
  void (*quantize_f32)(const float* x, int64_t K, int64_t Kp, int8_t* xq, float* x_scale, int32_t* x_sum);
  void (*quantize_bf16)(const uint16_t* x, int64_t K, int64_t Kp, int8_t* xq, float* x_scale, int32_t* x_sum);
  void (*layout_int8)(const int8_t* x, int64_t K, int64_t Kp, int8_t* xq, int32_t* x_sum);
  // Per token: xq[Kp] (natural order, as the AVX2 and scalar BT2 kernels lay it out) ->
  // tables[Kp * kLut16TableBytesPerK]. May do nothing (the scalar reference reads xq).
  void (*tables)(const int8_t* xq, int64_t Kp, uint8_t* tables);
  // y[m, n] for rows n in [n0, n1) (n0 a multiple of kLut16Rows) of token m, through the epilogue.
  void (*gemv)(const int8_t* xq, const uint8_t* tables, int64_t Kp, const uint8_t* layout, int64_t m,
               int64_t n0, int64_t n1, const Epilogue& ep);
};

const Lut16Kernels& lut16_kernels_scalar();
#if defined(BITTTT_X86)
const Lut16Kernels& lut16_kernels_avx2();
#endif
#if defined(BITTTT_ARM64)
const Lut16Kernels& lut16_kernels_neon();
#endif

// BT2 packed [N, Kp/4] -> lut16 layout [Np, Kp/4] for rows [n0, n1) of the layout
// (multiples of kLut16Rows; rows >= N get code 1). Plain C++: it runs once per weight.
void repack_bt2_to_lut16(const uint8_t* packed, int64_t N, int64_t Kp, uint8_t* layout, int64_t n0, int64_t n1);

}  // namespace bitttt::ternary
