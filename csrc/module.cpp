// bitttt._C: defines the op schemas (the one place they live), and exposes build and CPU
// information to Python. Kernels register their implementations in their own files.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <vector>

#include <torch/csrc/stable/library.h>

#include "cpu_features.h"
#include "peak/peak.h"
#include "ternary/dispatch.h"
#include "ttt/cpu.h"
#include "ttt/ttt.h"
#include "ttt_mlp/ttt_mlp.h"

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
  // The lut16 load-time layout of BT2 (csrc/ternary/lut16.h) for table-lookup decode kernels:
  // packed uint8 [N, Kp/4] -> layout uint8 [N rounded up to 16, Kp/4]. Never written to disk.
  m.def("ternary_repack_lut16(Tensor packed) -> Tensor");
  // ternary_linear and ternary_matmul_int8 over a lut16 layout (N from w_scale, or given).
  m.def("ternary_linear_lut16(Tensor x, Tensor layout, Tensor w_scale, Tensor? bias=None) -> Tensor");
  m.def("ternary_matmul_int8_lut16(Tensor x, Tensor layout, int N) -> Tensor");
  // The trit5 load-time layout of BT2 (csrc/ternary/trit5.h, 5 weights per byte) for decode
  // GEMVs limited by memory: packed uint8 [N, Kp/4] of K weights per row -> layout uint8
  // [N, ceil(K / 320) * 64]. Never written to disk. Then the ops as for lut16.
  m.def("ternary_repack_trit5(Tensor packed, int K) -> Tensor");
  m.def("ternary_linear_trit5(Tensor x, Tensor layout, Tensor w_scale, Tensor? bias=None) -> Tensor");
  m.def("ternary_matmul_int8_trit5(Tensor x, Tensor layout, int N) -> Tensor");
  // Exact int32 [M, N] = x @ w.T for int8 x [M, K], w [N, K] (csrc/int8/): the int8 LM head
  // at decode (bitttt.hf.bitnet.Int8Linear). CPU only; CUDA tensors take torch's path.
  m.def("int8_matmul(Tensor x, Tensor w) -> Tensor");
  // float32 [M, N] = x @ w.T for float32 x [M, K] and bfloat16/float16 w [N, K] (csrc/half/):
  // the float LM head at decode (bitttt.nn.half_linear.HalfLinear). CPU only.
  m.def("half_matmul(Tensor x, Tensor w) -> Tensor");
  // ternary_linear(RMSNorm(x)) in one call (csrc/decode/): the norm (bitttt.nn.norm.RMSNorm,
  // norm_weight [K] in x's dtype) fused into the activation quantization; bias float32. CPU only.
  m.def("rms_norm_ternary_linear(Tensor x, Tensor norm_weight, float eps, Tensor packed, Tensor w_scale, "
        "Tensor? bias=None) -> Tensor");
  // Every decoder layer of a Hugging Face BitNet model for one token of each of B rows
  // (csrc/decode/bitnet_decode_cpu.cpp): x [B, C] updated in place; weights, 12 per layer:
  // (input norm, qkv packed, qkv w_scale, attn_sub_norm, o packed, o w_scale, post-attention
  // norm, gate_up packed, gate_up w_scale, ffn_sub_norm, down packed, down w_scale); lut16:
  // empty, or the lut16 layouts of qkv, o, gate_up, down per layer (then the GEMVs run the lut16
  // kernels); kv, 2 per layer and row, row 0's layers first: the k and v buffers
  // [1, H_kv, cap > pos[b], D], written at pos[b]; cos, sin [B, D] of each row's position.
  m.def("bitnet_decode_(Tensor(a!) x, Tensor[] weights, Tensor[] lut16, Tensor(b!)[] kv, Tensor cos, Tensor sin, "
        "int[] pos, "
        "int n_heads, int n_kv_heads, int intermediate, float eps) -> ()");
  // Every block of one of bitttt's own packed models (bitttt.model) for one token of one
  // sequence (csrc/decode/bitttt_decode_cpu.cpp), float32: x [1, C] (the embedding in, the last
  // block's output out) updated in place. mixer 0 (attention) or 1 (ttt_linear); layout 0 (BT2),
  // 1 (lut16) or 2 (trit5): every ternary layer's bytes in it. weights per layer: norm1 [C],
  // the input projection (attention: q, k, v rows; ttt_linear: qk or q, k, then v, then g with
  // the gate) and its w_scale, the output projection and w_scale, norm2 [C], gate_up and
  // w_scale, down and w_scale; ttt_linear then lr_w [H, C], lr_b [H], token_scale [b], ln_w,
  // ln_b [H, D], post_norm weight and bias [C], the convs' weights [2, K, C] and biases [2, C]
  // (empty without the conv), RoPE cos, sin [b, D] of the positions in a mini-batch. state per
  // layer: attention the k, v buffers [1, H, cap > pos, D], written at pos; ttt_linear W, c, gW,
  // gc (the TTT state at pos) and the conv's previous inputs [1, K-1, C], updated in place.
  // rope: attention's rotation of pos [D/2, 2] (cos, sin pairs). ttt: [conv kernel (0: none),
  // gate (0/1), mini-batch b].
  m.def("bitttt_decode_(Tensor(a!) x, Tensor[] weights, Tensor(b!)[] state, Tensor rope, int mixer, int pos, "
        "int n_heads, int hidden, int layout, int[] ttt, float eps, float base_lr) -> ()");

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
  // --- TTT-MLP (docs/design.md §3, second inner model; kernels in csrc/ttt_mlp/) ---
  // Like ttt_linear with the state (W1 [B,H,D,F], b1 [B,H,F], W2 [B,H,F,D], b2 [B,H,D]) and
  // its accumulators gW1, gb1, gW2, gb2 (same shapes); F = 4·D in the module, any F here.
  // With ckpt_every > 0 also returns ckpt [B,H,n_ckpt,2DF+F+D]: (W1, b1, W2, b2) packed at every
  // ckpt_every-th segment start, from which ttt_mlp_backward recomputes.
  m.def("ttt_mlp(Tensor q, Tensor k, Tensor v, Tensor lr, Tensor token_scale, Tensor W1, Tensor b1, Tensor W2, "
        "Tensor b2, Tensor gW1, Tensor gb1, Tensor gW2, Tensor gb2, int pos, Tensor ln_w, Tensor ln_b, "
        "int ckpt_every=0) -> (Tensor out, Tensor W1_out, Tensor b1_out, Tensor W2_out, Tensor b2_out, "
        "Tensor gW1_out, Tensor gb1_out, Tensor gW2_out, Tensor gb2_out, Tensor ckpt)");
  // Gradients of ttt_mlp for (q, k, v, lr, token_scale, W1, b1, W2, b2, gW1, gb1, gW2, gb2, ln_w, ln_b).
  m.def("ttt_mlp_backward(Tensor grad_out, Tensor grad_W1, Tensor grad_b1, Tensor grad_W2, Tensor grad_b2, "
        "Tensor grad_gW1, Tensor grad_gb1, Tensor grad_gW2, Tensor grad_gb2, Tensor q, Tensor k, Tensor v, "
        "Tensor lr, Tensor token_scale, Tensor gW1, Tensor gb1, Tensor gW2, Tensor gb2, int pos, Tensor ln_w, "
        "Tensor ln_b, Tensor ckpt, int ckpt_every) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, "
        "Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // One token (q, k, v [B,H,D], lr [B,H]) for all heads; updates the state in place.
  m.def("ttt_mlp_decode_(Tensor q, Tensor k, Tensor v, Tensor lr, Tensor token_scale, Tensor(a!) W1, "
        "Tensor(b!) b1, Tensor(c!) W2, Tensor(d!) b2, Tensor(e!) gW1, Tensor(f!) gb1, Tensor(g!) gW2, "
        "Tensor(h!) gb2, int pos, Tensor ln_w, Tensor ln_b) -> Tensor");
  // --- end TTT-MLP ---
}

