// Test build of the AVX-512 VNNI kernels on top of SIMDe (portable implementations of the
// intrinsics, here running on AVX2), so a CPU without AVX-512 still checks their logic
// bit for bit. Compiled only when the SIMDe headers are found; never chosen by "auto".
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>

#define BITTTT_AVX512_EMULATED 1
#define BITTTT_AVX512_KERNELS bt2_kernels_avx512vnni_emulated
#define BITTTT_AVX512_NAME "avx512_emulated"
#include "ternary/ternary_linear_avx512vnni.cpp"
