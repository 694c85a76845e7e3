// What the CPU we run on can do, read once at run time (never from build-host macros).
#pragma once

namespace bitttt {

struct CpuFeatures {
  // x86-64: each flag also requires the OS to save the registers it uses (XCR0).
  bool avx2 = false;
  bool fma = false;
  bool avx512f = false;
  bool avx512bw = false;
  bool avx512vl = false;
  bool avx512dq = false;
  bool avx512vnni = false;
  bool avx512bf16 = false;
  bool avx_vnni = false;
  // AMX tiles with int8 dot products (TDPBSSD): the CPU has them, XCR0 enables the tile state
  // and the OS granted it to this process (Linux: arch_prctl ARCH_REQ_XCOMP_PERM, asked once
  // here). False on other OSes, where we cannot check that grant.
  bool amx_int8 = false;
  // AArch64: Advanced SIMD is part of the baseline; the dot-product extension (SDOT/UDOT,
  // FEAT_DotProd, Armv8.2+) is optional and asked of the OS.
  bool neon = false;
  bool dotprod = false;
};

const CpuFeatures& cpu_features();

}  // namespace bitttt