// BitLinear's training-time fake quantization (docs/design.md §2; csrc/quant/), float32:
// x [..., K] -> per-token int8 quantize-dequantize; w [N, K] -> absmean ternary one with its
// scale s = max(mean|w|, 1e-5) (a float32 scalar tensor). Their
// backward is the straight-through estimator, registered in bitttt/ops.py.
STABLE_TORCH_LIBRARY_FRAGMENT(bitttt, m) {
  m.def("fake_quant_activations(Tensor x) -> Tensor");
  m.def("fake_quant_weight(Tensor w, Tensor scale) -> Tensor");
  // The int8 GEMM training forward (issue 26): the same passes also writing the int8 codes
  // (x_q [..., K] with x_scale [...] = 1 / s_x; w_q [N, K]), and the float epilogue of
  // acc = x_q @ w_q.T (torch._int_mm): y = float(acc) * w_scale * x_scale[m] (+ bias[n]).
  m.def("fake_quant_activations_int8(Tensor x) -> (Tensor, Tensor, Tensor)");
  m.def("fake_quant_weight_int8(Tensor w, Tensor scale) -> (Tensor, Tensor)");
  m.def("int8_gemm_epilogue(Tensor acc, Tensor x_scale, Tensor w_scale, Tensor? bias) -> Tensor");
}

