// AMX BT2 kernels for calls of 8-9 or more tokens (bitttt serve's decode batches up to 16, and
// prefill in blocks of 16); compiled with -mamx-tile -mamx-int8 and the AVX-512 flags, chosen
// at run time (dispatch.cpp: "amx"). Fewer tokens, quantization and the activation layout are
// the AVX-512 VNNI set's.
//
// One TDPBSSD multiplies a tile A of M tokens x 64 int8 activations by a tile B of 64 k x 16
// weight rows (4 k per 32-bit column) into M x 16 int32 sums: 16 * 64 * M multiply-adds per
// instruction, against 64 per vpdpbusd. A is the activations as the AVX-512 layout already
// holds them (M rows of 64 bytes, stride Kp). B must hold, in row kk, each weight row's codes
// of the 4 k that A's bytes 4kk..4kk+3 meet: in that layout (ternary_linear_avx512vnni.cpp),
// bytes 64s..64s+63 of a 256-k block meet bits 2s..2s+1 of the weight row's 64 bytes in
// order, so B for shift s is the 16 rows' 64 bytes transposed as a 16 x 16 matrix of 32-bit
// words, then each byte shifted and masked. Codes are 0..2 (weight + 1); the epilogue
// subtracts the token's activation sum, as in every BT2 kernel. Integer sums: the results
// are the scalar reference's, bit for bit.
#include <immintrin.h>

#include <algorithm>
#include <utility>

#include "amx.h"
#include "ternary/bt2.h"

