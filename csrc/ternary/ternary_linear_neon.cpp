// AArch64 NEON BT2 kernels (baseline Armv8-A: every aarch64 CPU has them; chosen at run time).
//
// One 32-byte run of a packed row is two 16-byte vectors; (bytes >> 2s) & 3 gives k =
// 32s..32s+15 (low vector) and 32s+16..32s+31 (high vector), so activations stay in natural
// order, as for AVX2. Codes (0..2) times int8 activations:
//   neon          vmull_s8 / vmlal_high_s8 into int16 lanes, widened by vpadalq_s16;
//   neon_dotprod  vdotq_s32 (SDOT, Armv8.2 FEAT_DotProd) straight into int32 lanes.
// This file is compiled a second time with -march=armv8.2-a+dotprod and BITTTT_NEON_DOTPROD
// (ternary_linear_neon_dotprod.cpp): only the dot product differs between the two sets.
#include <arm_neon.h>
#if defined(_MSC_VER) && !defined(__clang__)
#include <intrin.h>  // __prefetch
#endif

#include <algorithm>

#include "ternary/bt2.h"

#if defined(BITTTT_NEON_DOTPROD)
#define BITTTT_NEON_KERNELS bt2_kernels_neon_dotprod
#define BITTTT_NEON_NAME "neon_dotprod"
#else
#define BITTTT_NEON_KERNELS bt2_kernels_neon
#define BITTTT_NEON_NAME "neon"
#endif

namespace bitttt::ternary {
namespace {

inline void prefetch(const void* p) {
#if defined(__GNUC__) || defined(__clang__)
  __builtin_prefetch(p);
#elif defined(_MSC_VER)
  __prefetch(p);
#endif
}

// The 8 code vectors of one run: c[v] multiplies activations k = 16v..16v+15 of the run.
struct RunCodes {
  int8x16_t c[8];
};

inline RunCodes decode_run(const uint8_t* w) {
  const uint8x16_t mask = vdupq_n_u8(3);
  const uint8x16_t lo = vld1q_u8(w), hi = vld1q_u8(w + 16);
  RunCodes r;
  r.c[0] = vreinterpretq_s8_u8(vandq_u8(lo, mask));
  r.c[1] = vreinterpretq_s8_u8(vandq_u8(hi, mask));
  r.c[2] = vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(lo, 2), mask));
  r.c[3] = vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(hi, 2), mask));
  r.c[4] = vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(lo, 4), mask));
  r.c[5] = vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(hi, 4), mask));
  r.c[6] = vreinterpretq_s8_u8(vshrq_n_u8(lo, 6));  // the top two bits need no mask
  r.c[7] = vreinterpretq_s8_u8(vshrq_n_u8(hi, 6));
  return r;
}

#if defined(BITTTT_NEON_DOTPROD)
// acc += the run's 128 products, 4 per int32 lane and instruction: a lane adds at most
// 32 * 2 * 128 = 8192 per run, no overflow below K = 2^30.
inline int32x4_t run_dot(int32x4_t acc, const RunCodes& r, const int8_t* x) {
  for (int v = 0; v < 8; ++v) acc = vdotq_s32(acc, r.c[v], vld1q_s8(x + 16 * v));
  return acc;
}
// Prefill tiles are 4 rows x 4 tokens: 16 int32 accumulators, 8 code vectors and the
// activation loads fit the 32 vector registers (not tuned on hardware).
constexpr int64_t kGemmRows = 4;
#else
// One product is c * x with c in [0, 2], x in [-128, 127]: in [-256, 254]. Each of the two
// int16 partial sums takes 8 products per lane per run, so it stays in [-2048, 2032] and is
// widened into the int32 lanes (vpadalq_s16) at the end of every run.
static_assert(8 * 256 <= 32767, "int16 partial sums could overflow");
inline int32x4_t run_dot(int32x4_t acc, const RunCodes& r, const int8_t* x) {
  int16x8_t p[2];
  for (int h = 0; h < 2; ++h) {
    const int8x16_t xv = vld1q_s8(x + 16 * h);
    p[h] = vmlal_high_s8(vmull_s8(vget_low_s8(r.c[h]), vget_low_s8(xv)), r.c[h], xv);
  }
  for (int v = 2; v < 8; ++v) {
    const int8x16_t xv = vld1q_s8(x + 16 * v);
    int16x8_t& s = p[v % 2];
    s = vmlal_s8(s, vget_low_s8(r.c[v]), vget_low_s8(xv));
    s = vmlal_high_s8(s, r.c[v], xv);
  }
  return vpadalq_s16(vpadalq_s16(acc, p[0]), p[1]);
}
// Prefill tiles are 2 rows x 4 tokens: 8 int32 accumulators, 8 code vectors, the two int16
// partial sums and the activation loads fit the 32 vector registers (not tuned on hardware).
constexpr int64_t kGemmRows = 2;
#endif