// Training-step pieces of the models (csrc/train/; issue 26), float32 CPU; their autograd and
// fake kernels are in bitttt/ops.py. RMSNorm: x [..., C], weight [C] -> (y, r [...] = 1/rms per
// row). Causal depthwise conv over time: x [B, T, C] after prev [B, K-1, C], weight [C, K], bias [C].
STABLE_TORCH_LIBRARY_FRAGMENT(bitttt, m) {
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> (Tensor, Tensor)");
  m.def("rms_norm_backward(Tensor grad, Tensor x, Tensor weight, Tensor r) -> (Tensor, Tensor)");
  m.def("causal_conv1d(Tensor x, Tensor prev, Tensor weight, Tensor bias) -> Tensor");
  m.def("causal_conv1d_backward(Tensor grad, Tensor x, Tensor prev, Tensor weight, Tensor bias) "
        "-> (Tensor, Tensor, Tensor, Tensor)");
  // Rotate-half RoPE fused with the split into heads: x [B, T, H*D], cos, sin [T, D] -> [B, H, T, D].
  m.def("rope_heads(Tensor x, Tensor cos, Tensor sin, int H) -> Tensor");
  m.def("rope_heads_backward(Tensor grad, Tensor cos, Tensor sin) -> Tensor");
  // The attention mixer's interleaved RoPE fused with the split of its qkv projection into heads:
  // qkv [B, T, 3*H*D], cos, sin [T, D/2] -> q, k (rotated), v [B, H, T, D]; backward -> grad_qkv.
  m.def("rope_qkv(Tensor qkv, Tensor cos, Tensor sin, int H) -> (Tensor, Tensor, Tensor)");
  m.def("rope_qkv_backward(Tensor grad_q, Tensor grad_k, Tensor grad_v, Tensor cos, Tensor sin) -> Tensor");
  // SwiGLU's middle: h [..., 2F] = [gate | up] -> silu(gate) * up [..., F]; its backward -> grad_h.
  m.def("silu_mul(Tensor h, int hidden) -> Tensor");
  m.def("silu_mul_backward(Tensor grad, Tensor h, int hidden) -> Tensor");
  // The TTT output gate: gelu_tanh(gate) * y (same shapes); its backward -> (grad_gate, grad_y).
  m.def("gelu_tanh_mul(Tensor gate, Tensor y) -> Tensor");
  m.def("gelu_tanh_mul_backward(Tensor grad, Tensor gate, Tensor y) -> (Tensor, Tensor)");
  // The trainer's step: the gradients' global L2 norm, clipped in place to max_norm (torch's
  // clip_grad_norm_ formula) -> the norm; and max |x| over a list of tensors (NaN if any is NaN).
  m.def("clip_grad_norm_(Tensor(a!)[] grads, float max_norm) -> Tensor");
  m.def("max_abs(Tensor[] tensors) -> Tensor");
}

namespace {

py::dict build_info() {
  py::dict info;
  info["version"] = BITTTT_VERSION;
  info["torch"] = BITTTT_TORCH_VERSION;
  info["stable_abi_target"] = "2.10";
  info["compiled_isas"] = bitttt::ternary::compiled_isas();
#if defined(BITTTT_AMX)
  info["amx"] = true;  // the AMX tile kernels (set "amx") are built
#else
  info["amx"] = false;
#endif
  info["ttt_isa"] = bitttt::ttt::active_isa();
  info["ttt_mlp_isa"] = bitttt::ttt_mlp::active_isa();
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
  d["avx512dq"] = f.avx512dq;
  d["avx512vnni"] = f.avx512vnni;
  d["avx512bf16"] = f.avx512bf16;
  d["avx_vnni"] = f.avx_vnni;
  d["amx_int8"] = f.amx_int8;
  d["neon"] = f.neon;
  d["dotprod"] = f.dotprod;
  return d;
}

py::list peak_kernels() {
  py::list out;
  for (const auto& k : bitttt::peak::compute_kernels()) {
    py::dict d;
    d["name"] = k.name;
    d["kind"] = k.kind;
    d["isa"] = k.isa;
    d["instruction"] = k.instruction;
    d["lanes_per_iter"] = k.lanes_per_iter;
    d["ops_per_lane"] = k.ops_per_lane;
    d["available"] = k.available;
    out.append(d);
  }
  return out;
}

// The kernels run with the GIL released: other Python threads keep going, and the
// checksum comes back as a Python int (uint64, the read's wraps).
std::pair<double, uint64_t> peak_compute(const std::string& name, int threads, int64_t iters, int reps) {
  py::gil_scoped_release nogil;
  const bitttt::peak::Run r = bitttt::peak::run_compute(name, threads, iters, reps);
  return {r.seconds, r.checksum};
}

std::pair<double, uint64_t> peak_read(int threads, int64_t bytes, int reps) {
  py::gil_scoped_release nogil;
  const bitttt::peak::Run r = bitttt::peak::run_read(threads, bytes, reps);
  return {r.seconds, r.checksum};
}

// bitttt.ops.ttt_linear_decode_'s lean path (csrc/ttt/cpu.h): the decode step without the
// dispatcher. handles: the 11 tensors (q, k, v, lr, token_scale, W, c, gW, gc, ln_w, ln_b) as
// torch._C._aoti.unsafe_alloc_void_ptrs_from_tensors gives them (capsules of new tensor
// handles, the stable ABI's way in from Python); this takes ownership of all of them. Returns
// out as a new handle for torch._C._aoti.alloc_tensors_by_stealing_from_void_ptrs. Private:
// anything but those capsules crashes.
void* ttt_linear_decode_handles(const py::list& handles, int64_t pos) {
  using torch::stable::Tensor;
  constexpr size_t kArgs = 11;
  if (handles.size() != kArgs) throw py::value_error("_ttt_linear_decode: expects 11 tensor handles");
  std::vector<Tensor> t;
  t.reserve(kArgs);
  for (size_t i = 0; i < kArgs; ++i) {
    void* p = PyCapsule_GetPointer(handles[i].ptr(), nullptr);
    if (p == nullptr) throw py::error_already_set();  // not a capsule: the ones taken so far are freed
    t.emplace_back(static_cast<AtenTensorHandle>(p));
  }
  Tensor out;
  {
    py::gil_scoped_release nogil;
    out = bitttt::ttt::ttt_linear_decode_cpu(t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], t[8], pos, t[9], t[10]);
  }
  AtenTensorHandle ret = nullptr;
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_new_tensor_handle(out.get(), &ret));
  return ret;
}

}  // namespace

