// AVX-512 VNNI int8 GEMM on vpdpbusd: 64 bytes of a weight row times 64 bytes of a token, four
// products summed into each of 16 int32 lanes, per instruction. vpdpbusd multiplies unsigned
// by signed bytes, so a token goes in as u = x + 128 (x ^ 0x80, 0..255) and a row's dot is
//   sum_k x[k] w[k] = sum_k u[k] w[k] - 128 * sum_k w[k],
// sum w coming from one more vpdpbusd of ones against the row, shared by all tokens. Unlike the
// AVX2 kernel's sign trick this takes any int8, -128 included. The sums may pass 2^31 (255 *
// 128 * K): vpdpbusd adds without saturating, so they wrap, and the difference is exact modulo
// 2^32; the true dot fits int32 (kMaxK), so it is the result. Every token costs a load, an xor
// and a vpdpbusd per 64 weights, against 4 instructions per 32 weights in the AVX2 kernel: at 8
// tokens (bitttt serve's batch) the AVX2 kernel is compute-bound on the 2B head, this one is not.
//
// As the AVX2 kernel: one row at a time (a single address stream), a software prefetch 1 KiB
// ahead, tokens in blocks (of up to 8 here: 8 accumulators, the sum and the row in 11 of the 32
// zmm registers), a row read once per block. The entry hands this kernel 64 rows at a time, so
// a second block of tokens reads them again from L2, not from memory.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "int8/int8_matmul.h"

namespace bitttt::int8 {
namespace {

constexpr int64_t kTokenBlock = 8;
constexpr int64_t kPrefetchBytes = 1024;

// acc += (x ^ 0x80) * w over 64 bytes (x and w as loaded; lanes past a tail are zero in w).
inline __m512i dot64(__m512i acc, __m512i x, __m512i w, __m512i bias) {
  return _mm512_dpbusd_epi32(acc, _mm512_xor_si512(x, bias), w);
}

// One weight row w [K] against tokens [0, MB) of x: out[m * ldo] for each.
template <int MB>
void row(const int8_t* x, int64_t K, const int8_t* w, int32_t* out, int64_t ldo) {
  const __m512i bias = _mm512_set1_epi8(static_cast<char>(0x80)), ones = _mm512_set1_epi8(1);
  __m512i acc[MB], wsum = _mm512_setzero_si512();
  for (int m = 0; m < MB; ++m) acc[m] = _mm512_setzero_si512();
  int64_t k = 0;
  for (; k + 64 <= K; k += 64) {
    // past the row's end it fetches the next row, which comes next
    _mm_prefetch(reinterpret_cast<const char*>(w + k + kPrefetchBytes), _MM_HINT_T0);
    const __m512i wv = _mm512_loadu_si512(w + k);
    wsum = _mm512_dpbusd_epi32(wsum, ones, wv);
    for (int m = 0; m < MB; ++m) acc[m] = dot64(acc[m], _mm512_loadu_si512(x + m * K + k), wv, bias);
  }
  if (k < K) {  // the last K % 64 weights: masked loads, zero weights past the end
    const __mmask64 tail = (~uint64_t{0}) >> (64 - (K - k));
    const __m512i wv = _mm512_maskz_loadu_epi8(tail, w + k);
    wsum = _mm512_dpbusd_epi32(wsum, ones, wv);
    for (int m = 0; m < MB; ++m) acc[m] = dot64(acc[m], _mm512_maskz_loadu_epi8(tail, x + m * K + k), wv, bias);
  }
  // In uint32: the wrapped sums' difference, exact modulo 2^32 (see the header).
  const uint32_t offset = static_cast<uint32_t>(_mm512_reduce_add_epi32(wsum)) << 7;
  for (int m = 0; m < MB; ++m)
    out[m * ldo] = static_cast<int32_t>(static_cast<uint32_t>(_mm512_reduce_add_epi32(acc[m])) - offset);
}

template <int MB>
void block(const int8_t* x, int64_t K, const int8_t* w, int64_t n0, int64_t n1, int32_t* out, int64_t ldo) {
  for (int64_t n = n0; n < n1; ++n) row<MB>(x, K, w + n * K, out + n, ldo);
}

using BlockFn = void (*)(const int8_t*, int64_t, const int8_t*, int64_t, int64_t, int32_t*, int64_t);
constexpr BlockFn kBlocks[kTokenBlock] = {block<1>, block<2>, block<3>, block<4>,
                                          block<5>, block<6>, block<7>, block<8>};

}  // namespace

void matmul_avx512(const int8_t* x, int64_t M, int64_t K, const int8_t* w, int64_t n0, int64_t n1, int32_t* out,
                   int64_t ldo) {
  for (int64_t m0 = 0; m0 < M; m0 += kTokenBlock)
    kBlocks[std::min(M - m0, kTokenBlock) - 1](x + m0 * K, K, w, n0, n1, out + m0 * ldo, ldo);
}

}  // namespace bitttt::int8
