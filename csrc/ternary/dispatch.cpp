#include "ternary/dispatch.h"

#include <atomic>
#include <cstdlib>
#include <stdexcept>

#include "cpu_features.h"

namespace bitttt::ternary {
namespace {

std::atomic<const Bt2Kernels*> g_active{nullptr};

const Bt2Kernels* kernels_by_name(const std::string& name) {
  if (name == "scalar") return &bt2_kernels_scalar();
#if defined(BITTTT_X86)
  const CpuFeatures& f = cpu_features();
  if (name == "avx2" && f.avx2 && f.fma) return &bt2_kernels_avx2();
  if (name == "avx512" && f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq && f.avx512vnni)
    return &bt2_kernels_avx512vnni();
#endif
#if defined(BITTTT_AMX)
  if (name == "amx" && cpu_features().amx_int8) return &bt2_kernels_amx();
#endif
#if defined(BITTTT_ARM64)
  if (name == "neon" && cpu_features().neon) return &bt2_kernels_neon();
  if (name == "neon_dotprod" && cpu_features().dotprod) return &bt2_kernels_neon_dotprod();
#endif
#if defined(BITTTT_AVX512_EMULATION)
  if (name == "avx512_emulated" && cpu_features().avx2) return &bt2_kernels_avx512vnni_emulated();
#endif
  return nullptr;
}

// The fastest real (not emulated) kernel set this CPU runs.
std::string best_isa() {
  for (const char* name : {"amx", "avx512", "avx2", "neon_dotprod", "neon"})
    if (kernels_by_name(name)) return name;
  return "scalar";
}

std::string join(const std::vector<std::string>& names) {
  std::string s;
  for (const auto& n : names) s += (s.empty() ? "" : ", ") + n;
  return s;
}

const Bt2Kernels& choose(const std::string& name) {
  if (name.empty() || name == "auto") return *kernels_by_name(best_isa());
  const Bt2Kernels* k = kernels_by_name(name);
  if (!k)
    throw std::runtime_error("bitttt: ISA '" + name + "' is not available on this CPU/build (available: " +
                             join(available_isas()) + "); unset BITTTT_ISA or pick one of those");
  return *k;
}

}  // namespace

std::vector<std::string> compiled_isas() {
  std::vector<std::string> names{"scalar"};
#if defined(BITTTT_X86)
  names.insert(names.end(), {"avx2", "avx512"});
#endif
#if defined(BITTTT_ARM64)
  names.insert(names.end(), {"neon", "neon_dotprod"});
#endif
#if defined(BITTTT_AVX512_EMULATION)
  names.push_back("avx512_emulated");
#endif
  return names;
}

std::vector<std::string> available_isas() {
  std::vector<std::string> names;
  for (const auto& n : compiled_isas())
    if (kernels_by_name(n)) names.push_back(n);
  return names;
}

const Bt2Kernels& active_kernels() {
  const Bt2Kernels* k = g_active.load(std::memory_order_acquire);
  if (k) return *k;
  const char* env = std::getenv("BITTTT_ISA");
  const Bt2Kernels& chosen = choose(env ? env : "auto");
  g_active.store(&chosen, std::memory_order_release);
  return chosen;
}

const Lut16Kernels& active_lut16_kernels() {
  [[maybe_unused]] const std::string name = active_kernels().name;
#if defined(BITTTT_X86)
  if (name == "avx2" || name == "avx512" || name == "avx512_emulated") return lut16_kernels_avx2();
#endif
#if defined(BITTTT_ARM64)
  if (name == "neon" || name == "neon_dotprod") return lut16_kernels_neon();
#endif
  return lut16_kernels_scalar();
}

const Trit5Kernels& active_trit5_kernels() {
#if defined(BITTTT_X86)
  const std::string name = active_kernels().name;
  if (name == "avx512") return trit5_kernels_avx512();
  if (name == "avx2" || name == "avx512_emulated") return trit5_kernels_avx2();
#endif
  return trit5_kernels_scalar();
}

bool amx_active() {
#if defined(BITTTT_AMX)
  return &active_kernels() == &bt2_kernels_amx();
#else
  return false;
#endif
}

void set_isa(const std::string& name) { g_active.store(&choose(name), std::memory_order_release); }

}  // namespace bitttt::ternary
