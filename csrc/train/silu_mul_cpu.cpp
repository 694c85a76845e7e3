// SwiGLU's silu(gate) * up as one pass forward and one backward (bitttt.nn.blocks.silu_mul;
// issue 26), float32 on the CPU. The torch composition took five passes and four temporaries
// over the [tokens, 2F] gate/up output per layer and step (silu, mul forward; mul, mul into a
// strided half, silu_backward); its exp was the only reason for SIMD, so the kernels are one
// file per ISA (silu_mul.h), picked with the ternary kernel set.
//
// h [..., 2F] = [gate | up] -> y [..., F];  grad [..., F], h -> grad_h [..., 2F].
// The backward recomputes the sigmoid from h rather than saving silu(gate): one exp per element
// costs less than writing and reading another [..., F] tensor.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <vector>

#include "ternary/dispatch.h"
#include "train/checks.h"
#include "train/silu_mul.h"

namespace bitttt::train {
namespace {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;

constexpr int64_t kMinElemsPerTask = 1 << 14;  // below this a loop stays on one thread (an exp each)

// The kernels of the active ternary ISA (avx512_emulated and avx2 run the AVX2 file).
const SiluMulKernels& active_silu_mul() {
  static const SiluMulKernels scalar_set = scalar::silu_mul_kernels();
#if defined(BITTTT_X86)
  static const SiluMulKernels avx2_set = avx2::silu_mul_kernels();
  static const SiluMulKernels avx512_set = avx512::silu_mul_kernels();
  const char* isa = ternary::active_kernels().name;
  if (std::strcmp(isa, "avx512") == 0) return avx512_set;
  if (std::strcmp(isa, "avx2") == 0 || std::strcmp(isa, "avx512_emulated") == 0) return avx2_set;
#endif
  return scalar_set;
}

void check_h(const char* op, const Tensor& h, int64_t F) {
  check_float_cpu(op, "h", h);
  STD_TORCH_CHECK(h.dim() >= 1, op, ": h must have a last (feature) dimension");
  STD_TORCH_CHECK(F > 0 && h.size(h.dim() - 1) == 2 * F, op, ": h's last dimension must be 2*hidden = ", 2 * F,
                  ", got ", h.size(h.dim() - 1));
}

template <typename Fn>
void for_rows(int64_t rows, int64_t elems_per_row, const Fn& fn) {
  const int64_t grain = std::max<int64_t>(1, kMinElemsPerTask / std::max<int64_t>(elems_per_row, 1));
  if (grain >= rows) {  // one task: run it here rather than through the pool's dispatch
    for (int64_t r = 0; r < rows; ++r) fn(r);
    return;
  }
  torch::stable::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) fn(r);
  });
}

std::vector<int64_t> with_last(const Tensor& t, int64_t last) {
  std::vector<int64_t> shape(t.sizes().begin(), t.sizes().end());
  shape.back() = last;
  return shape;
}

Tensor silu_mul_cpu(Tensor h, int64_t F) {
  const char* op = "silu_mul";
  check_h(op, h, F);
  h = contig(h);
  Tensor y = torch::stable::new_empty(h, with_last(h, F));
  const int64_t rows = h.numel() / (2 * F);
  const float* ph = h.const_data_ptr<float>();
  float* py = y.mutable_data_ptr<float>();
  const SiluMulKernels& k = active_silu_mul();
  for_rows(rows, F, [&](int64_t r) { k.forward(ph + r * 2 * F, py + r * F, F); });
  return y;
}

