// The reference int8 GEMM: plain loops, int32 sums (what every other kernel is tested against),
// exact for any int8 inputs.
#include "int8/int8_matmul.h"

namespace bitttt::int8 {

void matmul_scalar(const int8_t* x, int64_t M, int64_t K, const int8_t* w, int64_t n0, int64_t n1, int32_t* out,
                   int64_t ldo) {
  for (int64_t n = n0; n < n1; ++n) {
    const int8_t* wn = w + n * K;
    for (int64_t m = 0; m < M; ++m) {
      const int8_t* xm = x + m * K;
      int32_t acc = 0;
      for (int64_t k = 0; k < K; ++k) acc += int32_t{xm[k]} * int32_t{wn[k]};
      out[m * ldo + n] = acc;
    }
  }
}

}  // namespace bitttt::int8
