// CUDA entry points of the TTT-Linear ops (docs/design.md §3): the same
// schemas, outputs (checkpoints included) and semantics as the CPU op, float32 and float64.
//
// The kernels live in ttt_linear_cuda.cuh (device code only); this file checks the arguments
// (ttt/checks.h, shared with the CPU), allocates the outputs, launches on the current stream
// and registers the CUDA implementations with the dispatcher.
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
#include "ttt/ttt.h"
#include "ttt/ttt_linear_cuda.cuh"

namespace bitttt::ttt {
namespace {

using checks::Where;
using namespace gpu;  // the kernels and their argument structs (ttt_linear_cuda.cuh)
using torch::headeronly::ScalarType;
using torch::stable::Tensor;

constexpr int kMaxDevices = 64;               // per-device caches of the shared-memory opt-in
constexpr int kDefaultSmemBytes = 48 * 1024;  // above this a kernel must opt in (cudaFuncSetAttribute)

// ---------------------------------------------------------------------------------------
// Host side: checks (ttt/checks.h), launches on the current stream, registration.
// ---------------------------------------------------------------------------------------

template <typename T>
const T* ptr(const Tensor& t) { return t.const_data_ptr<T>(); }
template <typename T>
T* mptr(const Tensor& t) { return t.mutable_data_ptr<T>(); }

Tensor contig(const Tensor& t) { return t.is_contiguous() ? t : torch::stable::contiguous(t); }
Tensor copy_contiguous(const Tensor& t) { return torch::stable::clone(contig(t)); }

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
void forward_launch(const char* op, const Dims& dm, int64_t BH, int64_t H, const Tensor& q, const Tensor& k,
                    const Tensor& v, const Tensor& lr, const Tensor& ts, const Tensor& ln_w, const Tensor& ln_b,
                    const Tensor& W, const Tensor& c, const Tensor& gW, const Tensor& gc, const Tensor& out,
                    const Tensor* ckW, const Tensor* ckc) {
  const int64_t nseg = num_segments(dm);
  if (BH == 0 || nseg == 0) return;  // nothing to compute: the outputs are the copies of the state
  const int64_t rows = dm.T < dm.b ? dm.T : dm.b;
  const int64_t bytes = forward_smem_elems(dm.D, rows) * static_cast<int64_t>(sizeof(T));
  const int device = q.get_device_index();
  ensure_forward_smem<T>(op, device, bytes, dm.D, dm.b);
  FwdArgs<T> a{ptr<T>(q), ptr<T>(k), ptr<T>(v), ptr<T>(lr), ptr<T>(ts), ptr<T>(ln_w), ptr<T>(ln_b),
               mptr<T>(W), mptr<T>(c), mptr<T>(gW), mptr<T>(gc), mptr<T>(out),
               ckW ? mptr<T>(*ckW) : nullptr, ckc ? mptr<T>(*ckc) : nullptr,
               dm.T, dm.pos, nseg, num_checkpoints(dm),
               static_cast<int>(dm.D), static_cast<int>(dm.b), static_cast<int>(H), static_cast<int>(rows),
               static_cast<int>(dm.ckpt_every)};
  ttt_forward_kernel<T><<<grid_size(op, BH), kThreads, bytes, cuda::current_stream(device)>>>(a);
  BITTTT_CUDA_CHECK_LAUNCH("ttt_forward_kernel");
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
  dm.ckpt_every = ckpt_every;
  torch::stable::accelerator::DeviceGuard guard(q.get_device_index());
  const int64_t B = q.size(0), H = q.size(1), D = dm.D;
  q = contig(q), k = contig(k), v = contig(v);
  lr = contig(lr), ts = contig(ts);
  ln_w = contig(ln_w), ln_b = contig(ln_b);
  Tensor W_out = copy_contiguous(W), c_out = copy_contiguous(c);
  Tensor gW_out = copy_contiguous(gW), gc_out = copy_contiguous(gc);
  Tensor out = torch::stable::new_empty(q, {B, H, dm.T, D});
  const int64_t nck = num_checkpoints(dm);
  Tensor ckW = torch::stable::new_empty(q, {B, H, nck, D, D});
  Tensor ckc = torch::stable::new_empty(q, {B, H, nck, D});
  const Tensor* pW = nck > 0 ? &ckW : nullptr;
  const Tensor* pc = nck > 0 ? &ckc : nullptr;
  if (q.scalar_type() == ScalarType::Float)
    forward_launch<float>(op, dm, B * H, H, q, k, v, lr, ts, ln_w, ln_b, W_out, c_out, gW_out, gc_out, out, pW, pc);
  else
    forward_launch<double>(op, dm, B * H, H, q, k, v, lr, ts, ln_w, ln_b, W_out, c_out, gW_out, gc_out, out, pW, pc);
  return {out, W_out, c_out, gW_out, gc_out, ckW, ckc};
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
  const int64_t B = q.size(0), H = q.size(1), D = dm.D;
  q = contig(q), k = contig(k), v = contig(v);
  lr = contig(lr), ts = contig(ts);
  ln_w = contig(ln_w), ln_b = contig(ln_b);
  Tensor out = torch::stable::new_empty(q, {B, H, D});
  if (q.scalar_type() == ScalarType::Float)
    forward_launch<float>(op, dm, B * H, H, q, k, v, lr, ts, ln_w, ln_b, W, c, gW, gc, out, nullptr, nullptr);
  else
    forward_launch<double>(op, dm, B * H, H, q, k, v, lr, ts, ln_w, ln_b, W, c, gW, gc, out, nullptr, nullptr);
  return out;
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
void backward_launch(const char* op, const Dims& dm, int64_t B, int64_t H, const Tensor& go, const Tensor& q,
                     const Tensor& k, const Tensor& v, const Tensor& lr, const Tensor& ts, const Tensor& ln_w,
                     const Tensor& ln_b, const Tensor& gW0, const Tensor& gc0, const Tensor& ckW, const Tensor& ckc,
                     const Tensor& dW, const Tensor& dc, const Tensor& dgW, const Tensor& dgc, const Tensor& dq,
                     const Tensor& dk, const Tensor& dv, const Tensor& dlr, const Tensor& dts_h,
                     const Tensor& dlnw_h, const Tensor& dlnb_h, const Tensor& dts, const Tensor& dlnw,
                     const Tensor& dlnb) {
  const int device = q.get_device_index();
  cudaStream_t stream = cuda::current_stream(device);
  const int64_t nseg = num_segments(dm), BH = B * H;
  if (BH > 0 && nseg > 0) {
    const int64_t rows = dm.T < dm.b ? dm.T : dm.b;
    const int64_t span = dm.ckpt_every < nseg ? dm.ckpt_every : nseg;
    const int64_t per_head = backward_ws_elems(dm.D, rows, span);
    Tensor ws = torch::stable::new_empty(q, {BH * per_head});
    BwdArgs<T> a{ptr<T>(q), ptr<T>(k), ptr<T>(v), ptr<T>(lr), ptr<T>(ts), ptr<T>(ln_w), ptr<T>(ln_b),
                 ptr<T>(gW0), ptr<T>(gc0), ptr<T>(ckW), ptr<T>(ckc), ptr<T>(go),
                 mptr<T>(dW), mptr<T>(dc), mptr<T>(dgW), mptr<T>(dgc),
                 mptr<T>(dq), mptr<T>(dk), mptr<T>(dv), mptr<T>(dlr),
                 mptr<T>(dts_h), mptr<T>(dlnw_h), mptr<T>(dlnb_h), mptr<T>(ws),
                 dm.T, dm.pos, nseg, num_checkpoints(dm), per_head,
                 static_cast<int>(dm.D), static_cast<int>(dm.b), static_cast<int>(H), static_cast<int>(rows),
                 static_cast<int>(span)};
    ttt_backward_kernel<T><<<grid_size(op, BH), kThreads, 0, stream>>>(a);
    BITTTT_CUDA_CHECK_LAUNCH("ttt_backward_kernel");
  }
  reduce_heads<T>(op, dts_h, B, H, dm.b, true, dts, stream);
  reduce_heads<T>(op, dlnw_h, B, H, dm.D, false, dlnw, stream);
  reduce_heads<T>(op, dlnb_h, B, H, dm.D, false, dlnb, stream);
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
  const int64_t B = q.size(0), H = q.size(1), T = dm.T, D = dm.D, b = dm.b;
  auto C = [](const Tensor& t) { return contig(t); };
  q = C(q), k = C(k), v = C(v), lr = C(lr), ts = C(ts), ln_w = C(ln_w), ln_b = C(ln_b);
  gW = C(gW), gc = C(gc), ckpt_W = C(ckpt_W), ckpt_c = C(ckpt_c), grad_out = C(grad_out);
  Tensor dW = copy_contiguous(grad_W), dc = copy_contiguous(grad_c);
  Tensor dgW = copy_contiguous(grad_gW), dgc = copy_contiguous(grad_gc);
  Tensor dq = torch::stable::new_empty(q, {B, H, T, D}), dk = torch::stable::new_empty(q, {B, H, T, D});
  Tensor dv = torch::stable::new_empty(q, {B, H, T, D}), dlr = torch::stable::new_empty(q, {B, H, T});
  Tensor dts_h = torch::stable::new_zeros(q, {B, H, b}), dlnw_h = torch::stable::new_zeros(q, {B, H, D});
  Tensor dlnb_h = torch::stable::new_zeros(q, {B, H, D});
  Tensor dts = torch::stable::new_empty(q, {b}), dlnw = torch::stable::new_empty(q, {H, D});
  Tensor dlnb = torch::stable::new_empty(q, {H, D});
  if (q.scalar_type() == ScalarType::Float)
    backward_launch<float>(op, dm, B, H, grad_out, q, k, v, lr, ts, ln_w, ln_b, gW, gc, ckpt_W, ckpt_c, dW, dc, dgW,
                           dgc, dq, dk, dv, dlr, dts_h, dlnw_h, dlnb_h, dts, dlnw, dlnb);
  else
    backward_launch<double>(op, dm, B, H, grad_out, q, k, v, lr, ts, ln_w, ln_b, gW, gc, ckpt_W, ckpt_c, dW, dc, dgW,
                            dgc, dq, dk, dv, dlr, dts_h, dlnw_h, dlnb_h, dts, dlnw, dlnb);
  return {dq, dk, dv, dlr, dts, dW, dc, dgW, dgc, dlnw, dlnb};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(bitttt, CUDA, m) {
  m.impl("ttt_linear", TORCH_BOX(&ttt_linear_cuda));
  m.impl("ttt_linear_decode_", TORCH_BOX(&ttt_linear_decode_cuda));
  m.impl("ttt_linear_backward", TORCH_BOX(&ttt_linear_backward_cuda));
}

}  // namespace bitttt::ttt
