// "trit5": a load-time layout of BT2 weights at 5 weights per byte (1.6 bits per weight, as
// llama.cpp's TQ1_0), for decode GEMVs that are limited by how fast weights stream from
// memory: it reads 20% fewer bytes than BT2's 2 bits. Built from BT2 (docs/design.md §2) once
// per weight; never written to disk.
//
// Codes: c = q + 1 in {0, 1, 2}, as in BT2. Five codes c0..c4 make v = 81 c0 + 27 c1 + 9 c2 +
// 3 c3 + c4 in [0, 242], stored as the byte b = ceil(v * 256 / 243) (0..255). Code i is the
// top base-3 digit of t_i = b * 3^i mod 256, i.e. c_i = (3 t_i) >> 8: b / 256 is v / 243 plus
// less than 1 / 256, and 3^i times that error stays below the gap to the next digit
// boundary (3^i / 256 < 1 / 3^(5 - i) for i <= 4). A kernel gets t_i by repeated *3 (adds)
// and c_i by comparing t_i with 86 and 171 (3t >= 256 and 3t >= 512): no multiply, no table.
//
// Layout: K is padded to Kt, a multiple of kTrit5BlockK = 320 (padding weights are code 1,
// weight 0); each row is Kt / 320 blocks of 64 bytes, row after row (N rows, no row padding).
// Byte j of a block holds codes i = 0..4 of weights k = 64 i + j (in the block), so the 64
// codes of digit i are 64 consecutive weights: an AVX-512 kernel reads them against one
// 64-byte load of activations, an AVX2 kernel against two 32-byte ones. Row bytes: Kt / 5.
// Memory: N * Kt / 5 bytes next to BT2's N * Kp / 4 (0.80x for K = 2560, 0.81x for 6912).
//
// Activations of one token: Kt int8 in natural order, zero padded. Kernels compute
// dot = sum_k x_q[k] * code[k] over Kt, and the BT2 epilogue (bt2.h) undoes the +1 offset.
// BT2's code 3 (never written by pack_ternary; design §2: not a weight, refused at load by
// validate_packed) has no trit: the repack stores it as code 2 (+1, where BT2 kernels read
// +2). Refusing it here would make the op's success depend on the bytes, which its meta
// kernel cannot see.
#pragma once

#include <cstdint>

#include "ternary/bt2.h"

namespace bitttt::ternary {

constexpr int64_t kTrit5BlockK = 320;     // weights per block
constexpr int64_t kTrit5BlockBytes = 64;  // bytes per block
constexpr int64_t kTrit5Digits = 5;       // codes per byte
static_assert(kTrit5BlockK == kTrit5BlockBytes * kTrit5Digits, "a block is 64 bytes of 5 codes");

namespace {  // per translation unit, as bt2.h's helpers

inline int64_t trit5_padded_k(int64_t K) { return (K + kTrit5BlockK - 1) / kTrit5BlockK * kTrit5BlockK; }
inline int64_t trit5_row_bytes(int64_t K) { return trit5_padded_k(K) / kTrit5Digits; }

// The byte holding codes c[0..4] (each 0..2), and code i of a byte: the layout's definition.
inline uint8_t trit5_encode(const int c[5]) {
  const int v = 81 * c[0] + 27 * c[1] + 9 * c[2] + 3 * c[3] + c[4];
  return static_cast<uint8_t>((v * 256 + 242) / 243);
}
inline int trit5_decode(uint8_t b, int i) {
  uint8_t t = b;
  for (int d = 0; d < i; ++d) t = static_cast<uint8_t>(t * 3);
  return (3 * t) >> 8;
}

// Code of weight k in one trit5 row.
inline int trit5_code(const uint8_t* row, int64_t k) {
  const int64_t block = k / kTrit5BlockK, r = k % kTrit5BlockK;
  return trit5_decode(row[block * kTrit5BlockBytes + r % kTrit5BlockBytes], static_cast<int>(r / kTrit5BlockBytes));
}

}  // namespace

// One ISA's trit5 kernels. Activations are quantized by a natural-order BT2 kernel set's
// functions (AVX2's or the scalar ones) into xq rows of Kt bytes.
struct Trit5Kernels {
  const char* name;
  void (*quantize_f32)(const float* x, int64_t K, int64_t Kt, int8_t* xq, float* x_scale, int32_t* x_sum);
  void (*quantize_bf16)(const uint16_t* x, int64_t K, int64_t Kt, int8_t* xq, float* x_scale, int32_t* x_sum);
  void (*layout_int8)(const int8_t* x, int64_t K, int64_t Kt, int8_t* xq, int32_t* x_sum);
  // Rows [n0, n1) x tokens [m0, m1) through the epilogue; xq holds token m at xq + m * Kt.
  void (*matmul)(const int8_t* xq, int64_t Kt, const uint8_t* layout, int64_t m0, int64_t m1, int64_t n0, int64_t n1,
                 const Epilogue& ep);
};

const Trit5Kernels& trit5_kernels_scalar();
#if defined(BITTTT_X86)
const Trit5Kernels& trit5_kernels_avx2();
const Trit5Kernels& trit5_kernels_avx512();
#endif

// BT2 packed [N, Kp/4] -> trit5 layout [N, Kt/5] for rows [n0, n1) (code 3 -> 2, see above).
// Plain C++: it runs once per weight.
void repack_bt2_to_trit5(const uint8_t* packed, int64_t K, uint8_t* layout, int64_t n0, int64_t n1);

}  // namespace bitttt::ternary
