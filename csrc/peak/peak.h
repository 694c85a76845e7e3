// Peak throughput of the machine at hand (issue 15): int8 dot products, FP32 FMA and
// streaming read bandwidth, measured with kernels that ship in the extension.
//
// A compute kernel runs `iters` iterations on one thread; each iteration issues the
// measured instruction once on every one of its independent accumulator chains (enough
// chains that latency never limits, few enough to stay in registers). Its inputs make every
// accumulator lane gain exactly 1 per instruction, and it returns the sum of all lanes, so
// the result is lanes_per_iter * iters: the caller checks that the work was really done and
// the compiler cannot drop it. FP32 lanes stop at 2^24, where x + 1 rounds back to x.
//
// ISA files (peak_avx2.cpp, peak_avx512.cpp) take and return plain integers, never Tensors;
// peak.cpp runs them on threads and checks arguments; module.cpp exposes it as _C.peak_*.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace bitttt::peak {

// One thread's share of a compute peak; returns the sum of its accumulator lanes.
using ComputeKernel = int64_t (*)(int64_t iters);

// Chains per kernel: AVX-512 has 32 vector registers (24 chains + 2 inputs), AVX2 16
// (12 chains + 2 inputs; vpmaddubsw also needs temporaries and int32 sums).
constexpr int64_t kChainsAvx512 = 24;
constexpr int64_t kChainsFmaAvx2 = 12;
constexpr int64_t kChainsMaddubsAvx2 = 8;
// vpmaddubsw's int16 sums are widened to int32 (vpmaddwd by 1, vpaddd) every this many
// instructions per chain: the ternary AVX2 kernel's ratio (8 runs of 4 vpmaddubsw).
constexpr int64_t kMaddubsPerWiden = 32;
// An FP32 lane holding 2^24 gains nothing from + 1: the largest count an FP32 lane keeps.
constexpr int64_t kFp32ExactCount = int64_t{1} << 24;

struct ComputeInfo {
  const char* name;         // "int8_avx512vnni", "int8_avx2", "fp32_avx512", "fp32_avx2"
  const char* kind;         // "int8" (G int8-MAC/s) or "fp32" (GFLOP/s)
  const char* isa;          // the kernel-set name it belongs to: "avx512" or "avx2"
  const char* instruction;  // what is issued, e.g. "vpdpbusd zmm"
  int64_t lanes_per_iter;   // accumulator lanes one iteration updates (chains x lanes)
  int64_t ops_per_lane;     // int8 MACs or FLOPs behind one lane update
  ComputeKernel kernel;     // nullptr where this build has no such ISA file
  bool available;           // compiled, and this CPU (and OS) runs it
};

// Every compute kernel bitttt knows, available or not (in a fixed order).
const std::vector<ComputeInfo>& compute_kernels();

struct Run {
  double seconds;     // the fastest repetition, all threads together
  uint64_t checksum;  // sum over threads of what each kernel returned (one repetition)
};

// Best of `reps` runs of kernel `name` on exactly `threads` std::threads, each doing `iters`
// iterations. Throws std::invalid_argument for an unknown name or bad count, and
// std::runtime_error for a kernel this CPU or build lacks (never runs it).
Run run_compute(const std::string& name, int threads, int64_t iters, int reps);

// Best of `reps` reads of a buffer of `bytes` (rounded down to 8 * threads), split in equal
// contiguous parts over `threads` std::threads, with read_kernel()'s code. Word i of the buffer holds i, so the checksum
// (a wrapping uint64 sum of one read) is n (n - 1) / 2 for n words.
Run run_read(int threads, int64_t bytes, int reps);

// The read kernels: the wrapping sum of n uint64 words. The portable one (peak_generic.cpp)
// serves where the CPU has no AVX2.
uint64_t read_sum_generic(const uint64_t* p, int64_t n);
// Which one run_read uses here: "avx2" (ymm loads) or "generic" (portable C++).
const char* read_kernel();

#if defined(BITTTT_X86)
int64_t int8_avx512vnni(int64_t iters);  // vpdpbusd zmm, kChainsAvx512 chains
int64_t fp32_avx512(int64_t iters);      // vfmadd231ps zmm, kChainsAvx512 chains
int64_t int8_avx2(int64_t iters);        // vpmaddubsw + vpaddw ymm, kChainsMaddubsAvx2 chains
int64_t fp32_avx2(int64_t iters);        // vfmadd231ps ymm, kChainsFmaAvx2 chains
uint64_t read_sum_avx2(const uint64_t* p, int64_t n);
#endif

}  // namespace bitttt::peak
