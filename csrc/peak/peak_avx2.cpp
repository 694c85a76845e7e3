// AVX2 peak kernels (compiled with -mavx2 -mfma; run only where the CPU has them): the
// ternary AVX2 kernel's int8 step, vpmaddubsw + vpaddw into int16 sums widened by vpmaddwd,
// and vfmadd231ps ymm.
//
// GCC and Clang get inline asm (see peak_avx512.cpp). Here it is needed for more than speed:
// vpmaddubsw of two constant inputs is the same value on every chain and every iteration, so
// a compiler computes the intrinsic once and times only the vpaddw. The intrinsic fallback
// reloads its unsigned input each iteration and gives each chain its own signed one.
#include <immintrin.h>

#include <cstdint>

#include "peak/peak.h"
#include "peak/repeat.h"

// Each chain starts from its own opaque zero, so that no compiler merges identical chains.
#define BITTTT_DECL_F(i) __m256 a##i = _mm256_set1_ps(opaque(0.0f));
#define BITTTT_SUM_F(i) s += lane_sum(a##i);
#if defined(__GNUC__)
#define BITTTT_OUT(i) "+x"(a##i),
#define BITTTT_FMA(i) "vfmadd231ps %[y], %[x], %" #i "\n\t"
// Two temporaries in turn: register renaming removes the false dependence between them.
#define BITTTT_MADDUBS(i, t) "vpmaddubsw %[s8], %[u8], %[t" #t "]\n\t vpaddw %[t" #t "], %" #i ", %" #i "\n\t"
#else
#define BITTTT_FMA_I(i) a##i = _mm256_fmadd_ps(x, y, a##i);
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

static_assert(kChainsFmaAvx2 == 12 && kChainsMaddubsAvx2 == 8, "the chains written out below");
constexpr int kLanes = 8;

int64_t lane_sum(__m256i v) {
  alignas(32) int32_t lanes[kLanes];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), v);
  int64_t s = 0;
  for (int32_t x : lanes) s += x;
  return s;
}

int64_t lane_sum(__m256 v) {
  alignas(32) float lanes[kLanes];
  _mm256_store_ps(lanes, v);
  int64_t s = 0;
  for (float x : lanes) s += static_cast<int64_t>(x);  // integers below 2^24: exact
  return s;
}

}  // namespace

// Each int16 lane gains u8 . s8 = 1*2 + 1*(-1) = 1 per vpmaddubsw (the -1 checks that the
// second operand is signed); after at most kMaddubsPerWiden of them (32, far from int16's
// limit) vpmaddwd by 1 adds lane pairs into the int32 sums, as the ternary kernel does.
int64_t int8_avx2(int64_t iters) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i sum0 = _mm256_setzero_si256(), sum1 = _mm256_setzero_si256();
#if defined(__GNUC__)
  const __m256i u8 = _mm256_set1_epi8(opaque<char>(1)), s8 = _mm256_set1_epi16(opaque<short>(static_cast<short>(0xff02)));
#else
  volatile __m256i u8_in = _mm256_set1_epi8(1);  // reloaded each step: no hoisting
  const __m256i s8[kChainsMaddubsAvx2] = {  // byte pairs summing to 1, one per chain: no CSE
      _mm256_set1_epi16(static_cast<short>(0xff02)), _mm256_set1_epi16(0x0001), _mm256_set1_epi16(0x0100),
      _mm256_set1_epi16(static_cast<short>(0xfe03)), _mm256_set1_epi16(0x02ff),
      _mm256_set1_epi16(static_cast<short>(0xfd04)), _mm256_set1_epi16(0x03fe),
      _mm256_set1_epi16(static_cast<short>(0xfc05))};
