// silu_mul's AVX-512F kernels (silu_mul.h): 16 floats a step, a Cephes-style polynomial exp
// (range reduction by ln 2 in two parts, degree-6 polynomial, 2^n through the exponent bits),
// within a few ulp of std::exp; the tail runs through a masked/partial vector of the same code.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "train/silu_mul.h"

namespace bitttt::train::avx512 {
namespace {

using V = __m512;
constexpr int64_t kW = 16;

inline V set1(float v) { return _mm512_set1_ps(v); }
inline V add(V a, V b) { return _mm512_add_ps(a, b); }
inline V sub(V a, V b) { return _mm512_sub_ps(a, b); }
inline V mul(V a, V b) { return _mm512_mul_ps(a, b); }
inline V div(V a, V b) { return _mm512_div_ps(a, b); }
inline V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
inline V fnmadd(V a, V b, V c) { return _mm512_fnmadd_ps(a, b, c); }  // c - a*b
inline V round_nearest(V a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
// max and min return their second operand when either is NaN: a NaN in a passes through
inline V clamp(V a, V lo, V hi) { return _mm512_min_ps(hi, _mm512_max_ps(lo, a)); }
inline V pow2i(V n) {
  const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_castsi512_ps(e);
}
inline __mmask16 tail_mask(int64_t m) { return static_cast<__mmask16>((1u << m) - 1u); }
inline V load(const float* p, int64_t m) {
  return m == kW ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(tail_mask(m), p);
}
inline void store(float* p, V v, int64_t m) {
  if (m == kW) _mm512_storeu_ps(p, v);
  else _mm512_mask_storeu_ps(p, tail_mask(m), v);
}

// exp(a) for a in [-80, 80] (the caller clamps).
inline V exp_poly(V a) {
  const V n = round_nearest(mul(a, set1(1.44269504088896341f)));
  V r = fnmadd(n, set1(0.693359375f), a);
  r = fnmadd(n, set1(-2.12194440e-4f), r);
  V p = set1(1.9875691500e-4f);
  p = fmadd(p, r, set1(1.3981999507e-3f));
  p = fmadd(p, r, set1(8.3334519073e-3f));
  p = fmadd(p, r, set1(4.1665795894e-2f));
  p = fmadd(p, r, set1(1.6666665459e-1f));
  p = fmadd(p, r, set1(5.0000001201e-1f));
  p = fmadd(p, mul(r, r), add(r, set1(1.0f)));
  return mul(p, pow2i(n));
}

inline V sigmoid(V g) {
  const V a = clamp(sub(set1(0.0f), g), set1(-kSiluExpClamp), set1(kSiluExpClamp));
  return div(set1(1.0f), add(set1(1.0f), exp_poly(a)));
}

void forward(const float* h, float* y, int64_t n) {
  const float* u = h + n;
  for (int64_t i = 0; i < n; i += kW) {
    const int64_t m = std::min<int64_t>(kW, n - i);
    const V g = load(h + i, m), s = sigmoid(g);
    store(y + i, mul(mul(g, s), load(u + i, m)), m);
  }
}

void backward(const float* dy, const float* h, float* dh, int64_t n) {
  const float* u = h + n;
  for (int64_t i = 0; i < n; i += kW) {
    const int64_t m = std::min<int64_t>(kW, n - i);
    const V g = load(h + i, m), s = sigmoid(g), d = load(dy + i, m);
    const V one = set1(1.0f);
    const V dg = mul(mul(mul(d, load(u + i, m)), s), add(one, mul(g, sub(one, s))));
    store(dh + i, dg, m);
    store(dh + n + i, mul(d, mul(g, s)), m);
  }
}

// sigmoid(2u), u = k·(g + c·g³): 0.5·(1 + tanh(u))
inline V gelu_sigmoid(V g) {
  return sigmoid(mul(set1(2.0f * kGeluK), fmadd(mul(set1(kGeluC), mul(g, g)), g, g)));
}

void gelu_forward(const float* g, const float* y, float* out, int64_t n) {
  for (int64_t i = 0; i < n; i += kW) {
    const int64_t m = std::min<int64_t>(kW, n - i);
    const V x = load(g + i, m);
    store(out + i, mul(mul(x, gelu_sigmoid(x)), load(y + i, m)), m);
  }
}

void gelu_backward(const float* dy, const float* g, const float* y, float* dg, float* dy_in, int64_t n) {
  const V one = set1(1.0f);
  for (int64_t i = 0; i < n; i += kW) {
    const int64_t m = std::min<int64_t>(kW, n - i);
    const V x = load(g + i, m), s = gelu_sigmoid(x), d = load(dy + i, m);
    const V du = mul(set1(2.0f * kGeluK), fmadd(set1(3.0f * kGeluC), mul(x, x), one));
    const V dgelu = fmadd(mul(mul(x, s), sub(one, s)), du, s);
    store(dg + i, mul(mul(d, load(y + i, m)), dgelu), m);
    store(dy_in + i, mul(d, mul(x, s)), m);
  }
}

}  // namespace

SiluMulKernels silu_mul_kernels() { return {"avx512", &forward, &backward, &gelu_forward, &gelu_backward}; }

}  // namespace bitttt::train::avx512
