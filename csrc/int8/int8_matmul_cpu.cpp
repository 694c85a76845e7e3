// CPU entry point of int8_matmul: checks, the choice of kernel and threading over torch's
// intra-op pool. The kernel follows the ternary ops' ISA choice (BITTTT_ISA / set_isa):
// "avx512", "avx2" and "scalar" there run that kernel here, so one switch tests them all;
// "amx" (the default where the CPU and OS have AMX) runs AMX tiles for 2..16 tokens.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <algorithm>
#include <cstring>
#include <limits>

#include "cpu_features.h"
#include "int8/int8_matmul.h"
#include "ternary/dispatch.h"

namespace bitttt::int8 {
namespace {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;

// Weight rows per kernel call: 64 rows of the 2B head (K = 2560) are 160 KiB, which stay in
// L2 while a second block of tokens (more than the kernel's 4 or 8) walks them again.
constexpr int64_t kRowsPerTask = 64;
// Below this many multiply-adds a call stays on one thread: waking the pool costs more.
constexpr int64_t kMinMacsPerThread = 1 << 21;

// The AVX2 kernel cannot take -128 in x (see int8_matmul_avx2.cpp); quantized activations
// (round(x * 127 / absmax)) never hold it, so that rare case runs the scalar kernel. The
// AVX-512 kernel takes any x.
MatmulKernel pick_kernel(const int8_t* x, int64_t n) {
#if defined(BITTTT_X86)
  const char* isa = ternary::active_kernels().name;
  const CpuFeatures& f = cpu_features();
  if (std::strcmp(isa, "avx512") == 0 && f.avx512f && f.avx512bw && f.avx512vnni) return &matmul_avx512;
  if (f.avx2 && std::strcmp(isa, "scalar") != 0 &&
      std::find(x, x + n, int8_t{-128}) == x + n)
    return &matmul_avx2;
#endif
  return &matmul_scalar;
}

Tensor as_contiguous(const Tensor& t) { return t.is_contiguous() ? t : torch::stable::contiguous(t); }

// Exact int32 [M, N] = x @ w.T for int8 x [M, K] and w [N, K].
Tensor int8_matmul_cpu(Tensor x, Tensor w) {
  STD_TORCH_CHECK(x.scalar_type() == ScalarType::Char && w.scalar_type() == ScalarType::Char,
                  "int8_matmul: x and w must be int8, got ", torch::headeronly::toString(x.scalar_type()), " and ",
                  torch::headeronly::toString(w.scalar_type()));
  STD_TORCH_CHECK(x.dim() == 2 && w.dim() == 2, "int8_matmul: x must be [M, K] and w [N, K], got ", x.dim(),
                  " and ", w.dim(), " dims");
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  STD_TORCH_CHECK(w.size(1) == K, "int8_matmul: x is [", M, ", ", K, "] but w is [", N, ", ", w.size(1),
                  "]: both need the same K");
  STD_TORCH_CHECK(K <= kMaxK, "int8_matmul: K=", K, " is over the limit of ", kMaxK,
                  " (the int32 sums could overflow); split along K");
  // x's copy and out hold M * K and M * N elements (x can be an expanded view of a few bytes)
  STD_TORCH_CHECK(M <= std::numeric_limits<int64_t>::max() / std::max<int64_t>({K, N, 1}),
                  "int8_matmul: ", M, " tokens are too many for one call; split x");
  if (M == 0 || N == 0 || K == 0) return torch::stable::new_zeros(x, {M, N}, ScalarType::Int);
  Tensor out = torch::stable::new_empty(x, {M, N}, ScalarType::Int);
  x = as_contiguous(x);
  w = as_contiguous(w);

  const int8_t* xp = x.const_data_ptr<int8_t>();
  MatmulKernel kernel = pick_kernel(xp, M * K);
#if defined(BITTTT_AMX)
  // The tiles want the tokens in the VNNI layout: built once here, read by every task.
  Tensor x_amx;
  if (ternary::amx_active() && M >= kAmxMinTokens && M <= kAmxMaxTokens) {
    x_amx = torch::stable::new_empty(x, {amx_layout_bytes(M, K)}, ScalarType::Char);
    amx_layout(xp, M, K, x_amx.mutable_data_ptr<int8_t>());
    xp = x_amx.const_data_ptr<int8_t>();
    kernel = &matmul_amx;
  }
#endif
  const int8_t* wp = w.const_data_ptr<int8_t>();
  int32_t* op = out.mutable_data_ptr<int32_t>();
  const int64_t tasks = (N + kRowsPerTask - 1) / kRowsPerTask;
  const int64_t grain = std::max<int64_t>(1, kMinMacsPerThread / (std::min(N, kRowsPerTask) * K) / M);
  // One kernel call per task, not per range: the kernel walks its rows once per block of
  // tokens, and 64 rows are still in L2 for the next block, a thread's whole range is not.
  torch::stable::parallel_for(0, tasks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t)
      kernel(xp, M, K, wp, t * kRowsPerTask, std::min(N, (t + 1) * kRowsPerTask), op, N);
  });
  return out;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(bitttt, CPU, m) { m.impl("int8_matmul", TORCH_BOX(&int8_matmul_cpu)); }

}  // namespace bitttt::int8
