// The portable read-bandwidth kernel: plain C++, built with the baseline flags of the target
// (SSE2 on x86-64), which already read far faster than DRAM delivers.
#include <cstdint>

#include "peak/peak.h"

namespace bitttt::peak {

// Eight independent sums, so consecutive loads never wait on one chain of adds (compilers
// also vectorize this loop); unsigned, so the sum wraps instead of overflowing.
uint64_t read_sum_generic(const uint64_t* p, int64_t n) {
  constexpr int kSums = 8;
  uint64_t s[kSums] = {};
  int64_t i = 0;
  for (; i + kSums <= n; i += kSums)
    for (int j = 0; j < kSums; ++j) s[j] += p[i + j];
  for (; i < n; ++i) s[0] += p[i];
  uint64_t total = 0;
  for (uint64_t v : s) total += v;
  return total;
}

}  // namespace bitttt::peak
