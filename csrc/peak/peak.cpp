// Runs the peak kernels (peak.h) on exactly the requested number of std::threads, best of
// several runs, after checking arguments and that this CPU has the kernel's ISA.
//
// std::thread, not torch's pool: at::parallel_for may use fewer threads than asked for small
// work and is not in the stable ABI this extension targets; a peak must say how many threads
// produced it. Threads are started before the clock and released together.
#include "peak/peak.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <limits>
#include <memory>
#include <stdexcept>
#include <thread>

#include "cpu_features.h"

namespace bitttt::peak {
namespace {

constexpr int kMaxThreads = 4096;

std::vector<ComputeInfo> make_table() {
  const CpuFeatures& f = cpu_features();
  // peak_avx512.cpp is compiled with the F, BW, VL, DQ and VNNI flags (as the ternary AVX-512
  // file is), so the compiler may use any of them in either kernel: both need all five (a CPU
  // with AVX-512F but no VNNI, such as Skylake-X, reports no zmm FMA peak either).
  const bool avx512 = f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq && f.avx512vnni;
  ComputeKernel vnni = nullptr, fma512 = nullptr, maddubs = nullptr, fma256 = nullptr;
#if defined(BITTTT_X86)
  vnni = &int8_avx512vnni, fma512 = &fp32_avx512, maddubs = &int8_avx2, fma256 = &fp32_avx2;
#endif
  constexpr int64_t kZmmInt32 = 16, kYmmInt16 = 16, kZmmF32 = 16, kYmmF32 = 8;
  return {
      {"int8_avx512vnni", "int8", "avx512", "vpdpbusd zmm", kChainsAvx512 * kZmmInt32, 4, vnni,
       vnni && avx512},
      {"int8_avx2", "int8", "avx2", "vpmaddubsw+vpaddw ymm", kChainsMaddubsAvx2 * kYmmInt16, 2, maddubs,
       maddubs && f.avx2 && f.fma},  // the file has -mfma too, as the ternary AVX2 one
      {"fp32_avx512", "fp32", "avx512", "vfmadd231ps zmm", kChainsAvx512 * kZmmF32, 2, fma512,
       fma512 && avx512},
      {"fp32_avx2", "fp32", "avx2", "vfmadd231ps ymm", kChainsFmaAvx2 * kYmmF32, 2, fma256,
       fma256 && f.avx2 && f.fma},
  };
}

void check_counts(const char* what, int threads, int reps) {
  if (threads < 1 || threads > kMaxThreads)
    throw std::invalid_argument(std::string(what) + ": threads=" + std::to_string(threads) + " must be in 1.." +
                                std::to_string(kMaxThreads));
  if (reps < 1) throw std::invalid_argument(std::string(what) + ": reps=" + std::to_string(reps) + " must be >= 1");
}

// One run of work(t) on threads t = 0..threads-1, timed from their common release to the
// last join; returns the seconds and the wrapping sum of what they returned.
template <typename Work>
Run run_once(int threads, Work&& work) {
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::vector<uint64_t> sums(threads, 0);
  std::vector<std::thread> pool;
  pool.reserve(threads);
  try {
    for (int t = 0; t < threads; ++t)
      pool.emplace_back([&, t] {
        ready.fetch_add(1, std::memory_order_acq_rel);
        while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
        sums[t] = work(t);
      });
  } catch (...) {  // the OS refused a thread: let those started finish (a joinable one would abort)
    go.store(true, std::memory_order_release);
    for (auto& th : pool) th.join();
    throw;
  }
  while (ready.load(std::memory_order_acquire) < threads) std::this_thread::yield();
  const auto t0 = std::chrono::steady_clock::now();
  go.store(true, std::memory_order_release);
  for (auto& th : pool) th.join();
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  uint64_t checksum = 0;
  for (uint64_t v : sums) checksum += v;
  return {s, checksum};
}

template <typename Work>
Run best_of(int threads, int reps, Work&& work) {
  Run best{std::numeric_limits<double>::infinity(), 0};
  for (int r = 0; r < reps; ++r) {
    const Run run = run_once(threads, work);
    best = {std::min(best.seconds, run.seconds), run.checksum};
  }
  return best;
}

using ReadKernel = uint64_t (*)(const uint64_t*, int64_t);

ReadKernel read_sum() {
#if defined(BITTTT_X86)
  if (cpu_features().avx2) return &read_sum_avx2;
#endif
  return &read_sum_generic;
}

}  // namespace

const char* read_kernel() { return read_sum() == &read_sum_generic ? "generic" : "avx2"; }

const std::vector<ComputeInfo>& compute_kernels() {
  static const std::vector<ComputeInfo> table = make_table();
  return table;
}

Run run_compute(const std::string& name, int threads, int64_t iters, int reps) {
  const auto& table = compute_kernels();
  const auto it = std::find_if(table.begin(), table.end(), [&](const ComputeInfo& k) { return name == k.name; });
  if (it == table.end()) {
    std::string names;
    for (const auto& k : table) names += (names.empty() ? "" : ", ") + std::string(k.name);
    throw std::invalid_argument("peak_compute: unknown kernel '" + name + "' (known: " + names + ")");
  }
  if (!it->available)
    throw std::runtime_error("peak_compute: kernel '" + name + "' needs " + it->isa +
                             (it->kernel ? ", which this CPU (or OS) lacks" : ", which this build lacks") +
                             "; pick one of those _C.peak_kernels() lists as available");
  check_counts("peak_compute", threads, reps);
  if (iters < 1) throw std::invalid_argument("peak_compute: iters=" + std::to_string(iters) + " must be >= 1");
  const ComputeKernel kernel = it->kernel;
  return best_of(threads, reps, [&](int) { return static_cast<uint64_t>(kernel(iters)); });
}

Run run_read(int threads, int64_t bytes, int reps) {
  check_counts("peak_read", threads, reps);
  const int64_t n = bytes / 8 / threads * threads;  // words; every thread reads as many
  if (n < 1)
    throw std::invalid_argument("peak_read: bytes=" + std::to_string(bytes) + " must be at least 8 per thread");
  std::unique_ptr<uint64_t[]> buf(new uint64_t[n]);
  const int64_t part = n / threads;
  uint64_t* p = buf.get();
  // Each thread writes the part it will read (first touch: the pages land on its node).
  run_once(threads, [&](int t) {
    for (int64_t i = t * part; i < (t + 1) * part; ++i) p[i] = static_cast<uint64_t>(i);
    return uint64_t{0};
  });
  const ReadKernel sum = read_sum();
  return best_of(threads, reps, [&](int t) { return sum(p + t * part, part); });
}

}  // namespace bitttt::peak
