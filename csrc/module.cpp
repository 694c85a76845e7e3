// bitttt._C: defines the op schemas (the one place they live), and exposes build and CPU
// information to Python. Kernels register their implementations in their own files.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <torch/csrc/stable/library.h>

#include "cpu_features.h"
#include "ternary/dispatch.h"
#include "ttt/ttt.h"

namespace py = pybind11;

#ifndef BITTTT_VERSION
#define BITTTT_VERSION "unknown"
#endif
#ifndef BITTTT_TORCH_VERSION
#define BITTTT_TORCH_VERSION "unknown"
#endif

STABLE_TORCH_LIBRARY(bitttt, m) {
  // docs/design.md §2. x: float32/bfloat16 [..., K]; packed: uint8 BT2 [N, Kp/4]; w_scale: float32 [N].
  m.def("ternary_linear(Tensor x, Tensor packed, Tensor w_scale, Tensor? bias=None) -> Tensor");
  // Exact int32 [M, N] = x_q @ q.T for int8 x_q [M, K]: the integer core of ternary_linear.
  m.def("ternary_matmul_int8(Tensor x, Tensor packed) -> Tensor");

  // docs/design.md §3. q, k, v [B,H,T,D]; lr [B,H,T]; token_scale [b]; state W, gW [B,H,D,D],
  // c, gc [B,H,D] at absolute position pos; ln_w, ln_b [H,D]; float32 or float64, all alike.
  // Returns out, the state after the tokens (W, c, gW, gc) and, when ckpt_every > 0, the
  // checkpoints its backward recomputes from: (W, c) at every ckpt_every-th segment start.
  m.def("ttt_linear(Tensor q, Tensor k, Tensor v, Tensor lr, Tensor token_scale, Tensor W, Tensor c, "
        "Tensor gW, Tensor gc, int pos, Tensor ln_w, Tensor ln_b, int ckpt_every=0) "
        "-> (Tensor out, Tensor W_out, Tensor c_out, Tensor gW_out, Tensor gc_out, Tensor ckpt_W, Tensor ckpt_c)");
  // Gradients of ttt_linear for (q, k, v, lr, token_scale, W, c, gW, gc, ln_w, ln_b).
  m.def("ttt_linear_backward(Tensor grad_out, Tensor grad_W, Tensor grad_c, Tensor grad_gW, Tensor grad_gc, "
        "Tensor q, Tensor k, Tensor v, Tensor lr, Tensor token_scale, Tensor W, Tensor c, Tensor gW, Tensor gc, "
        "int pos, Tensor ln_w, Tensor ln_b, Tensor ckpt_W, Tensor ckpt_c, int ckpt_every) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // One token (q, k, v [B,H,D], lr [B,H]) at position pos for all heads; updates the state in place.
  m.def("ttt_linear_decode_(Tensor q, Tensor k, Tensor v, Tensor lr, Tensor token_scale, Tensor(a!) W, "
        "Tensor(b!) c, Tensor(c!) gW, Tensor(d!) gc, int pos, Tensor ln_w, Tensor ln_b) -> Tensor");
}

namespace {

py::dict build_info() {
  py::dict info;
  info["version"] = BITTTT_VERSION;
  info["torch"] = BITTTT_TORCH_VERSION;
  info["stable_abi_target"] = "2.10";
  info["compiled_isas"] = bitttt::ternary::compiled_isas();
  info["ttt_isa"] = bitttt::ttt::active_isa();
  return info;
}

py::dict cpu_features() {
  const bitttt::CpuFeatures& f = bitttt::cpu_features();
  py::dict d;
  d["avx2"] = f.avx2;
  d["fma"] = f.fma;
  d["avx512f"] = f.avx512f;
  d["avx512bw"] = f.avx512bw;
  d["avx512vl"] = f.avx512vl;
  d["avx512vnni"] = f.avx512vnni;
  d["avx512bf16"] = f.avx512bf16;
  d["avx_vnni"] = f.avx_vnni;
  return d;
}

}  // namespace

PYBIND11_MODULE(_C, mod) {
  mod.doc() = "bitttt native ops (registered as torch.ops.bitttt.*) and build information";
  mod.def("build_info", &build_info, "Version, torch built against, compiled ISAs (CUDA: bitttt._C_cuda.build_info()).");
  mod.def("cpu_features", &cpu_features, "CPU features detected at run time.");
  mod.def("available_isas", &bitttt::ternary::available_isas, "Kernel sets this CPU can run, best last.");
  mod.def("isa", [] { return std::string(bitttt::ternary::active_kernels().name); },
          "The ternary kernel set in use (BITTTT_ISA or the best available).");
  mod.def("set_isa", &bitttt::ternary::set_isa, py::arg("name"),
          "Force a ternary kernel set: 'scalar', 'avx2', 'avx512' or 'auto'.");
}
