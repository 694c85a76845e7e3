// What the CPU we run on can do, read once at run time (never from build-host macros).
#pragma once

namespace bitttt {

struct CpuFeatures {
  bool avx2 = false;
  bool fma = false;
  bool avx512f = false;
  bool avx512bw = false;
  bool avx512vl = false;
  bool avx512vnni = false;
  bool avx512bf16 = false;
  bool avx_vnni = false;
};

const CpuFeatures& cpu_features();

}  // namespace bitttt