namespace bitttt::ternary {
namespace {

constexpr int64_t kPairBytes = 2 * kBT2RunBytes;  // a weight row's 64 bytes per 256 k
constexpr int64_t kPairK = 2 * kBT2RunK;
static_assert(kBT2PadK % kPairK == 0, "Kp must hold whole run pairs");
constexpr int kTileRows = amx::kMaxRows;  // weight rows per B tile (its 16 int32 columns)
// The tiles from 9 tokens, or from 8 where Kp > 4096 (the VNNI set's 8-token tiles need
// Kp <= 4096, tiles.inc). With weights from memory (shared Xeon) the VNNI tiles were up to
// 1.4x faster below 8 tokens (the decode into B tiles is a fixed cost per weight) and even at
// 8 with Kp = 2560 (amx_kernels_1t_shared.json); the AMX tiles 1.2-1.5x at 8 with Kp = 6912
// and 1.1-1.9x at 16 (benchmarks/results/xeon-avx512-2c/amx_kernels_shared.json).
constexpr int kMaxTokens = amx::kMaxRows;
inline int64_t min_tile_tokens(int64_t Kp) { return Kp > 4096 ? 8 : 9; }
constexpr int kTileBytes = kTileRows * amx::kMaxColsb;  // one B tile: 1 KB

// permutex2var indices of transpose_16x16's rounds b = 8, 4, 2, 1: row i (bit b clear) keeps
// its left b-blocks and takes row i + b's (lo); row i + b takes row i's right ones (hi).
struct SwapIndices {
  alignas(64) int32_t lo[4][16];
  alignas(64) int32_t hi[4][16];
};
constexpr SwapIndices swap_indices() {
  SwapIndices t{};
  for (int round = 0, b = 8; round < 4; ++round, b /= 2)
    for (int j = 0; j < 16; ++j) {
      t.lo[round][j] = (j & b) ? 16 + j - b : j;
      t.hi[round][j] = (j & b) ? 16 + j : j + b;
    }
  return t;
}
alignas(64) constexpr SwapIndices kSwap = swap_indices();

// One round of transpose_16x16: rows i (bit b clear) and i + b exchange blocks. Templates,
// so that every step is unrolled and the 16 rows stay in registers (as loops, GCC kept them on
// the stack: 30% slower).
template <int Round, int... J>
inline void swap_round(__m512i* r, std::integer_sequence<int, J...>) {
  constexpr int b = 8 >> Round;
  const __m512i lo = _mm512_load_si512(kSwap.lo[Round]), hi = _mm512_load_si512(kSwap.hi[Round]);
  auto swap = [&](int i) {
    const __m512i a = r[i], c = r[i + b];
    r[i] = _mm512_permutex2var_epi32(a, lo, c);
    r[i + b] = _mm512_permutex2var_epi32(a, hi, c);
  };
  (swap(J / b * 2 * b + J % b), ...);  // the 8 pairs (i, i + b) with bit b of i clear
}

// Transposes r as a 16 x 16 matrix of 32-bit words: four rounds, each swapping the
// off-diagonal b x b blocks of every 2b x 2b block (b = 8, 4, 2, 1).
inline void transpose_16x16(__m512i* r) {
  constexpr auto pairs = std::make_integer_sequence<int, 8>{};
  swap_round<0>(r, pairs);
  swap_round<1>(r, pairs);
  swap_round<2>(r, pairs);
  swap_round<3>(r, pairs);
}

// The four B tiles (shifts s = 0..3) of `rows` weight rows (rows past them: zero) for one
// 256-k block: w points at the first row's 64 bytes of that block.
inline void decode_group(const uint8_t* w, int64_t row_bytes, int64_t rows, int8_t* tiles) {
  __m512i r[16];
  for (int i = 0; i < 16; ++i) {
    if (i < rows) {
      // Two groups ahead, into L2: each row is short (640 bytes at K = 2560), too short for
      // the hardware prefetchers to get ahead of 16 rows read side by side.
      _mm_prefetch(reinterpret_cast<const char*>(w + (i + 2 * kTileRows) * row_bytes), _MM_HINT_T1);
      r[i] = _mm512_loadu_si512(w + i * row_bytes);
    } else {
      r[i] = _mm512_setzero_si512();
    }
  }
  transpose_16x16(r);
  const __m512i mask = _mm512_set1_epi8(3);
  for (int s = 0; s < 4; ++s)
    for (int kk = 0; kk < 16; ++kk)
      _mm512_store_si512(tiles + s * kTileBytes + kk * 64, _mm512_and_si512(_mm512_srli_epi16(r[kk], 2 * s), mask));
}

// Tokens [m0, m1) (2..16) x rows [n0, n1), 16 rows at a time over the whole K (16 rows
// stream from memory side by side, which the hardware prefetchers follow; 64 rows at once
// were 2x slower on weights from memory). C tile s (0..3) sums shift s's products, so that
// consecutive products never wait for each other; the dot is C0 + C1 + C2 + C3.
void matmul_tiles(const int8_t* xq, int64_t Kp, const uint8_t* packed, int64_t m0, int64_t m1, int64_t n0,
                  int64_t n1, const Epilogue& ep) {
  const int64_t M = m1 - m0, row_bytes = Kp / kBT2WeightsPerByte;
  amx::TileConfig config;
  for (int t = 0; t < 4; ++t) amx::set_tile(config, t, static_cast<int>(M), amx::kMaxColsb);  // C: M x 16 rows
  for (int t = 4; t < 6; ++t) amx::set_tile(config, t, static_cast<int>(M), amx::kMaxColsb);  // A: M x 64 k
  for (int t = 6; t < 8; ++t) amx::set_tile(config, t, kTileRows, amx::kMaxColsb);             // B: 64 k x 16 rows
  const amx::TileScope scope(config);
  alignas(64) int8_t tiles[4 * kTileBytes];  // one 256-k block's decoded codes: 4 KB, in L1
  const int8_t* x = xq + m0 * Kp;
  for (int64_t n = n0; n < n1; n += kTileRows) {
    const int64_t rows = std::min<int64_t>(kTileRows, n1 - n);
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int64_t p = 0; p < Kp / kPairK; ++p) {
      decode_group(packed + n * row_bytes + p * kPairBytes, row_bytes, rows, tiles);
      // A and B alternate between two tiles each, so that a load need not wait for the
      // product reading the tile's previous contents. Tile numbers are literals: GCC's
      // intrinsics paste them into the instruction.
      const int8_t* xp = x + p * kPairK;
      _tile_loadd(4, xp, Kp);
      _tile_loadd(6, tiles, amx::kMaxColsb);
      _tile_dpbssd(0, 4, 6);
      _tile_loadd(5, xp + 64, Kp);
      _tile_loadd(7, tiles + kTileBytes, amx::kMaxColsb);
      _tile_dpbssd(1, 5, 7);
      _tile_loadd(4, xp + 128, Kp);
      _tile_loadd(6, tiles + 2 * kTileBytes, amx::kMaxColsb);
      _tile_dpbssd(2, 4, 6);
      _tile_loadd(5, xp + 192, Kp);
      _tile_loadd(7, tiles + 3 * kTileBytes, amx::kMaxColsb);
      _tile_dpbssd(3, 5, 7);
    }
    alignas(64) int32_t sums[4][kMaxTokens][kTileRows];
    constexpr int64_t kSumStride = kTileRows * sizeof(int32_t);
    _tile_stored(0, sums[0], kSumStride);
    _tile_stored(1, sums[1], kSumStride);
    _tile_stored(2, sums[2], kSumStride);
    _tile_stored(3, sums[3], kSumStride);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t j = 0; j < rows; ++j)
        store_output(ep, m0 + m, n + j, sums[0][m][j] + sums[1][m][j] + sums[2][m][j] + sums[3][m][j]);
  }
}

// Fewer than min_tile_tokens run the AVX-512 kernels; more run the tiles, 16 tokens at a time
// (a 64-row task's rows stay in L2 for the next 16), a smaller remainder the AVX-512 kernels.
void matmul(const int8_t* xq, int64_t Kp, const uint8_t* packed, int64_t m0, int64_t m1, int64_t n0, int64_t n1,
            const Epilogue& ep) {
  for (int64_t m = m0; m < m1; m += kMaxTokens) {
    const int64_t e = std::min(m1, m + kMaxTokens);
    if (e - m < min_tile_tokens(Kp))
      bt2_kernels_avx512vnni().matmul(xq, Kp, packed, m, e, n0, n1, ep);
    else
      matmul_tiles(xq, Kp, packed, m, e, n0, n1, ep);
  }
}

}  // namespace

// The AVX-512 set's name: the other op families (TTT, fake quantization, ...) and the trit5
// choice key on it, and this set is that one with tiles for 8+ tokens.
const Bt2Kernels& bt2_kernels_amx() {
  static const Bt2Kernels kernels = [] {
    Bt2Kernels k = bt2_kernels_avx512vnni();
    k.matmul = matmul;
    return k;
  }();
  return kernels;
}

}  // namespace bitttt::ternary