#endif
  for (int64_t g = 0; g < iters; g += kMaddubsPerWiden) {
    const int64_t steps = iters - g < kMaddubsPerWiden ? iters - g : kMaddubsPerWiden;
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    for (int64_t i = 0; i < steps; ++i) {
#if defined(__GNUC__)
      __m256i t0, t1;
      __asm__(BITTTT_MADDUBS(0, 0) BITTTT_MADDUBS(1, 1) BITTTT_MADDUBS(2, 0) BITTTT_MADDUBS(3, 1)
              BITTTT_MADDUBS(4, 0) BITTTT_MADDUBS(5, 1) BITTTT_MADDUBS(6, 0) BITTTT_MADDUBS(7, 1)
              : "+x"(a0), "+x"(a1), "+x"(a2), "+x"(a3), "+x"(a4), "+x"(a5), "+x"(a6), "+x"(a7),
                [t0] "=&x"(t0), [t1] "=&x"(t1)
              : [u8] "x"(u8), [s8] "x"(s8));
#else
      const __m256i u8 = u8_in;
      a0 = _mm256_add_epi16(a0, _mm256_maddubs_epi16(u8, s8[0]));
      a1 = _mm256_add_epi16(a1, _mm256_maddubs_epi16(u8, s8[1]));
      a2 = _mm256_add_epi16(a2, _mm256_maddubs_epi16(u8, s8[2]));
      a3 = _mm256_add_epi16(a3, _mm256_maddubs_epi16(u8, s8[3]));
      a4 = _mm256_add_epi16(a4, _mm256_maddubs_epi16(u8, s8[4]));
      a5 = _mm256_add_epi16(a5, _mm256_maddubs_epi16(u8, s8[5]));
      a6 = _mm256_add_epi16(a6, _mm256_maddubs_epi16(u8, s8[6]));
      a7 = _mm256_add_epi16(a7, _mm256_maddubs_epi16(u8, s8[7]));
#endif
    }
    sum0 = _mm256_add_epi32(sum0, _mm256_add_epi32(_mm256_madd_epi16(a0, ones), _mm256_madd_epi16(a1, ones)));
    sum1 = _mm256_add_epi32(sum1, _mm256_add_epi32(_mm256_madd_epi16(a2, ones), _mm256_madd_epi16(a3, ones)));
    sum0 = _mm256_add_epi32(sum0, _mm256_add_epi32(_mm256_madd_epi16(a4, ones), _mm256_madd_epi16(a5, ones)));
    sum1 = _mm256_add_epi32(sum1, _mm256_add_epi32(_mm256_madd_epi16(a6, ones), _mm256_madd_epi16(a7, ones)));
  }
  return lane_sum(sum0) + lane_sum(sum1);
}

// Each lane gains 1 * 1 per FMA, up to 2^24 (kFp32ExactCount), where it stays.
int64_t fp32_avx2(int64_t iters) {
  const __m256 x = _mm256_set1_ps(opaque(1.0f)), y = _mm256_set1_ps(opaque(1.0f));
  BITTTT_X12(BITTTT_DECL_F)
  for (int64_t i = 0; i < iters; ++i) {
#if defined(__GNUC__)
    __asm__(BITTTT_X12(BITTTT_FMA) : BITTTT_X11(BITTTT_OUT) "+x"(a11) : [x] "x"(x), [y] "x"(y));
#else
    BITTTT_X12(BITTTT_FMA_I)
#endif
  }
  int64_t s = 0;
  BITTTT_X12(BITTTT_SUM_F)
  return s;
}

// The streaming read with ymm loads: on an AVX-512 EPYC (Zen 5) one thread reads DRAM 10-20%
// faster with it than with the portable kernel's SSE2 code, and faster than with zmm loads.
uint64_t read_sum_avx2(const uint64_t* p, int64_t n) {
  constexpr int64_t kWords = 16;  // 4 loads of 4 words, into 4 independent sums
  __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
  int64_t i = 0;
  for (; i + kWords <= n; i += kWords) {
    s0 = _mm256_add_epi64(s0, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i)));
    s1 = _mm256_add_epi64(s1, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 4)));
    s2 = _mm256_add_epi64(s2, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 8)));
    s3 = _mm256_add_epi64(s3, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 12)));
  }
  alignas(32) uint64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), _mm256_add_epi64(_mm256_add_epi64(s0, s1), _mm256_add_epi64(s2, s3)));
  return lanes[0] + lanes[1] + lanes[2] + lanes[3] + read_sum_generic(p + i, n - i);
}

}  // namespace bitttt::peak
