// The trainer's per-step reads of every parameter and gradient (bitttt.train.Trainer.train_step;
// issue 26), float32 on the CPU, each one parallel pass over a list of tensors:
//   clip_grad_norm_: the global L2 norm of the gradients, then (if it exceeds max_norm) the
//     gradients scaled in place by max_norm / (norm + 1e-6): torch.nn.utils.clip_grad_norm_'s
//     formula, where its foreach path runs a norm per tensor, a stack, a norm and a mul_ per tensor
//     (~90 tensors for the tiny TTT model, each op a thread-pool wake-up);
//   max_abs: max |w| over every tensor (NaN if any element is NaN), the weight check after the
//     optimizer step, where an aminmax, a maximum per tensor and a stack took as many ops.
// The tensors are cut into chunks of at most kChunk elements; each chunk's partial result lands in
// its own slot and the slots are combined in order, so the norm does not depend on the thread count.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "train/checks.h"

namespace bitttt::train {
namespace {

using torch::stable::Tensor;

constexpr int64_t kChunk = 1 << 15;  // elements per task
constexpr int64_t kLanes = 16;       // partial sums per chunk (vectorizes without reassociating floats)

struct Chunk {
  float* data;
  int64_t n;
};

// Contiguous float32 CPU tensors cut into chunks; an empty tensor gives none.
std::vector<Chunk> chunks_of(const char* op, const std::vector<Tensor>& tensors) {
  std::vector<Chunk> out;
  for (const Tensor& t : tensors) {
    check_float_cpu(op, "every tensor", t);
    STD_TORCH_CHECK(t.is_contiguous(), op, ": takes contiguous tensors (parameters and their gradients are)");
    float* p = t.mutable_data_ptr<float>();
    for (int64_t i = 0; i < t.numel(); i += kChunk) out.push_back({p + i, std::min(kChunk, t.numel() - i)});
  }
  return out;
}

// Σ x², the chunk's squares summed in kLanes float partial sums, those in double.
double sum_squares(const float* x, int64_t n) {
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) acc[l] += x[i + l] * x[i + l];
  double s = 0.0;
  for (int64_t l = 0; l < kLanes; ++l) s += acc[l];
  for (; i < n; ++i) s += static_cast<double>(x[i]) * x[i];
  return s;
}

// grads: the gradients (modified in place) -> the total norm, a float32 scalar tensor.
Tensor clip_grad_norm_cpu(std::vector<Tensor> grads, double max_norm) {
  const char* op = "clip_grad_norm_";
  STD_TORCH_CHECK(!grads.empty(), op, ": needs at least one gradient");
  const std::vector<Chunk> chunks = chunks_of(op, grads);
  const int64_t n = static_cast<int64_t>(chunks.size());
  std::vector<double> partial(n, 0.0);
  torch::stable::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) partial[c] = sum_squares(chunks[c].data, chunks[c].n);
  });
  double total = 0.0;
  for (double s : partial) total += s;
  const float norm = static_cast<float>(std::sqrt(total));
  // clip_grad_norm_'s coefficient, clamped to 1: scaling by 1 changes nothing, so it is skipped;
  // a NaN or infinite norm still scales (the trainer stops on it before the optimizer step)
  const float coef = static_cast<float>(max_norm) / (norm + 1e-6f);
  if (!(coef >= 1.0f)) {
    torch::stable::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c)
        for (int64_t i = 0; i < chunks[c].n; ++i) chunks[c].data[i] *= coef;
    });
  }
  Tensor out = torch::stable::new_empty(grads[0], {});
  *out.mutable_data_ptr<float>() = norm;
  return out;
}

// max over x of |x|'s bits as an int32. For floats without their sign bit the integer order is
// the float order, and every NaN lies above +inf (0x7f800000): one integer max finds the largest
// magnitude and any NaN, and it vectorizes (a float max with NaN handling does not, without
// -ffast-math).
int32_t max_abs_bits(const float* x, int64_t n) {
  int32_t acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) {
      int32_t b;
      std::memcpy(&b, x + i + l, sizeof b);
      b &= 0x7fffffff;
      acc[l] = acc[l] < b ? b : acc[l];
    }
  }
  int32_t m = 0;
  for (int64_t l = 0; l < kLanes; ++l) m = std::max(m, acc[l]);
  for (; i < n; ++i) {
    int32_t b;
    std::memcpy(&b, x + i, sizeof b);
    m = std::max(m, b & 0x7fffffff);
  }
  return m;
}

// max |x| over every element of every tensor, a float32 scalar tensor; NaN if any is NaN.
Tensor max_abs_cpu(std::vector<Tensor> tensors) {
  const char* op = "max_abs";
  STD_TORCH_CHECK(!tensors.empty(), op, ": needs at least one tensor");
  const std::vector<Chunk> chunks = chunks_of(op, tensors);
  const int64_t n = static_cast<int64_t>(chunks.size());
  std::vector<int32_t> partial(n, 0);
  torch::stable::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) partial[c] = max_abs_bits(chunks[c].data, chunks[c].n);
  });
  const int32_t bits = partial.empty() ? 0 : *std::max_element(partial.begin(), partial.end());
  float m;
  std::memcpy(&m, &bits, sizeof m);  // a NaN's bits give a NaN
  Tensor out = torch::stable::new_empty(tensors[0], {});
  *out.mutable_data_ptr<float>() = m;
  return out;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(bitttt, CPU, m) {
  m.impl("clip_grad_norm_", TORCH_BOX(&clip_grad_norm_cpu));
  m.impl("max_abs", TORCH_BOX(&max_abs_cpu));
}

}  // namespace bitttt::train
