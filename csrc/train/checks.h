// Argument helpers shared by the training ops' CPU entry points (csrc/train/*_cpu.cpp): they
// take float32 CPU tensors (other dtypes and devices keep the torch path in bitttt/ops.py).
#pragma once

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

namespace bitttt::train {

inline torch::stable::Tensor contig(const torch::stable::Tensor& t) {
  return t.is_contiguous() ? t : torch::stable::contiguous(t);
}

inline void check_float_cpu(const char* op, const char* name, const torch::stable::Tensor& t) {
  STD_TORCH_CHECK(t.defined(), op, ": ", name, " must be a tensor, got None");
  STD_TORCH_CHECK(t.is_cpu(), op, ": the CPU kernel takes CPU tensors, got ", name, " elsewhere");
  STD_TORCH_CHECK(t.scalar_type() == torch::headeronly::ScalarType::Float, op,
                  ": takes float32 (other dtypes use the torch path), got ", name, " of another dtype");
}

}  // namespace bitttt::train
