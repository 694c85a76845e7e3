// The NEON BT2 kernels with SDOT (vdotq_s32, Armv8.2 FEAT_DotProd): ternary_linear_neon.cpp
// built again with -march=armv8.2-a+dotprod. Chosen only when the CPU reports the
// dot-product extension (cpu_features.cpp), so no other file is built with that flag.
#define BITTTT_NEON_DOTPROD 1
#include "ternary/ternary_linear_neon.cpp"
