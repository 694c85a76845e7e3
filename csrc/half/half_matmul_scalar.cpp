// The scalar reference of half_matmul (half_matmul.h): the tests' oracle for the SIMD kernels
// and the kernel of CPUs without AVX2.
#include <cmath>
#include <cstring>

#include "half/half_matmul.h"

namespace bitttt::half {

namespace {

// IEEE binary16 to float32, subnormals, infinities and NaN included.
float f16_to_float(uint16_t h) {
  const uint32_t sign = uint32_t{h & 0x8000u} << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ffu;
  float mag;
  if (exp == 0) {
    mag = std::ldexp(static_cast<float>(mant), -24);  // zero or subnormal: mant * 2^-24
  } else if (exp == 31) {
    mag = mant == 0 ? INFINITY : NAN;
  } else {
    mag = std::ldexp(static_cast<float>(mant | 0x400u), static_cast<int>(exp) - 25);
  }
  uint32_t bits;
  std::memcpy(&bits, &mag, 4);
  bits |= sign;
  float out;
  std::memcpy(&out, &bits, 4);
  return out;
}

}  // namespace

float to_float(uint16_t v, Format f) {
  if (f == Format::f16) return f16_to_float(v);
  const uint32_t bits = uint32_t{v} << 16;  // bfloat16 is the top half of a float32
  float out;
  std::memcpy(&out, &bits, 4);
  return out;
}

void matmul_scalar(const float* x, int64_t M, int64_t K, const uint16_t* w, Format f, int64_t n0, int64_t n1,
                   float* out, int64_t ldo) {
  for (int64_t n = n0; n < n1; ++n) {
    const uint16_t* row = w + n * K;
    for (int64_t m = 0; m < M; ++m) {
      float s = 0.0f;
      for (int64_t k = 0; k < K; ++k) s += x[m * K + k] * to_float(row[k], f);
      out[m * ldo + n] = s;
    }
  }
}

}  // namespace bitttt::half
