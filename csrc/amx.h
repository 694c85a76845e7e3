// Intel AMX (tile registers, TDPBSSD) shared by the AMX kernel files: the tile configuration.
// Include only from a translation unit compiled with -mamx-tile -mamx-int8. Whether the CPU
// has AMX and the OS lets this process use it is cpu_features().amx_int8 (cpu_features.cpp
// asks Linux for the tile state once); a kernel runs only where that is true.
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace bitttt::amx {

// The 64-byte operand of LDTILECFG, palette 1: 8 tiles of up to 16 rows x 64 bytes.
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};  // bytes per row, per tile
  uint8_t rows[16] = {};
};
static_assert(sizeof(TileConfig) == 64, "LDTILECFG reads 64 bytes");

constexpr int kMaxRows = 16;
constexpr int kMaxColsb = 64;

// Tile configuration for the calling thread, released on scope exit: each worker configures
// its own tiles at the start of its share of the work and releases them at the end.
class TileScope {
 public:
  explicit TileScope(const TileConfig& config) { _tile_loadconfig(&config); }
  ~TileScope() { _tile_release(); }
  TileScope(const TileScope&) = delete;
  TileScope& operator=(const TileScope&) = delete;
};

inline void set_tile(TileConfig& c, int tile, int rows, int colsb) {
  c.rows[tile] = static_cast<uint8_t>(rows);
  c.colsb[tile] = static_cast<uint16_t>(colsb);
}

}  // namespace bitttt::amx
