// Run-time CPU feature detection for GCC, Clang and MSVC: x86-64 through CPUID and XGETBV,
// AArch64 through the OS (Linux/Android getauxval, macOS sysctl, Windows
// IsProcessorFeaturePresent). Anything not recognised reads as absent, which selects the
// portable kernels.
#include "cpu_features.h"

#include <cstdint>

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__) || defined(_M_IX86)
#define BITTTT_CPU_X86 1
#if defined(_MSC_VER)
#include <intrin.h>
#else
#include <cpuid.h>
#endif
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#elif defined(__aarch64__) || defined(_M_ARM64)
#define BITTTT_CPU_ARM64 1
#if defined(__linux__)
#include <sys/auxv.h>
#elif defined(__APPLE__)
#include <sys/sysctl.h>
#elif defined(_WIN32)
#include <windows.h>
#endif
#endif

namespace bitttt {
namespace {

#if defined(BITTTT_CPU_X86)
struct Regs {
  uint32_t eax = 0, ebx = 0, ecx = 0, edx = 0;
};

Regs cpuid(uint32_t leaf, uint32_t subleaf) {
  Regs r;
#if defined(_MSC_VER)
  int v[4];
  __cpuidex(v, static_cast<int>(leaf), static_cast<int>(subleaf));
  r = {static_cast<uint32_t>(v[0]), static_cast<uint32_t>(v[1]), static_cast<uint32_t>(v[2]),
       static_cast<uint32_t>(v[3])};
#else
  __cpuid_count(leaf, subleaf, r.eax, r.ebx, r.ecx, r.edx);
#endif
  return r;
}

// XCR0: which register states the OS saves on a context switch.
uint64_t xgetbv0() {
#if defined(_MSC_VER)
  return _xgetbv(0);
#else
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));  // no -mxsave needed for the intrinsic
  return (static_cast<uint64_t>(hi) << 32) | lo;
#endif
}

inline bool bit(uint32_t reg, int b) { return (reg >> b) & 1u; }

// Linux keeps AMX's 8 KB tile state off until a process asks for it: a tile instruction
// before that raises SIGILL. The grant is for the whole process, all threads included.
bool os_grants_amx_tiles() {
#if defined(__linux__) && defined(SYS_arch_prctl)
  constexpr int kArchReqXcompPerm = 0x1023;  // ARCH_REQ_XCOMP_PERM, <asm/prctl.h>
  constexpr int kXfeatureXtiledata = 18;     // XFEATURE_XTILEDATA
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;  // no way to check the OS saves the tiles: the AVX-512 kernels instead
#endif
}

void detect_x86(CpuFeatures& f) {
  const uint32_t max_leaf = cpuid(0, 0).eax;
  if (max_leaf < 1) return;
  const Regs l1 = cpuid(1, 0);
  if (!bit(l1.ecx, 27) || !bit(l1.ecx, 28)) return;  // no OSXSAVE or no AVX
  const uint64_t xcr0 = xgetbv0();
  const bool os_ymm = (xcr0 & 0x6) == 0x6;           // SSE and AVX state
  const bool os_zmm = os_ymm && (xcr0 & 0xE0) == 0xE0;  // opmask, ZMM0-15 high halves, ZMM16-31
  if (!os_ymm || max_leaf < 7) return;
  const Regs l7 = cpuid(7, 0);
  f.fma = bit(l1.ecx, 12);
  f.avx2 = bit(l7.ebx, 5);
  const Regs l71 = l7.eax >= 1 ? cpuid(7, 1) : Regs{};
  f.avx_vnni = bit(l71.eax, 4);
  if (!os_zmm) return;
  f.avx512f = bit(l7.ebx, 16);
  f.avx512dq = bit(l7.ebx, 17);
  f.avx512bw = bit(l7.ebx, 30);
  f.avx512vl = bit(l7.ebx, 31);
  f.avx512vnni = bit(l7.ecx, 11);
  f.avx512bf16 = bit(l71.eax, 5);
  const bool os_tiles = (xcr0 & 0x60000) == 0x60000;  // XTILECFG and XTILEDATA
  f.amx_int8 = f.avx512f && f.avx512bw && f.avx512vnni && bit(l7.edx, 24) && bit(l7.edx, 25) && os_tiles &&
               os_grants_amx_tiles();
}
#endif

#if defined(BITTTT_CPU_ARM64)
bool arm64_dotprod() {
#if defined(__linux__)
  constexpr unsigned long kHwcapAsimdDp = 1ul << 20;  // HWCAP_ASIMDDP, <asm/hwcap.h>
  return (getauxval(AT_HWCAP) & kHwcapAsimdDp) != 0;
#elif defined(__APPLE__)
  int value = 0;
  size_t size = sizeof(value);
  return sysctlbyname("hw.optional.arm.FEAT_DotProd", &value, &size, nullptr, 0) == 0 && value != 0;
#elif defined(_WIN32)
#ifndef PF_ARM_V82_DP_INSTRUCTIONS_AVAILABLE
#define PF_ARM_V82_DP_INSTRUCTIONS_AVAILABLE 43
#endif
  return IsProcessorFeaturePresent(PF_ARM_V82_DP_INSTRUCTIONS_AVAILABLE) != 0;
#else
  return false;  // unknown OS: the plain NEON kernels
#endif
}
#endif

}  // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures features = [] {
    CpuFeatures f;
#if defined(BITTTT_CPU_X86)
    detect_x86(f);
#elif defined(BITTTT_CPU_ARM64)
    f.neon = true;
    f.dotprod = arm64_dotprod();
#endif
    return f;
  }();
  return features;
}

}  // namespace bitttt