Tensor silu_mul_backward_cpu(Tensor grad, Tensor h, int64_t F) {
  const char* op = "silu_mul_backward";
  check_h(op, h, F);
  check_float_cpu(op, "grad", grad);
  STD_TORCH_CHECK(grad.dim() == h.dim(), op, ": grad must be h's shape with the last dimension halved");
  for (int64_t d = 0; d < h.dim(); ++d) {
    STD_TORCH_CHECK(grad.size(d) == (d + 1 == h.dim() ? F : h.size(d)), op,
                    ": grad must be h's shape with the last dimension halved");
  }
  h = contig(h);
  grad = contig(grad);
  Tensor dh = torch::stable::new_empty(h, with_last(h, 2 * F));
  const int64_t rows = h.numel() / (2 * F);
  const float* ph = h.const_data_ptr<float>();
  const float* pg = grad.const_data_ptr<float>();
  float* pd = dh.mutable_data_ptr<float>();
  const SiluMulKernels& k = active_silu_mul();
  for_rows(rows, 2 * F, [&](int64_t r) { k.backward(pg + r * F, ph + r * 2 * F, pd + r * 2 * F, F); });
  return dh;
}

// The TTT layers' output gate: gelu_tanh(gate) * y, elementwise over two tensors of one shape.
constexpr int64_t kChunk = 1 << 12;  // elements per task

void check_same_shape(const char* op, const char* name, const Tensor& a, const Tensor& b) {
  STD_TORCH_CHECK(a.dim() == b.dim(), op, ": ", name, " must have gate's shape");
  for (int64_t d = 0; d < a.dim(); ++d) STD_TORCH_CHECK(a.size(d) == b.size(d), op, ": ", name, " must have gate's shape");
}

template <typename Fn>
void for_chunks(int64_t n, const Fn& fn) {
  for_rows((n + kChunk - 1) / kChunk, kChunk, [&](int64_t c) { fn(c * kChunk, std::min(kChunk, n - c * kChunk)); });
}

Tensor gelu_tanh_mul_cpu(Tensor gate, Tensor y) {
  const char* op = "gelu_tanh_mul";
  check_float_cpu(op, "gate", gate);
  check_float_cpu(op, "y", y);
  check_same_shape(op, "y", gate, y);
  gate = contig(gate);
  y = contig(y);
  Tensor out = torch::stable::empty_like(gate);
  const float* pg = gate.const_data_ptr<float>();
  const float* py = y.const_data_ptr<float>();
  float* po = out.mutable_data_ptr<float>();
  const SiluMulKernels& k = active_silu_mul();
  for_chunks(gate.numel(), [&](int64_t i, int64_t n) { k.gelu_forward(pg + i, py + i, po + i, n); });
  return out;
}

std::tuple<Tensor, Tensor> gelu_tanh_mul_backward_cpu(Tensor grad, Tensor gate, Tensor y) {
  const char* op = "gelu_tanh_mul_backward";
  check_float_cpu(op, "grad", grad);
  check_float_cpu(op, "gate", gate);
  check_float_cpu(op, "y", y);
  check_same_shape(op, "y", gate, y);
  check_same_shape(op, "grad", gate, grad);
  grad = contig(grad);
  gate = contig(gate);
  y = contig(y);
  Tensor dg = torch::stable::empty_like(gate);
  Tensor dy = torch::stable::empty_like(y);
  const float* pd = grad.const_data_ptr<float>();
  const float* pg = gate.const_data_ptr<float>();
  const float* py = y.const_data_ptr<float>();
  float* pdg = dg.mutable_data_ptr<float>();
  float* pdy = dy.mutable_data_ptr<float>();
  const SiluMulKernels& k = active_silu_mul();
  for_chunks(gate.numel(), [&](int64_t i, int64_t n) { k.gelu_backward(pd + i, pg + i, py + i, pdg + i, pdy + i, n); });
  return {dg, dy};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(bitttt, CPU, m) {
  m.impl("silu_mul", TORCH_BOX(&silu_mul_cpu));
  m.impl("silu_mul_backward", TORCH_BOX(&silu_mul_backward_cpu));
  m.impl("gelu_tanh_mul", TORCH_BOX(&gelu_tanh_mul_cpu));
  m.impl("gelu_tanh_mul_backward", TORCH_BOX(&gelu_tanh_mul_backward_cpu));
}

}  // namespace bitttt::train
