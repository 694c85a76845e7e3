// AVX-512 peak kernels (compiled with the AVX-512 flags; run only where the CPU has them):
// vpdpbusd zmm (the ternary AVX-512 kernel's instruction) and vfmadd231ps zmm.
//
// GCC and Clang get inline asm, 12 chains per statement (GCC allows 30 operands, and a "+v"
// one counts twice): it issues exactly the instructions counted. With intrinsics, GCC -O2/-O3
// copies or stores the accumulators around each vpdpbusd (0.65-0.8x of this rate), merges
// chains it can prove equal and turns an FMA by a known 1 into an add. Other compilers get the
// intrinsics, with opaque inputs and starting values against the last two (forced on GCC 12
// and Clang 14 at -O3, that fallback measured the asm's rate).
#include <immintrin.h>

#include <cstdint>

#include "peak/peak.h"
#include "peak/repeat.h"

// Each chain starts from its own opaque zero, so that no compiler merges identical chains.
#define BITTTT_DECL_I(i) __m512i a##i = _mm512_set1_epi32(opaque(0)), b##i = _mm512_set1_epi32(opaque(0));
#define BITTTT_DECL_F(i) __m512 a##i = _mm512_set1_ps(opaque(0.0f)), b##i = _mm512_set1_ps(opaque(0.0f));
#define BITTTT_SUM(i) s += lane_sum(a##i) + lane_sum(b##i);
#if defined(__GNUC__)
#define BITTTT_OUT_A(i) "+v"(a##i),
#define BITTTT_OUT_B(i) "+v"(b##i),
#define BITTTT_DPBUSD(i) "vpdpbusd %[s8], %[u8], %" #i "\n\t"
#define BITTTT_FMA(i) "vfmadd231ps %[y], %[x], %" #i "\n\t"
#else
#define BITTTT_DPBUSD_I(i) a##i = _mm512_dpbusd_epi32(a##i, u8, s8); b##i = _mm512_dpbusd_epi32(b##i, u8, s8);
#define BITTTT_FMA_I(i) a##i = _mm512_fmadd_ps(x, y, a##i); b##i = _mm512_fmadd_ps(x, y, b##i);
#endif

namespace bitttt::peak {
namespace {

// Inputs pass through a volatile: a compiler that knew them could fold the work (GCC turns the
// intrinsic FMA by a known 1 into an add, and sums a known dot product once).
template <typename T>
T opaque(T v) {
  volatile T x = v;
  return x;
}

static_assert(kChainsAvx512 == 2 * 12, "two groups of 12 chains, a and b");
constexpr int64_t kLanesI32 = 16, kLanesF32 = 16;

int64_t lane_sum(__m512i v) {
  alignas(64) int32_t lanes[kLanesI32];
  _mm512_store_si512(lanes, v);
  int64_t s = 0;
  for (int32_t x : lanes) s += x;  // in int64: 24 chains x 16 lanes of up to 2^31 each
  return s;
}

int64_t lane_sum(__m512 v) {
  alignas(64) float lanes[kLanesF32];
  _mm512_store_ps(lanes, v);
  int64_t s = 0;
  for (float x : lanes) s += static_cast<int64_t>(x);  // integers below 2^24: exact
  return s;
}

}  // namespace

// Each dword lane gains u8 . s8 = 1*1 + 1*(-1) + 1*1 + 1*0 = 1 per vpdpbusd (the -1 checks
// that the second operand is read as signed).
int64_t int8_avx512vnni(int64_t iters) {
  const __m512i u8 = _mm512_set1_epi8(opaque<char>(1)), s8 = _mm512_set1_epi32(opaque(0x0001ff01));
  BITTTT_X12(BITTTT_DECL_I)
  for (int64_t i = 0; i < iters; ++i) {
#if defined(__GNUC__)
    __asm__(BITTTT_X12(BITTTT_DPBUSD) : BITTTT_X11(BITTTT_OUT_A) "+v"(a11) : [u8] "v"(u8), [s8] "v"(s8));
    __asm__(BITTTT_X12(BITTTT_DPBUSD) : BITTTT_X11(BITTTT_OUT_B) "+v"(b11) : [u8] "v"(u8), [s8] "v"(s8));
#else
    BITTTT_X12(BITTTT_DPBUSD_I)
#endif
  }
  int64_t s = 0;
  BITTTT_X12(BITTTT_SUM)
  return s;
}

// Each lane gains 1 * 1 per FMA, up to 2^24 (kFp32ExactCount), where it stays.
int64_t fp32_avx512(int64_t iters) {
  const __m512 x = _mm512_set1_ps(opaque(1.0f)), y = _mm512_set1_ps(opaque(1.0f));
  BITTTT_X12(BITTTT_DECL_F)
  for (int64_t i = 0; i < iters; ++i) {
#if defined(__GNUC__)
    __asm__(BITTTT_X12(BITTTT_FMA) : BITTTT_X11(BITTTT_OUT_A) "+v"(a11) : [x] "v"(x), [y] "v"(y));
    __asm__(BITTTT_X12(BITTTT_FMA) : BITTTT_X11(BITTTT_OUT_B) "+v"(b11) : [x] "v"(x), [y] "v"(y));
#else
    BITTTT_X12(BITTTT_FMA_I)
#endif
  }
  int64_t s = 0;
  BITTTT_X12(BITTTT_SUM)
  return s;
}

}  // namespace bitttt::peak
