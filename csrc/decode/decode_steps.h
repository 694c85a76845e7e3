// Pieces shared by the one-call decode ops (bitnet_decode_cpu.cpp for Hugging Face BitNet,
// bitttt_decode_cpu.cpp for bitttt's own models): the activation dtypes, the stage scheme the
// workers of one call share (see bitnet_decode_cpu.cpp's header comment), and the small float
// steps both models have (rotate-half RoPE, a float32 dot product). Header-only; in an
// anonymous namespace like ternary/bt2.h's helpers, so each file gets its own copy.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

#include "ternary/bt2.h"

namespace bitttt::decode {
namespace {

using namespace bitttt::ternary;

// How long a worker spins for a stage's last task before it sleeps: a 64-row task of the 2B
// model takes 2-20 us, a futex sleep and wake-up about as much again.
constexpr std::chrono::microseconds kSpinBeforeSleep{50};

// Activation values in the model's dtype: float32 as it is, bfloat16 as its raw bits.
struct F32 {
  using T = float;
  static float load(T v) { return v; }
  static T store(float f) { return f; }
  static constexpr OutKind kOut = OutKind::Float32;
};
struct BF16 {
  using T = uint16_t;
  static float load(T v) { return bf16_to_float(v); }
  static T store(float f) { return float_to_bf16(f); }
  static constexpr OutKind kOut = OutKind::BFloat16;
};

inline void cpu_relax() {
#if defined(__x86_64__) || defined(_M_X64)
  _mm_pause();
#endif
}

// One stage's tasks: `next` hands them out, `done` counts the finished ones.
struct alignas(64) Stage {
  std::atomic<int64_t> next{0};
  alignas(64) std::atomic<int64_t> done{0};
};

// Where workers sleep when a stage's wait outlasts the spin; one per call.
struct Sleep {
  std::mutex mutex;
  std::condition_variable cv;
  std::atomic<int> sleepers{0};
};

// Claims and runs tasks of `s` until none is left, then waits until all n are finished (their
// outputs visible: the done counter's read-modify-writes and loads are sequentially consistent).
// `prepare` runs first, only if a task may still be claimed: a worker late to a finished stage
// must not read buffers a later stage is already overwriting, and does not need to.
template <class Prepare, class Task>
void run_stage(Stage& s, Sleep& sleep, int64_t n, Prepare prepare, Task task) {
  if (s.next.load(std::memory_order_relaxed) < n) {
    prepare();
    for (int64_t t; (t = s.next.fetch_add(1, std::memory_order_relaxed)) < n;) {
      task(t);
      // The last task wakes the sleepers. No wake-up is lost: a sleeper counts itself before it
      // reads `done` (both seq_cst), so it sees this task's increment or this reads its count,
      // and it holds the mutex from that read until it sleeps.
      if (s.done.fetch_add(1) + 1 == n && sleep.sleepers.load() > 0) {
        std::lock_guard<std::mutex> lock(sleep.mutex);
        sleep.cv.notify_all();
      }
    }
  }
  const auto start = std::chrono::steady_clock::now();
  while (s.done.load() < n) {
    for (int i = 0; i < 32; ++i) cpu_relax();
    if (std::chrono::steady_clock::now() - start < kSpinBeforeSleep) continue;
    std::unique_lock<std::mutex> lock(sleep.mutex);
    sleep.sleepers.fetch_add(1);
    sleep.cv.wait(lock, [&] { return s.done.load() >= n; });
    sleep.sleepers.fetch_sub(1);
  }
}

// bitttt.nn.rope.apply_rope's "half" convention, one head: out = x*cos + cat(-x2, x1)*sin,
// each product and the sum rounded to T as the three torch ops round them.
template <class V>
void rope(const typename V::T* x, const typename V::T* cos, const typename V::T* sin, int64_t D, float* out) {
  const int64_t h = D / 2;
  for (int64_t i = 0; i < D; ++i) {
    const float rot = i < h ? -V::load(x[i + h]) : V::load(x[i - h]);
    const float a = V::load(V::store(V::load(x[i]) * V::load(cos[i])));
    const float b = V::load(V::store(rot * V::load(sin[i])));
    out[i] = V::load(V::store(a + b));
  }
}

// sum_d a[d] * b[d] in float32, eight partial sums so the compiler can keep them in vectors.
inline float dot(const float* a, const float* b, int64_t D) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t d = 0;
  for (; d + 8 <= D; d += 8)
    for (int j = 0; j < 8; ++j) acc[j] += a[d + j] * b[d + j];
  float sum = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; d < D; ++d) sum += a[d] * b[d];
  return sum;
}

}  // namespace
}  // namespace bitttt::decode
