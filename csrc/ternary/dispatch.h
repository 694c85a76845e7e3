// Which BT2 kernel set runs: the best this CPU supports, or the one BITTTT_ISA / set_isa() asks for.
#pragma once

#include <string>
#include <vector>

#include "ternary/bt2.h"
#include "ternary/lut16.h"
#include "ternary/trit5.h"

namespace bitttt::ternary {

// The kernels in use. Chosen on first call from BITTTT_ISA (scalar|avx2|avx512|neon|neon_dotprod)
// or the CPU; throws std::runtime_error naming the choices if BITTTT_ISA asks for one this
// CPU lacks.
const Bt2Kernels& active_kernels();
// The lut16 kernels (lut16.h) that go with the active kernel set: AVX2 lookups for avx2 and
// avx512 (the CPU has AVX2; whether they beat the avx512 BT2 kernel is measured per shape),
// the scalar reference otherwise.
const Lut16Kernels& active_lut16_kernels();
// The trit5 kernels (trit5.h) of the active kernel set's ISA: avx2, avx512 (avx512_emulated
// runs the AVX2 ones), the scalar reference otherwise (NEON has none yet).
const Trit5Kernels& active_trit5_kernels();
// Forces a kernel set by name ("scalar", "avx2", "avx512", "avx512_emulated", "neon",
// "neon_dotprod", or "auto").
void set_isa(const std::string& name);
// Kernel sets this build has and this CPU can run (test-only "avx512_emulated" included).
std::vector<std::string> available_isas();
// Kernel sets compiled into this build.
std::vector<std::string> compiled_isas();

}  // namespace bitttt::ternary