PYBIND11_MODULE(_C, mod) {
  mod.doc() = "bitttt native ops (registered as torch.ops.bitttt.*) and build information";
  mod.def("build_info", &build_info, "Version, torch built against, compiled ISAs (CUDA: bitttt._C_cuda.build_info()).");
  mod.def("cpu_features", &cpu_features, "CPU features detected at run time.");
  mod.def("available_isas", &bitttt::ternary::available_isas, "Kernel sets this CPU can run, best last.");
  mod.def("isa", [] { return std::string(bitttt::ternary::active_kernels().name); },
          "The ternary kernel set in use (BITTTT_ISA or the best available).");
  mod.def("lut16_isa", [] { return std::string(bitttt::ternary::active_lut16_kernels().name); },
          "The lut16 (table-lookup decode) kernel set that goes with the active ternary one.");
  mod.def("trit5_isa", [] { return std::string(bitttt::ternary::active_trit5_kernels().name); },
          "The trit5 (5 weights per byte) kernel set that goes with the active ternary one.");
  mod.def("amx_active", &bitttt::ternary::amx_active,
          "True while the AVX-512 set runs AMX tiles (set 'amx', the default where available).");
  mod.def("set_isa", &bitttt::ternary::set_isa, py::arg("name"),
          "Force a ternary kernel set: 'scalar', 'avx2', 'avx512', 'amx', 'neon', 'neon_dotprod' or 'auto'.");
  // Peak throughput (csrc/peak/peak.h; bitttt/bench/peak.py measures and checks with these).
  mod.def("peak_kernels", &peak_kernels,
          "The compute peak kernels: name, kind (int8|fp32), isa, instruction, lanes_per_iter, ops_per_lane, "
          "available (on this CPU and build).");
  mod.def("peak_compute", &peak_compute, py::arg("name"), py::arg("threads"), py::arg("iters"), py::arg("reps"),
          "Best of reps runs of a compute peak kernel on exactly `threads` threads, `iters` iterations each: "
          "(seconds, checksum); checksum = threads * lanes_per_iter * iters (fp32: min(iters, 2**24)). "
          "ValueError for an unknown name or bad count, RuntimeError for a kernel this CPU lacks.");
  mod.def("peak_read", &peak_read, py::arg("threads"), py::arg("bytes"), py::arg("reps"),
          "Best of reps streaming reads of a `bytes` buffer (word i holds i) split over `threads` threads: "
          "(seconds, checksum = n*(n-1)/2 mod 2**64 for the n = bytes // (8*threads) * threads words read).");
  mod.def("_ttt_linear_decode", &ttt_linear_decode_handles, py::arg("handles"), py::arg("pos"),
          "Private: bitttt.ops.ttt_linear_decode_'s lean path (tensor handles in, out's handle back).");
  mod.def("peak_read_kernel", &bitttt::peak::read_kernel,
          "The code peak_read uses on this CPU: 'avx2' (ymm loads) or 'generic' (portable C++).");
}
