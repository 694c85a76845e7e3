// CUDA entry points of the TTT-Linear ops (docs/design.md §3): the same
// schemas, outputs (checkpoints included) and semantics as the CPU op, float32 and float64.
//
// The kernels live in ttt_linear_cuda_kernels.cuh (device code only); this file checks the
// arguments (ttt/checks.h) and prepares the call (ttt/host.h), both shared with the CPU,
// launches on the current stream and registers the CUDA implementations with the dispatcher.
#include <cuda_runtime.h>

#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <atomic>
#include <cstdint>
#include <tuple>
#include <type_traits>

#include "cuda/common.cuh"
#include "ttt/checks.h"
#include "ttt/host.h"
#include "ttt/ttt.h"
#include "ttt/ttt_linear_cuda_kernels.cuh"

namespace bitttt::ttt {
namespace {

using checks::Where;
using namespace gpu;  // the kernels and their argument structs (ttt_linear_cuda_kernels.cuh)
using host::mptr;
using host::ptr;
using torch::stable::Tensor;

constexpr int kMaxDevices = 64;               // per-device caches of the shared-memory opt-in
constexpr int kDefaultSmemBytes = 48 * 1024;  // above this a kernel must opt in (cudaFuncSetAttribute)

// ---------------------------------------------------------------------------------------
// Host side: checks (ttt/checks.h), preparation (ttt/host.h), launches on the current
// stream, registration.
// ---------------------------------------------------------------------------------------

// The most dynamic shared memory a block may use on this device (cached per device).
int max_smem_optin(int device) {
  static std::atomic<int> cache[kMaxDevices];  // zero-initialised (static storage)
  if (device >= 0 && device < kMaxDevices && cache[device].load() > 0) return cache[device].load();
  int v = 0;
  BITTTT_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
                    "ttt_linear: reading the device's shared memory size");
  if (device >= 0 && device < kMaxDevices) cache[device].store(v);
  return v;
}

// Lets ttt_forward_kernel<T> use `bytes` of dynamic shared memory on `device` (the current one),
// or raises naming the shape. Opting in once per device and size is enough.
template <typename T>
void ensure_forward_smem(const char* op, int device, int64_t bytes, int64_t D, int64_t b) {
  const int limit = max_smem_optin(device);
  STD_TORCH_CHECK(bytes <= limit, op, ": head size D=", D, " with mini-batch b=", b, " in ",
                  std::is_same_v<T, double> ? "float64" : "float32", " needs ", bytes,
                  " bytes of shared memory per block, the device allows ", limit,
                  "; use a smaller D or b (or float32), or run on the CPU");
  if (bytes <= kDefaultSmemBytes) return;
  static std::atomic<int> opted[kMaxDevices];
  const bool cached = device >= 0 && device < kMaxDevices;
  if (cached && opted[device].load() >= bytes) return;
  BITTTT_CUDA_CHECK(cudaFuncSetAttribute(ttt_forward_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(bytes)),
                    "ttt_linear: opting in to more shared memory");
  if (cached) {
    int cur = opted[device].load();
    while (cur < bytes && !opted[device].compare_exchange_weak(cur, static_cast<int>(bytes))) {
    }
  }
}

int grid_size(const char* op, int64_t BH) {
  STD_TORCH_CHECK(BH <= 0x7fffffff, op, ": B*H=", BH, " heads exceed one CUDA grid; split the batch");
  return static_cast<int>(BH);
}

// Runs the forward kernel over every (batch, head): (W, c, gW, gc) advanced in place.
template <typename T>
void forward_launch(const char* op, const host::ForwardCall& f) {
  const Dims& dm = f.dm;
  const int64_t nseg = num_segments(dm), BH = f.B * f.H;
  if (BH == 0 || nseg == 0) return;  // nothing to compute: the outputs are the copies of the state
  const int64_t rows = dm.T < dm.b ? dm.T : dm.b;
  const int64_t bytes = forward_smem_elems(dm.D, rows) * static_cast<int64_t>(sizeof(T));
  const int device = f.q.get_device_index();
  ensure_forward_smem<T>(op, device, bytes, dm.D, dm.b);
  const bool ck = f.has_checkpoints();
  FwdArgs<T> a{ptr<T>(f.q), ptr<T>(f.k), ptr<T>(f.v), ptr<T>(f.lr), ptr<T>(f.ts), ptr<T>(f.ln_w), ptr<T>(f.ln_b),
               mptr<T>(f.W), mptr<T>(f.c), mptr<T>(f.gW), mptr<T>(f.gc), mptr<T>(f.out),
               ck ? mptr<T>(f.ckW) : nullptr, ck ? mptr<T>(f.ckc) : nullptr,
               dm.T, dm.pos, nseg, num_checkpoints(dm),
               static_cast<int>(dm.D), static_cast<int>(dm.b), static_cast<int>(f.H), static_cast<int>(rows),
               static_cast<int>(dm.ckpt_every)};
  ttt_forward_kernel<T><<<grid_size(op, BH), kThreads, bytes, cuda::current_stream(device)>>>(a);
  BITTTT_CUDA_CHECK_LAUNCH("ttt_forward_kernel");
}

void forward_launch(const char* op, const host::ForwardCall& f) {
  if (f.is_float()) forward_launch<float>(op, f);
  else forward_launch<double>(op, f);
}

// Head size and mini-batch fit the kernels' int indexing (D·D, b·D per head).
void check_sizes(const char* op, const Dims& dm) {
  STD_TORCH_CHECK(dm.D <= 4096 && dm.b <= 65536, op, ": D=", dm.D, ", b=", dm.b,
                  " are beyond what the CUDA kernels index (D <= 4096, b <= 65536)");
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> ttt_linear_cuda(
    Tensor q, Tensor k, Tensor v, Tensor lr, Tensor ts, Tensor W, Tensor c, Tensor gW, Tensor gc, int64_t pos,
    Tensor ln_w, Tensor ln_b, int64_t ckpt_every) {
  const char* op = "ttt_linear";
  Dims dm = checks::check_inputs(op, Where::CUDA, q, k, v, lr, ts, W, c, gW, gc, pos, ln_w, ln_b);
  STD_TORCH_CHECK(ckpt_every >= 0, op, ": ckpt_every must be >= 0, got ", ckpt_every);
  check_sizes(op, dm);
  dm.ckpt_every = checks::effective_ckpt_every(dm, ckpt_every);
  torch::stable::accelerator::DeviceGuard guard(q.get_device_index());
  host::ForwardCall f = host::prepare_forward(dm, q, k, v, lr, ts, W, c, gW, gc, ln_w, ln_b);
  forward_launch(op, f);
  return {f.out, f.W, f.c, f.gW, f.gc, f.ckW, f.ckc};
}

// One token for every head, updating (W, c, gW, gc) in place: generation. q, k, v [B,H,D],
// lr [B,H]: laid out as [B,H,1,D] and [B,H,1], so the forward kernel runs it as T = 1.
Tensor ttt_linear_decode_cuda(Tensor q, Tensor k, Tensor v, Tensor lr, Tensor ts, Tensor W, Tensor c, Tensor gW,
                              Tensor gc, int64_t pos, Tensor ln_w, Tensor ln_b) {
  const char* op = "ttt_linear_decode_";
  Dims dm = checks::check_inputs(op, Where::CUDA, q, k, v, lr, ts, W, c, gW, gc, pos, ln_w, ln_b, true);
  checks::check_state_contiguous(op, W, c, gW, gc);
  check_sizes(op, dm);
  torch::stable::accelerator::DeviceGuard guard(q.get_device_index());
  host::ForwardCall f = host::prepare_decode(dm, q, k, v, lr, ts, W, c, gW, gc, ln_w, ln_b);
  forward_launch(op, f);
  return f.out;
}

template <typename T>
void reduce_heads(const char* op, const Tensor& x, int64_t B, int64_t H, int64_t n, bool over_heads,
                  const Tensor& out, cudaStream_t stream) {
  const int64_t total = (over_heads ? 1 : H) * n;
  if (total == 0) return;
  constexpr int kReduceThreads = 256;
  reduce_heads_kernel<T><<<cuda::ceil_div(total, kReduceThreads), kReduceThreads, 0, stream>>>(
      ptr<T>(x), B, H, n, over_heads, mptr<T>(out));
  BITTTT_CUDA_CHECK_LAUNCH("reduce_heads_kernel");
}

template <typename T>
void backward_launch(const char* op, const host::BackwardCall& g) {
  const Dims& dm = g.dm;
  const int device = g.q.get_device_index();
  cudaStream_t stream = cuda::current_stream(device);
  const int64_t nseg = num_segments(dm), BH = g.B * g.H;
  if (BH > 0 && nseg > 0) {
    const int64_t rows = dm.T < dm.b ? dm.T : dm.b;
    const int64_t span = dm.ckpt_every < nseg ? dm.ckpt_every : nseg;
    const int64_t per_head = backward_ws_elems(dm.D, rows, span);
    Tensor ws = torch::stable::new_empty(g.q, {BH * per_head});
    BwdArgs<T> a{ptr<T>(g.q), ptr<T>(g.k), ptr<T>(g.v), ptr<T>(g.lr), ptr<T>(g.ts), ptr<T>(g.ln_w), ptr<T>(g.ln_b),
                 ptr<T>(g.gW0), ptr<T>(g.gc0), ptr<T>(g.ckW), ptr<T>(g.ckc), ptr<T>(g.grad_out),
                 mptr<T>(g.dW), mptr<T>(g.dc), mptr<T>(g.dgW), mptr<T>(g.dgc),
                 mptr<T>(g.dq), mptr<T>(g.dk), mptr<T>(g.dv), mptr<T>(g.dlr),
                 mptr<T>(g.dts_h), mptr<T>(g.dlnw_h), mptr<T>(g.dlnb_h), mptr<T>(ws),
                 dm.T, dm.pos, nseg, num_checkpoints(dm), per_head,
                 static_cast<int>(dm.D), static_cast<int>(dm.b), static_cast<int>(g.H), static_cast<int>(rows),
                 static_cast<int>(span)};
    ttt_backward_kernel<T><<<grid_size(op, BH), kThreads, 0, stream>>>(a);
    BITTTT_CUDA_CHECK_LAUNCH("ttt_backward_kernel");
  }
  reduce_heads<T>(op, g.dts_h, g.B, g.H, dm.b, true, g.dts, stream);
  reduce_heads<T>(op, g.dlnw_h, g.B, g.H, dm.D, false, g.dlnw, stream);
  reduce_heads<T>(op, g.dlnb_h, g.B, g.H, dm.D, false, g.dlnb, stream);
}

using Grads = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

// Gradients of ttt_linear for every tensor input, recomputing each checkpoint span of the
// forward. grad_* are the gradients of its outputs (out, W, c, gW, gc).
Grads ttt_linear_backward_cuda(Tensor grad_out, Tensor grad_W, Tensor grad_c, Tensor grad_gW, Tensor grad_gc,
                               Tensor q, Tensor k, Tensor v, Tensor lr, Tensor ts, Tensor W, Tensor c, Tensor gW,
                               Tensor gc, int64_t pos, Tensor ln_w, Tensor ln_b, Tensor ckpt_W, Tensor ckpt_c,
                               int64_t ckpt_every) {
  const char* op = "ttt_linear_backward";
  Dims dm = checks::check_backward_inputs(op, Where::CUDA, grad_out, grad_W, grad_c, grad_gW, grad_gc, q, k, v, lr,
                                          ts, W, c, gW, gc, pos, ln_w, ln_b, ckpt_W, ckpt_c, ckpt_every);
  check_sizes(op, dm);
  torch::stable::accelerator::DeviceGuard guard(q.get_device_index());
  host::BackwardCall g = host::prepare_backward(dm, grad_out, grad_W, grad_c, grad_gW, grad_gc, q, k, v, lr, ts, gW,
                                                gc, ln_w, ln_b, ckpt_W, ckpt_c);
  if (g.is_float()) backward_launch<float>(op, g);
  else backward_launch<double>(op, g);
  return {g.dq, g.dk, g.dv, g.dlr, g.dts, g.dW, g.dc, g.dgW, g.dgc, g.dlnw, g.dlnb};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(bitttt, CUDA, m) {
  m.impl("ttt_linear", TORCH_BOX(&ttt_linear_cuda));
  m.impl("ttt_linear_decode_", TORCH_BOX(&ttt_linear_decode_cuda));
  m.impl("ttt_linear_backward", TORCH_BOX(&ttt_linear_backward_cuda));
}

}  // namespace bitttt::ttt
