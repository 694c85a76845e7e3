// Argument checks of the TTT-Linear ops (docs/design.md §3), shared by the CPU entry points
// (ttt_linear_cpu.cpp) and the CUDA ones (ttt_linear_cuda.cu): one set of one-line messages,
// which tests match. Header-only, torch::stable only; host code (never compiled for a device).
#pragma once

#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>

#include <cstdint>
#include <initializer_list>
#include <string>

#include "ttt/ttt.h"

namespace bitttt::ttt::checks {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;

// Where a kernel set runs: every tensor of one call must be there (on CUDA: on q's device).
enum class Where { CPU, CUDA };

inline std::string shape_str(const Tensor& t) {
  std::string s = "[";
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? ", " : "") + std::to_string(t.size(i));
  return s + "]";
}

// The message is built only on failure: the decode step runs these checks every token.
inline void check_shape(const char* op, const char* name, const Tensor& t, std::initializer_list<int64_t> want,
                        const char* dims) {
  bool ok = t.dim() == static_cast<int64_t>(want.size());
  for (size_t i = 0; ok && i < want.size(); ++i) ok = t.size(static_cast<int64_t>(i)) == want.begin()[i];
  if (ok) return;
  std::string w = "[";
  for (size_t i = 0; i < want.size(); ++i) w += (i ? ", " : "") + std::to_string(want.begin()[i]);
  STD_TORCH_CHECK(false, op, ": ", name, " must be ", dims, " = ", w, "], got ", shape_str(t));
}

inline std::string device_str(const Tensor& t) {
  if (t.is_cpu()) return "cpu";
  if (t.is_cuda()) return "cuda:" + std::to_string(t.get_device_index());
  return "another device (not cpu or cuda)";
}

// t must be where the kernels run: on the CPU, or on q's CUDA device.
inline void check_device(const char* op, const char* name, const Tensor& t, const Tensor& q, Where where) {
  if (where == Where::CPU) {
    STD_TORCH_CHECK(t.is_cpu(), op, ": ", name, " must be on the CPU like q, got ", device_str(t));
  } else {
    STD_TORCH_CHECK(t.is_cuda() && t.get_device_index() == q.get_device_index(), op, ": ", name,
                    " must be on q's device ", device_str(q), ", got ", device_str(t),
                    "; move every input to one device");
  }
}

// Shared checks of the forward, backward and decode. q is [B,H,T,D], or [B,H,D] for one
// token (decode, one_token: lr is then [B,H]). Returns the dims (ckpt_every 0).
inline Dims check_inputs(const char* op, Where where, const Tensor& q, const Tensor& k, const Tensor& v,
                         const Tensor& lr, const Tensor& ts, const Tensor& W, const Tensor& c, const Tensor& gW,
                         const Tensor& gc, int64_t pos, const Tensor& ln_w, const Tensor& ln_b,
                         bool one_token = false) {
  if (one_token) {
    STD_TORCH_CHECK(q.dim() == 3, op, ": q must be 3-D [B, H, D] (one token), got ", shape_str(q));
  } else {
    STD_TORCH_CHECK(q.dim() == 4, op, ": q must be 4-D [B, H, T, D], got ", shape_str(q));
  }
  const int64_t B = q.size(0), H = q.size(1), T = one_token ? 1 : q.size(2), D = q.size(q.dim() - 1);
  STD_TORCH_CHECK(D > 0, op, ": head size D must be positive");
  STD_TORCH_CHECK(ts.dim() == 1 && ts.size(0) > 0, op, ": token_scale must be 1-D [b] with b >= 1, got ",
                  shape_str(ts));
  STD_TORCH_CHECK(pos >= 0, op, ": pos must be >= 0, got ", pos);
  if (one_token) {
    check_shape(op, "k", k, {B, H, D}, "[B, H, D]");
    check_shape(op, "v", v, {B, H, D}, "[B, H, D]");
    check_shape(op, "lr", lr, {B, H}, "[B, H]");
  } else {
    check_shape(op, "k", k, {B, H, T, D}, "[B, H, T, D]");
    check_shape(op, "v", v, {B, H, T, D}, "[B, H, T, D]");
    check_shape(op, "lr", lr, {B, H, T}, "[B, H, T]");
  }
  check_shape(op, "W", W, {B, H, D, D}, "[B, H, D, D]");
  check_shape(op, "c", c, {B, H, D}, "[B, H, D]");
  check_shape(op, "gW", gW, {B, H, D, D}, "[B, H, D, D]");
  check_shape(op, "gc", gc, {B, H, D}, "[B, H, D]");
  check_shape(op, "ln_w", ln_w, {H, D}, "[H, D]");
  check_shape(op, "ln_b", ln_b, {H, D}, "[H, D]");
  const ScalarType dt = q.scalar_type();
  STD_TORCH_CHECK(dt == ScalarType::Float || dt == ScalarType::Double, op,
                  ": q must be float32 or float64 (cast bfloat16 to float32), got ",
                  torch::headeronly::toString(dt));
  if (where == Where::CPU) {
    STD_TORCH_CHECK(q.is_cpu(), op, ": q must be a CPU tensor");
  } else {
    STD_TORCH_CHECK(q.is_cuda(), op, ": q must be a CUDA tensor");
  }
  const Tensor* all[] = {&k, &v, &lr, &ts, &W, &c, &gW, &gc, &ln_w, &ln_b};
  const char* names[] = {"k", "v", "lr", "token_scale", "W", "c", "gW", "gc", "ln_w", "ln_b"};
  for (int i = 0; i < 10; ++i) {
    STD_TORCH_CHECK(all[i]->scalar_type() == dt, op, ": ", names[i], " must have q's dtype ",
                    torch::headeronly::toString(dt), ", got ", torch::headeronly::toString(all[i]->scalar_type()));
    check_device(op, names[i], *all[i], q, where);
  }
  return Dims{T, D, ts.size(0), pos, 0};
}