// dots[i][j] = sum_k code(row i, k) * xq(token j, k) over k in [k0, k1) (multiples of
// kBT2PadK), for R rows x C tokens; x and w point at the starts of token 0 and row 0.
template <int R, int C>
inline void dot_tile(const int8_t* x, int64_t Kp, const uint8_t* w, int64_t row_bytes, int64_t k0, int64_t k1,
                     int32_t dots[R][C]) {
  int32x4_t acc[R][C];
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < C; ++j) acc[i][j] = vdupq_n_s32(0);
  for (int64_t run = k0 / kBT2RunK; run < k1 / kBT2RunK; ++run) {
    const uint8_t* wr = w + run * kBT2RunBytes;
    const int8_t* xr = x + run * kBT2RunK;
    // The same bytes of the next tile's rows, one tile ahead (see the AVX2 kernel).
    for (int i = R; i < 2 * R; ++i) prefetch(wr + i * row_bytes);
    for (int i = 0; i < R; ++i) {
      const RunCodes codes = decode_run(wr + i * row_bytes);
      for (int j = 0; j < C; ++j) acc[i][j] = run_dot(acc[i][j], codes, xr + j * Kp);
    }
  }
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < C; ++j) dots[i][j] = vaddvq_s32(acc[i][j]);
}

#include "ternary/tiles.inc"

inline float32x4_t load4(const float* x) { return vld1q_f32(x); }
inline float32x4_t load4(const uint16_t* x) { return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(x), 16)); }
inline float load1(const float* x) { return *x; }
inline float load1(const uint16_t* x) { return bf16_to_float(*x); }

// Same rule and rounding as the scalar kernel (bt2.h): x * s in float32, FCVTNS rounds half
// to even like nearbyint, the saturating narrows clamp to [-128, 127]. AArch64 vector float
// arithmetic follows FPCR like scalar code (no flush-to-zero of its own), so every step
// rounds as the scalar loop does and the codes, scale and sum are bit-identical.
template <typename T>
void quantize_token(const T* x, int64_t K, int64_t Kp, int8_t* xq, float* x_scale, int32_t* x_sum) {
  const float32x4_t zero = vdupq_n_f32(0.0f);
  float32x4_t vmax = zero, poison = zero;  // poison: NaN once any x is NaN or +-inf (x * 0)
  int64_t k = 0;
  for (; k + 4 <= K; k += 4) {
    const float32x4_t v = load4(x + k);
    vmax = vmaxq_f32(vmax, vabsq_f32(v));
    poison = vaddq_f32(poison, vmulq_f32(v, zero));
  }
  float absmax = vmaxvq_f32(vmax), tail_poison = vaddvq_f32(poison);
  for (; k < K; ++k) {
    absmax = std::fmax(absmax, std::fabs(load1(x + k)));
    tail_poison += load1(x + k) * 0.0f;
  }
  std::memset(xq, 0, Kp);
  *x_sum = 0;
  if (std::isnan(tail_poison)) {  // defined behaviour: this token's outputs are NaN
    *x_scale = NAN;
    return;
  }
  const float s = activation_scale(absmax);
  const float32x4_t vs = vdupq_n_f32(s);
  int32x4_t vsum = vdupq_n_s32(0);
  for (k = 0; k + 16 <= K; k += 16) {
    int32x4_t r[4];
    for (int i = 0; i < 4; ++i) r[i] = vcvtnq_s32_f32(vmulq_f32(load4(x + k + 4 * i), vs));
    const int16x8_t a = vcombine_s16(vqmovn_s32(r[0]), vqmovn_s32(r[1]));
    const int16x8_t b = vcombine_s16(vqmovn_s32(r[2]), vqmovn_s32(r[3]));
    const int8x16_t q = vcombine_s8(vqmovn_s16(a), vqmovn_s16(b));
    vst1q_s8(xq + k, q);
    vsum = vpadalq_s16(vsum, vpaddlq_s8(q));  // sums the saturated codes, as the scalar loop
  }
  int32_t sum = vaddvq_s32(vsum);
  for (; k < K; ++k) {
    const float r = std::nearbyint(load1(x + k) * s);
    const int8_t q = static_cast<int8_t>(std::min(127.0f, std::max(-128.0f, r)));
    xq[k] = q;
    sum += q;
  }
  *x_scale = 1.0f / s;
  *x_sum = sum;
}

void quantize_f32(const float* x, int64_t K, int64_t Kp, int8_t* xq, float* x_scale, int32_t* x_sum) {
  quantize_token(x, K, Kp, xq, x_scale, x_sum);
}
void quantize_bf16(const uint16_t* x, int64_t K, int64_t Kp, int8_t* xq, float* x_scale, int32_t* x_sum) {
  quantize_token(x, K, Kp, xq, x_scale, x_sum);
}
// Natural order: the copy and its sum (runs once per call, not per weight).
void layout_int8(const int8_t* x, int64_t K, int64_t Kp, int8_t* xq, int32_t* x_sum) {
  std::memset(xq, 0, Kp);
  std::memcpy(xq, x, K);
  int32_t sum = 0;
  for (int64_t k = 0; k < K; ++k) sum += x[k];
  *x_sum = sum;
}

}  // namespace

const Bt2Kernels& BITTTT_NEON_KERNELS() {
  static const Bt2Kernels kernels{BITTTT_NEON_NAME, quantize_f32, quantize_bf16, layout_int8, matmul};
  return kernels;
}

}  // namespace bitttt::ternary
