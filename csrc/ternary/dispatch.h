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
// True while the active set is "amx": the AVX-512 set (same name, layouts and other op
// families) whose matmul runs AMX tiles for 8 or more tokens, and the int8 head for 2..16.
// "auto" picks it where cpu_features().amx_int8; BITTTT_ISA=avx512 (or set_isa("avx512"))
// turns the tiles off.
bool amx_active();
// Forces a kernel set by name ("scalar", "avx2", "avx512", "amx", "avx512_emulated", "neon",
// "neon_dotprod", or "auto").
void set_isa(const std::string& name);
// Kernel sets this build has and this CPU can run (test-only "avx512_emulated" included;
// not "amx", which reports itself as "avx512").
std::vector<std::string> available_isas();
// Kernel sets compiled into this build.
std::vector<std::string> compiled_isas();

}  // namespace bitttt::ternary
