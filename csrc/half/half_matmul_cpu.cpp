// CPU entry point of half_matmul: checks, the choice of kernel and threading over torch's
// intra-op pool. Like int8_matmul, the kernel follows the ternary ops' ISA choice (BITTTT_ISA /
// set_isa): "scalar" there runs the scalar reference here, so one switch tests both.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <algorithm>
#include <cstring>
#include <limits>

#include "cpu_features.h"
#include "half/half_matmul.h"
#include "ternary/dispatch.h"

namespace bitttt::half {
namespace {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;

// Weight rows per task: 64 rows of the 2B head (K = 2560) are 320 KiB, read once per block of
// 4 tokens; small enough that both threads get many tasks.
constexpr int64_t kRowsPerTask = 64;
// Below this many multiply-adds a call stays on one thread: waking the pool costs more.
constexpr int64_t kMinMacsPerThread = 1 << 20;

MatmulKernel pick_kernel() {
#if defined(BITTTT_X86)
  if (cpu_features().avx2 && std::strcmp(ternary::active_kernels().name, "scalar") != 0) return &matmul_avx2;
#endif
  return &matmul_scalar;
}

Tensor as_contiguous(const Tensor& t) { return t.is_contiguous() ? t : torch::stable::contiguous(t); }

// float32 [M, N] = x @ w.T for float32 x [M, K] and bfloat16 or float16 w [N, K].
Tensor half_matmul_cpu(Tensor x, Tensor w) {
  STD_TORCH_CHECK(x.scalar_type() == ScalarType::Float, "half_matmul: x must be float32, got ",
                  torch::headeronly::toString(x.scalar_type()));
  STD_TORCH_CHECK(w.scalar_type() == ScalarType::BFloat16 || w.scalar_type() == ScalarType::Half,
                  "half_matmul: w must be bfloat16 or float16, got ", torch::headeronly::toString(w.scalar_type()));
  STD_TORCH_CHECK(x.dim() == 2 && w.dim() == 2, "half_matmul: x must be [M, K] and w [N, K], got ", x.dim(),
                  " and ", w.dim(), " dims");
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  STD_TORCH_CHECK(w.size(1) == K, "half_matmul: x is [", M, ", ", K, "] but w is [", N, ", ", w.size(1),
                  "]: both need the same K");
  // x's copy and out hold M * K and M * N elements (x can be an expanded view of a few bytes)
  STD_TORCH_CHECK(M <= std::numeric_limits<int64_t>::max() / std::max<int64_t>({K, N, 1}),
                  "half_matmul: ", M, " tokens are too many for one call; split x");
  if (M == 0 || N == 0 || K == 0) return torch::stable::new_zeros(x, {M, N}, ScalarType::Float);
  Tensor out = torch::stable::new_empty(x, {M, N}, ScalarType::Float);
  x = as_contiguous(x);
  w = as_contiguous(w);

  const Format format = w.scalar_type() == ScalarType::BFloat16 ? Format::bf16 : Format::f16;
  const MatmulKernel kernel = pick_kernel();
  const float* xp = x.const_data_ptr<float>();
  const uint16_t* wp = static_cast<const uint16_t*>(w.const_data_ptr());
  float* op = out.mutable_data_ptr<float>();
  const int64_t tasks = (N + kRowsPerTask - 1) / kRowsPerTask;
  const int64_t grain = std::max<int64_t>(1, kMinMacsPerThread / (std::min(N, kRowsPerTask) * K) / M);
  torch::stable::parallel_for(0, tasks, grain, [&](int64_t begin, int64_t end) {
    kernel(xp, M, K, wp, format, begin * kRowsPerTask, std::min(N, end * kRowsPerTask), op, N);
  });
  return out;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(bitttt, CPU, m) { m.impl("half_matmul", TORCH_BOX(&half_matmul_cpu)); }

}  // namespace bitttt::half