// ckpt_every as the kernels use it. Past the call's segment count it means "only the first
// checkpoint", as it does at the count itself; clamped there, because the kernels size a
// buffer by it (ckpt_every·D² per head: 2^62 overflowed it into a heap overrun) and a value
// near 2^63 overflowed num_checkpoints' rounding. Callers check ckpt_every >= 0 first.
inline int64_t effective_ckpt_every(const Dims& dm, int64_t ckpt_every) {
  const int64_t nseg = num_segments(dm);
  return ckpt_every > nseg ? (nseg > 0 ? nseg : 1) : ckpt_every;
}

// The decode step updates the state in place: it cannot go through a contiguous copy.
inline void check_state_contiguous(const char* op, const Tensor& W, const Tensor& c, const Tensor& gW,
                                   const Tensor& gc) {
  const Tensor* state[] = {&W, &c, &gW, &gc};
  for (const Tensor* t : state)
    STD_TORCH_CHECK(t->is_contiguous(), op, ": the state tensors W, c, gW, gc are updated in place "
                    "and must be contiguous; pass .contiguous() copies");
}

// The backward's extra inputs: checkpoints and the gradients of the forward's outputs.
// Returns the dims with ckpt_every set.
inline Dims check_backward_inputs(const char* op, Where where, const Tensor& grad_out, const Tensor& grad_W,
                                  const Tensor& grad_c, const Tensor& grad_gW, const Tensor& grad_gc,
                                  const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& lr,
                                  const Tensor& ts, const Tensor& W, const Tensor& c, const Tensor& gW,
                                  const Tensor& gc, int64_t pos, const Tensor& ln_w, const Tensor& ln_b,
                                  const Tensor& ckpt_W, const Tensor& ckpt_c, int64_t ckpt_every) {
  Dims dm = check_inputs(op, where, q, k, v, lr, ts, W, c, gW, gc, pos, ln_w, ln_b);
  STD_TORCH_CHECK(ckpt_every > 0, op, ": ckpt_every must be > 0 (the forward must save checkpoints)");
  dm.ckpt_every = effective_ckpt_every(dm, ckpt_every);
  const int64_t B = q.size(0), H = q.size(1), T = dm.T, D = dm.D, nck = num_checkpoints(dm);
  check_shape(op, "ckpt_W", ckpt_W, {B, H, nck, D, D}, "[B, H, n_ckpt, D, D]");
  check_shape(op, "ckpt_c", ckpt_c, {B, H, nck, D}, "[B, H, n_ckpt, D]");
  check_shape(op, "grad_out", grad_out, {B, H, T, D}, "[B, H, T, D]");
  check_shape(op, "grad_W", grad_W, {B, H, D, D}, "[B, H, D, D]");
  check_shape(op, "grad_c", grad_c, {B, H, D}, "[B, H, D]");
  check_shape(op, "grad_gW", grad_gW, {B, H, D, D}, "[B, H, D, D]");
  check_shape(op, "grad_gc", grad_gc, {B, H, D}, "[B, H, D]");
  const Tensor* more[] = {&grad_out, &grad_W, &grad_c, &grad_gW, &grad_gc, &ckpt_W, &ckpt_c};
  const char* names[] = {"grad_out", "grad_W", "grad_c", "grad_gW", "grad_gc", "ckpt_W", "ckpt_c"};
  for (int i = 0; i < 7; ++i) {
    STD_TORCH_CHECK(more[i]->scalar_type() == q.scalar_type(), op, ": ", names[i],
                    " must have q's dtype (gradients and checkpoints are q's dtype)");
    check_device(op, names[i], *more[i], q, where);
  }
  return dm;
}

}  // namespace bitttt::ttt::checks
