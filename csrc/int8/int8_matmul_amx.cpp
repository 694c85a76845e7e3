// AMX int8 GEMM for calls of 2..16 tokens (bitttt serve's decode batches on the int8 head);
// compiled with -mamx-tile -mamx-int8 and the AVX-512 flags, run only where
// cpu_features().amx_int8 (int8_matmul_cpu.cpp).
//
// One TDPBSSD multiplies a tile A of 16 weight rows x 64 int8 weights by a tile B of 64 k x M
// tokens into 16 x M int32 sums. A is loaded straight from the row-major weights (stride K):
// no copy of the weights at all. B wants, in its row kk, the 4 activations k = 4kk..4kk+3 of
// every token side by side (the VNNI layout); the entry builds that once per call
// (amx_layout). Signed x signed bytes, exact int32 sums: the scalar reference's results.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "amx.h"
#include "int8/int8_matmul.h"

namespace bitttt::int8 {
namespace {

constexpr int64_t kBlockK = amx::kMaxColsb;  // k per tile product
constexpr int64_t kTileRows = amx::kMaxRows;
constexpr int kGroups = 4;  // C tiles 0..3: 64 weight rows at a time
constexpr int64_t kPanelRows = kGroups * kTileRows;

// A source for group G's A tile at k-block `blk`: the weights themselves, or (a group of fewer
// than 16 rows, or the last K % 64 bytes) a zero-padded copy in `staging` [16 x 64].
struct ASource {
  const int8_t* ptr;
  int64_t stride;
};

inline ASource a_source(const int8_t* w, int64_t K, int64_t rows, int64_t k0, int8_t* staging) {
  const int64_t bytes = std::min(kBlockK, K - k0);
  if (rows == kTileRows && bytes == kBlockK) return {w + k0, K};
  std::memset(staging, 0, kTileRows * kBlockK);
  for (int64_t i = 0; i < rows; ++i) std::memcpy(staging + i * kBlockK, w + i * K + k0, bytes);
  return {staging, kBlockK};
}

}  // namespace

int64_t amx_layout_bytes(int64_t M, int64_t K) { return (K + kBlockK - 1) / kBlockK * kBlockK * M; }

void amx_layout(const int8_t* x, int64_t M, int64_t K, int8_t* xb) {
  const int64_t Kb = (K + kBlockK - 1) / kBlockK * kBlockK;
  for (int64_t k4 = 0; k4 < Kb / 4; ++k4)
    for (int64_t m = 0; m < M; ++m)
      for (int64_t t = 0; t < 4; ++t) {
        const int64_t k = 4 * k4 + t;
        xb[(k4 * M + m) * 4 + t] = k < K ? x[m * K + k] : int8_t{0};
      }
}

void matmul_amx(const int8_t* xb, int64_t M, int64_t K, const int8_t* w, int64_t n0, int64_t n1, int32_t* out,
                int64_t ldo) {
  amx::TileConfig config;
  for (int g = 0; g < kGroups; ++g) amx::set_tile(config, g, kTileRows, static_cast<int>(4 * M));
  amx::set_tile(config, 4, kTileRows, amx::kMaxColsb);  // A: 16 rows x 64 k
  amx::set_tile(config, 5, kTileRows, amx::kMaxColsb);
  amx::set_tile(config, 6, kBlockK / 4, static_cast<int>(4 * M));  // B: 64 k x M tokens
  const amx::TileScope scope(config);
  alignas(64) int8_t staging[2][kTileRows * kBlockK];
  for (int64_t n = n0; n < n1; n += kPanelRows) {
    const int64_t rows = std::min(kPanelRows, n1 - n);
    auto group_rows = [&](int g) { return std::clamp<int64_t>(rows - g * kTileRows, 0, kTileRows); };
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int64_t k0 = 0; k0 < K; k0 += kBlockK) {
      _tile_loadd(6, xb + k0 * M, 4 * M);
      // C tile g += group g's A x B (tile 6); A alternates between tiles 4 and 5. (Tile
      // numbers are literals: GCC's intrinsics paste them into the instruction.)
      const int8_t* wn = w + n * K;
      ASource a = a_source(wn, K, group_rows(0), k0, staging[0]);
      _tile_loadd(4, a.ptr, a.stride);
      _tile_dpbssd(0, 4, 6);
      if (group_rows(1) > 0) {
        a = a_source(wn + kTileRows * K, K, group_rows(1), k0, staging[1]);
        _tile_loadd(5, a.ptr, a.stride);
        _tile_dpbssd(1, 5, 6);
      }
      if (group_rows(2) > 0) {
        a = a_source(wn + 2 * kTileRows * K, K, group_rows(2), k0, staging[0]);
        _tile_loadd(4, a.ptr, a.stride);
        _tile_dpbssd(2, 4, 6);
      }
      if (group_rows(3) > 0) {
        a = a_source(wn + 3 * kTileRows * K, K, group_rows(3), k0, staging[1]);
        _tile_loadd(5, a.ptr, a.stride);
        _tile_dpbssd(3, 5, 6);
      }
    }
    // Groups past the panel's rows stayed zero and store nothing.
    alignas(64) int32_t sums[kGroups][kTileRows][amx::kMaxRows];
    constexpr int64_t kSumStride = amx::kMaxRows * sizeof(int32_t);
    _tile_stored(0, sums[0], kSumStride);
    _tile_stored(1, sums[1], kSumStride);
    _tile_stored(2, sums[2], kSumStride);
    _tile_stored(3, sums[3], kSumStride);
    for (int g = 0; g < kGroups; ++g)
      for (int64_t i = 0; i < group_rows(g); ++i)
        for (int64_t m = 0; m < M; ++m) out[m * ldo + n + g * kTileRows + i] = sums[g][i][m];
  }
}

}  // namespace bitttt::int8
