// BT2: the packed ternary weight format (docs/design.md §2) and the CPU kernel interface.
//
// packed: uint8 [N, Kp/4], Kp = K rounded up to kBT2PadK. Code = q + 1 in {0, 1, 2};
// padding is code 1 (weight 0). Each run of 128 weights along K is 32 bytes; byte m of a
// run holds k = m, m+32, m+64, m+96 in bits 0-1, 2-3, 4-5, 6-7 (llama.cpp TQ2_0 `qs`).
//
// Kernels compute dot = sum_k x_q[k] * code[k] over the padded K, then undo the +1 offset
// with x_sum = sum_k x_q[k]: sum_k x_q[k] * q[k] = dot - x_sum. Padded activations are 0,
// so padding codes contribute nothing.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace bitttt::ternary {

constexpr int64_t kBT2RunK = 128;       // weights per run
constexpr int64_t kBT2RunBytes = 32;    // bytes per run
constexpr int64_t kBT2PadK = 256;       // K is padded to a multiple of this
constexpr int64_t kBT2WeightsPerByte = 4;
static_assert(kBT2RunK == kBT2RunBytes * kBT2WeightsPerByte, "a run is 32 bytes of 4 codes");
static_assert(kBT2PadK % kBT2RunK == 0, "padding covers whole runs");

// What to do with the int32 dot products of a tile: the fused epilogue.
//   Float: y[m, n] = float(dot - x_sum[m]) * w_scale[n] * x_scale[m] (+ bias[n])
//   Int32: y[m, n] = dot - x_sum[m] (exact; used by tests and the integer op)
enum class OutKind { Float32, BFloat16, Int32 };

struct Epilogue {
  OutKind kind;
  const float* w_scale;   // [N]
  const float* bias;      // [N] or nullptr
  const float* x_scale;   // [M] absmax/127 per token (NaN for a token with NaN/inf input)
  const int32_t* x_sum;   // [M]
  void* out;              // [M, ldo] of float, bf16 (uint16) or int32
  int64_t ldo;
};

// The helpers below are compiled into every ISA's translation unit with that unit's flags.
// They must not be shared across units (an inline function's one surviving copy could be
// the AVX-512 build of it, run on an AVX2 CPU), hence the anonymous namespace.
namespace {

inline int64_t bt2_padded_k(int64_t K) { return (K + kBT2PadK - 1) / kBT2PadK * kBT2PadK; }

// Code of weight k in one packed row (the definition every kernel must agree with).
inline int bt2_code(const uint8_t* row, int64_t k) {
  const int64_t run = k / kBT2RunK, r = k % kBT2RunK;
  const uint8_t byte = row[run * kBT2RunBytes + r % kBT2RunBytes];
  return (byte >> (2 * (r / kBT2RunBytes))) & 3;
}

inline uint16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;  // NaN stays a quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);                      // round to nearest even
  return static_cast<uint16_t>(u >> 16);
}

inline float bf16_to_float(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Writes one output from its raw dot product. Scalar on purpose: it runs M*N times against
// M*N*K multiply-adds, and one definition keeps every ISA's rounding identical.
inline void store_output(const Epilogue& ep, int64_t m, int64_t n, int32_t dot) {
  const int32_t acc = dot - ep.x_sum[m];
  if (ep.kind == OutKind::Int32) {
    static_cast<int32_t*>(ep.out)[m * ep.ldo + n] = acc;
    return;
  }
  float y = static_cast<float>(acc) * ep.w_scale[n] * ep.x_scale[m];
  if (ep.bias) y += ep.bias[n];
  if (ep.kind == OutKind::Float32)
    static_cast<float*>(ep.out)[m * ep.ldo + n] = y;
  else
    static_cast<uint16_t*>(ep.out)[m * ep.ldo + n] = float_to_bf16(y);
}

// Shared quantization rule (design §2), so that every ISA and the Python reference agree:
// s_x = 127 / max(absmax, 1e-5); x_q = clamp(round_half_even(x * s_x), -128, 127).
constexpr float kAbsmaxFloor = 1e-5f;
inline float activation_scale(float absmax) { return 127.0f / std::fmax(absmax, kAbsmaxFloor); }

}  // namespace

// One ISA's kernels. Activations are quantized into the layout that ISA's matmul reads
// (`xq`: M rows of Kp bytes, zero padded); `matmul` fills rows [m0, m1) x columns [n0, n1).
struct Bt2Kernels {
  const char* name;
  // x[K] -> xq[Kp], x_scale = absmax/127 (NaN if x has NaN/inf), x_sum = sum of xq.
  void (*quantize_f32)(const float* x, int64_t K, int64_t Kp, int8_t* xq, float* x_scale, int32_t* x_sum);
  void (*quantize_bf16)(const uint16_t* x, int64_t K, int64_t Kp, int8_t* xq, float* x_scale, int32_t* x_sum);
  // Already-quantized int8 activations -> the kernel layout (for the exact integer op).
  void (*layout_int8)(const int8_t* x, int64_t K, int64_t Kp, int8_t* xq, int32_t* x_sum);
  void (*matmul)(const int8_t* xq, int64_t Kp, const uint8_t* packed,
                 int64_t m0, int64_t m1, int64_t n0, int64_t n1, const Epilogue& ep);
};

const Bt2Kernels& bt2_kernels_scalar();
#if defined(BITTTT_X86)
const Bt2Kernels& bt2_kernels_avx2();
const Bt2Kernels& bt2_kernels_avx512vnni();
#endif
#if defined(BITTTT_AMX)
const Bt2Kernels& bt2_kernels_amx();  // the AVX-512 set with AMX tiles for 8+ tokens
#endif
#if defined(BITTTT_ARM64)
const Bt2Kernels& bt2_kernels_neon();
const Bt2Kernels& bt2_kernels_neon_dotprod();
#endif
#if defined(BITTTT_AVX512_EMULATION)
const Bt2Kernels& bt2_kernels_avx512vnni_emulated();  // test-only, see its file
#endif

}  // namespace bitttt::ternary
