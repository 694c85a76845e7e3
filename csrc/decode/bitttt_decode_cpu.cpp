// bitttt_decode_: every block of one of bitttt's own packed models (bitttt.model,
// BitTTTForCausalLM) for one token of one sequence, in one call and one parallel region
// (docs/design.md §4, "the decode step"); float32. Per block:
//   h = RMSNorm1(x)                       in = ternary_in(h)
//   attention: q, k = RoPE(q, k) (interleaved pairs); k, v written into the KV buffer at pos;
//              y = softmax(q k^T / sqrt(D)) v per head
//   ttt_linear: q, k = causal conv of qk (or the q, k rows); RoPE (rotate-half) at pos % b;
//              lr = base_lr sigmoid(h · lr_w + lr_b) / D; y = the TTT-Linear decode step
//              (the ttt_linear_decode_ kernel, state updated in place); y = LayerNorm(y)
//              (times gelu_tanh(g) with the gate)
//   x += ternary_o(y)                     x += ternary_down(silu(gate) * up), gu = ternary_gu(RMSNorm2(x))
// Why one call: the Python step makes ~130 torch ops per block (dispatch, allocations, small
// tensors); at `base`'s shapes they cost twice the ternary kernels (benchmarks/profile_decode_bitttt.py).
// The workers run the stage scheme of bitnet_decode_ (decode_steps.h): each stage is a set of
// tasks (64-row blocks of a GEMV, or heads) claimed from a counter; the small steps that feed a
// GEMV (norm, quantization, LayerNorm and gate) are repeated by each worker into its own scratch.
// The float steps follow the Python path's math but not its summation order (torch's
// vectorized reductions), so the logits agree with it to float rounding, not bit for bit
// (tests/model/test_own_model_fused_decode.py states the tolerance).
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "decode/decode_steps.h"
#include "ternary/bt2.h"
#include "ternary/dispatch.h"
#include "ternary/lut16.h"
#include "ternary/trit5.h"
#include "ttt/ttt.h"

namespace bitttt::decode {
namespace {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;

constexpr int64_t kRowsPerTask = 64;  // as bitnet_decode_ (a multiple of lut16's and trit5's row tiles)
constexpr int kStagesPerLayer = 5;
// The `weights` list per layer: the common 10 (see the schema in module.cpp), then the TTT
// mixer's 11.
constexpr int kCommon = 10, kTttExtra = 11;
enum Mixer : int64_t { kAttention = 0, kTttLinear = 1 };
enum Layout : int64_t { kBt2 = 0, kLut16 = 1, kTrit5 = 2 };

// The GEMV kernels of the call's layout.
struct Kernels {
  Layout layout;
  const Bt2Kernels& bt2;
  const Lut16Kernels& lut16;
  const Trit5Kernels& trit5;
  int64_t padded_k(int64_t K) const { return layout == kTrit5 ? trit5_padded_k(K) : bt2_padded_k(K); }
};

// One ternary layer: its layout's bytes and per-row scales.
struct Linear {
  const uint8_t* w;
  const float* scale;
  int64_t N, K;
};

// What one worker writes alone.
struct Scratch {
  float* normed;    // [max(C, F)]: the current GEMV's float input
  int8_t* xq;       // [Kp of the widest input]
  uint8_t* tables;  // lut16: [Kp * kLut16TableBytesPerK]
  float x_scale;
  int32_t x_sum;
  float* scores;    // [pos + 1]
  float *q, *k, *y;  // [D] each: one head
};

// Outputs of the stages that later stages read.
struct Shared {
  float* x;       // [C], the residual stream (the op's x)
  float* in;      // [N_in]: the input projection
  float* mix;     // [C]: the mixer's output (attention y, or TTT out per head)
  float* lr;      // [H]
  float* proj;    // [C]: an output projection before its residual add
  float* gate_up; // [2F]
};

struct Dims {
  int64_t C, H, D, F, pos;
  float eps;
  // ttt_linear
  bool conv, gate;
  int64_t conv_k, b;
  float base_lr;
};

// Pointers of one layer.
struct Layer {
  const float *norm1, *norm2;
  Linear in, out, gate_up, down;
  // attention: the KV buffers [H, cap, D]
  float *kc, *vc;
  int64_t cap;
  // ttt_linear
  const float *lr_w, *lr_b, *ts, *ln_w, *ln_b, *post_w, *post_b, *conv_w, *conv_b, *cos, *sin;
  float *W, *c, *gW, *gc, *prev;  // state, updated in place; prev [K-1, C] (conv)
};

// The worker's quantized input of `x` [K] (and lut16's tables) for the call's layout.
void quantize(const Kernels& kern, const float* x, int64_t K, Scratch& s) {
  const int64_t Kp = kern.padded_k(K);
  switch (kern.layout) {
    case kBt2: kern.bt2.quantize_f32(x, K, Kp, s.xq, &s.x_scale, &s.x_sum); break;
    case kLut16:
      kern.lut16.quantize_f32(x, K, Kp, s.xq, &s.x_scale, &s.x_sum);
      kern.lut16.tables(s.xq, Kp, s.tables);
      break;
    case kTrit5: kern.trit5.quantize_f32(x, K, Kp, s.xq, &s.x_scale, &s.x_sum); break;
  }
}

// Rows [t*64, t*64+64) of out = L on the worker's quantized input.
void gemv_task(const Kernels& kern, const Scratch& s, const Linear& L, int64_t t, float* out) {
  const Epilogue ep{OutKind::Float32, L.scale, nullptr, &s.x_scale, &s.x_sum, out, L.N};
  const int64_t n0 = t * kRowsPerTask, n1 = std::min(L.N, n0 + kRowsPerTask), Kp = kern.padded_k(L.K);
  switch (kern.layout) {
    case kBt2: kern.bt2.matmul(s.xq, Kp, L.w, 0, 1, n0, n1, ep); break;
    case kLut16: kern.lut16.gemv(s.xq, s.tables, Kp, L.w, 0, n0, n1, ep); break;
    case kTrit5: kern.trit5.matmul(s.xq, Kp, L.w, 0, 1, n0, n1, ep); break;
  }
}

int64_t tasks(int64_t N) { return (N + kRowsPerTask - 1) / kRowsPerTask; }

// out = w * (x / sqrt(mean(x²) + eps)), bitttt.nn.norm.RMSNorm in float32.
void rms_norm(const float* x, const float* w, int64_t K, float eps, float* out) {
  float ss = 0.f;
  for (int64_t k = 0; k < K; ++k) ss += x[k] * x[k];
  const float r = 1.0f / std::sqrt(ss / static_cast<float>(K) + eps);
  for (int64_t k = 0; k < K; ++k) out[k] = w[k] * (x[k] * r);
}

// x[n] += out[n] for the task's rows n.
void residual_task(float* x, const float* out, int64_t N, int64_t t) {
  for (int64_t n = t * kRowsPerTask; n < std::min(N, (t + 1) * kRowsPerTask); ++n) x[n] += out[n];
}

// Attention head h: q, k rotated by the interleaved RoPE (pairs 2i, 2i+1 times cos_i + i sin_i,
// rot [D/2, 2]), k and v written at pos, then y = softmax(q k^T / sqrt(D)) v over 0..pos.
void attention_task(const Layer& L, const Dims& d, const Shared& sh, const float* rot, Scratch& s, int64_t h) {
  const int64_t C = d.C, D = d.D, pos = d.pos, n = pos + 1;
  const float* qkv = sh.in;
  float* kc = L.kc + h * L.cap * D;
  float* vc = L.vc + h * L.cap * D;
  for (int64_t i = 0; i < D / 2; ++i) {
    const float c = rot[2 * i], sn = rot[2 * i + 1];
    const float* q = qkv + h * D + 2 * i;
    const float* k = qkv + C + h * D + 2 * i;
    s.q[2 * i] = q[0] * c - q[1] * sn;
    s.q[2 * i + 1] = q[0] * sn + q[1] * c;
    kc[pos * D + 2 * i] = k[0] * c - k[1] * sn;
    kc[pos * D + 2 * i + 1] = k[0] * sn + k[1] * c;
  }
  std::copy(qkv + 2 * C + h * D, qkv + 2 * C + (h + 1) * D, vc + pos * D);
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  float mx = -INFINITY;
  for (int64_t t = 0; t < n; ++t) {
    s.scores[t] = dot(s.q, kc + t * D, D) * scale;
    mx = std::max(mx, s.scores[t]);
  }
  float sum = 0.f;
  for (int64_t t = 0; t < n; ++t) sum += (s.scores[t] = std::exp(s.scores[t] - mx));
  const float inv = 1.0f / sum;
  std::fill(s.y, s.y + D, 0.f);
  for (int64_t t = 0; t < n; ++t) {
    const float p = s.scores[t] * inv;
    const float* v = vc + t * D;
    for (int64_t i = 0; i < D; ++i) s.y[i] += p * v[i];
  }
  std::copy(s.y, s.y + D, sh.mix + h * D);
}

// lr of head h from the worker's normed input: base_lr * sigmoid(h · lr_w[h] + lr_b[h]) / D.
void lr_task(const Layer& L, const Dims& d, const Scratch& s, const Shared& sh, int64_t h) {
  float z = 0.f;
  for (int64_t k = 0; k < d.C; ++k) z += s.normed[k] * L.lr_w[h * d.C + k];
  z += L.lr_b[h];
  sh.lr[h] = d.base_lr * (1.0f / (1.0f + std::exp(-z))) / static_cast<float>(d.D);
}

// rotate-half RoPE (bitttt.nn.rope "half"), one head, float32.
void rope_half(const float* x, const float* cos, const float* sin, int64_t D, float* out) {
  const int64_t h = D / 2;
  for (int64_t i = 0; i < D; ++i) out[i] = x[i] * cos[i] + (i < h ? -x[i + h] : x[i - h]) * sin[i];
}

// TTT head h: its q, k (conv over the previous inputs, or the projection's rows), RoPE at
// pos % b, then one step of the inner model (the ttt_linear_decode_ kernel) into sh.mix.
void ttt_task(const ttt::Kernels& tk, const Layer& L, const Dims& d, const Shared& sh, Scratch& s, int64_t h) {
  const int64_t C = d.C, D = d.D, c0 = h * D;
  const float* v;
  float qraw[512], kraw[512];  // D <= 512 (checked)
  if (d.conv) {
    const int64_t K1 = d.conv_k - 1;
    const float* x = sh.in;  // qk [C] is the newest of the conv's inputs
    for (int64_t i = 0; i < D; ++i) {
      const int64_t c = c0 + i;
      float aq = 0.f, ak = 0.f;
      for (int64_t j = 0; j < K1; ++j) {
        aq += L.prev[j * C + c] * L.conv_w[j * C + c];
        ak += L.prev[j * C + c] * L.conv_w[(d.conv_k + j) * C + c];
      }
      aq += x[c] * L.conv_w[K1 * C + c];
      ak += x[c] * L.conv_w[(d.conv_k + K1) * C + c];
      qraw[i] = aq + L.conv_b[c];
      kraw[i] = ak + L.conv_b[C + c];
      for (int64_t j = 0; j + 1 < K1; ++j) L.prev[j * C + c] = L.prev[(j + 1) * C + c];
      if (K1 > 0) L.prev[(K1 - 1) * C + c] = x[c];
    }
    v = sh.in + C + c0;
  } else {
    std::copy(sh.in + c0, sh.in + c0 + D, qraw);
    std::copy(sh.in + C + c0, sh.in + C + c0 + D, kraw);
    v = sh.in + 2 * C + c0;
  }
  const int64_t p = d.pos % d.b;
  rope_half(qraw, L.cos + p * D, L.sin + p * D, D, s.q);
  rope_half(kraw, L.cos + p * D, L.sin + p * D, D, s.k);
  const ttt::Dims dm{1, D, d.b, d.pos, 0};
  const ttt::HeadForward<float> hf{s.q, s.k, v, sh.lr + h, L.ts, L.ln_w + c0, L.ln_b + c0,
                                   L.W + h * D * D, L.c + c0, L.gW + h * D * D, L.gc + c0, sh.mix + c0,
                                   nullptr, nullptr};
  tk.forward_f32(dm, hf);
}

// The TTT output before o_proj into s.normed: LayerNorm(mix) (post_norm, eps 1e-6), times
// gelu_tanh(g) with the gate.
void ttt_output(const Layer& L, const Dims& d, const Shared& sh, Scratch& s) {
  const int64_t C = d.C;
  float mean = 0.f;
  for (int64_t c = 0; c < C; ++c) mean += sh.mix[c];
  mean /= static_cast<float>(C);
  float var = 0.f;
  for (int64_t c = 0; c < C; ++c) var += (sh.mix[c] - mean) * (sh.mix[c] - mean);
  const float r = 1.0f / std::sqrt(var / static_cast<float>(C) + 1e-6f);
  const float* g = sh.in + (d.conv ? 2 : 3) * C;
  for (int64_t c = 0; c < C; ++c) {
    float y = (sh.mix[c] - mean) * r * L.post_w[c] + L.post_b[c];
    if (d.gate) {
      const float x = g[c];
      y *= 0.5f * x * (1.0f + std::tanh(0.7978845608028654f * (x + 0.044715f * x * x * x)));
    }
    s.normed[c] = y;
  }
}

void run_worker(const Kernels& kern, const ttt::Kernels& tk, Mixer mixer, const std::vector<Layer>& layers,
                const Dims& d, const Shared& sh, const float* rot, Stage* stages, Sleep& sleep, Scratch& s) {
  const int64_t C = d.C, F = d.F, H = d.H;
  Stage* st = stages;
  for (const Layer& L : layers) {
    const int64_t n_in = tasks(L.in.N);
    // in = ternary_in(RMSNorm1(x)); the TTT mixer's lr heads are extra tasks on the same input
    run_stage(*st++, sleep, n_in + (mixer == kTttLinear ? H : 0),
              [&] {
                rms_norm(sh.x, L.norm1, C, d.eps, s.normed);
                quantize(kern, s.normed, C, s);
              },
              [&](int64_t t) {
                if (t < n_in) gemv_task(kern, s, L.in, t, sh.in);
                else lr_task(L, d, s, sh, t - n_in);
              });
    run_stage(*st++, sleep, H, [] {}, [&](int64_t h) {
      if (mixer == kAttention) attention_task(L, d, sh, rot, s, h);
      else ttt_task(tk, L, d, sh, s, h);
    });
    run_stage(*st++, sleep, tasks(C),
              [&] {
                if (mixer == kAttention) {
                  quantize(kern, sh.mix, C, s);
                } else {
                  ttt_output(L, d, sh, s);
                  quantize(kern, s.normed, C, s);
                }
              },
              [&](int64_t t) {
                gemv_task(kern, s, L.out, t, sh.proj);
                residual_task(sh.x, sh.proj, C, t);
              });
    run_stage(*st++, sleep, tasks(2 * F),
              [&] {
                rms_norm(sh.x, L.norm2, C, d.eps, s.normed);
                quantize(kern, s.normed, C, s);
              },
              [&](int64_t t) { gemv_task(kern, s, L.gate_up, t, sh.gate_up); });
    run_stage(*st++, sleep, tasks(C),
              [&] {
                for (int64_t i = 0; i < F; ++i) {  // silu(gate) * up
                  const float g = sh.gate_up[i];
                  s.normed[i] = g / (1.0f + std::exp(-g)) * sh.gate_up[F + i];
                }
                quantize(kern, s.normed, F, s);
              },
              [&](int64_t t) {
                gemv_task(kern, s, L.down, t, sh.proj);
                residual_task(sh.x, sh.proj, C, t);
              });
  }
}

int64_t align64(int64_t n) { return (n + 63) / 64 * 64; }

void check(const Tensor& t, const char* what, int64_t l, ScalarType dtype, int64_t numel) {
  STD_TORCH_CHECK(t.scalar_type() == dtype && t.numel() == numel && t.is_contiguous(), "bitttt_decode_: ", what,
                  " of layer ", l, " must be contiguous ", torch::headeronly::toString(dtype), " with ", numel,
                  " elements, got ", torch::headeronly::toString(t.scalar_type()), " with ", t.numel(),
                  t.is_contiguous() ? "" : " (not contiguous)");
}

// Bytes of an N x K ternary layer in the call's layout.
int64_t layout_bytes(Layout layout, int64_t N, int64_t K) {
  switch (layout) {
    case kLut16: return lut16_padded_rows(N) * bt2_padded_k(K) / kBT2WeightsPerByte;
    case kTrit5: return N * trit5_row_bytes(K);
    default: return N * bt2_padded_k(K) / kBT2WeightsPerByte;
  }
}

void bitttt_decode_cpu(Tensor x, std::vector<Tensor> weights, std::vector<Tensor> state, Tensor rope, int64_t mixer,
                       int64_t pos, int64_t n_heads, int64_t hidden, int64_t layout, std::vector<int64_t> ttt,
                       double eps, double base_lr) {
  STD_TORCH_CHECK(mixer == kAttention || mixer == kTttLinear, "bitttt_decode_: mixer must be 0 (attention) or 1 "
                  "(ttt_linear), got ", mixer);
  STD_TORCH_CHECK(layout >= kBt2 && layout <= kTrit5, "bitttt_decode_: layout must be 0 (bt2), 1 (lut16) or 2 "
                  "(trit5), got ", layout);
  STD_TORCH_CHECK(x.scalar_type() == ScalarType::Float && x.is_contiguous() && x.numel() > 0,
                  "bitttt_decode_: x must be a contiguous float32 [1, C]");
  STD_TORCH_CHECK(pos >= 0 && n_heads > 0 && hidden > 0 && eps > 0, "bitttt_decode_: pos >= 0, n_heads > 0, "
                  "hidden > 0 and eps > 0 needed, got ", pos, ", ", n_heads, ", ", hidden, ", ", eps);
  const int64_t C = x.numel(), H = n_heads, F = hidden;
  STD_TORCH_CHECK(C % H == 0 && (C / H) % 2 == 0 && C / H <= 512, "bitttt_decode_: C=", C, " must split into ",
                  H, " heads of an even size <= 512");
  const int64_t D = C / H;
  Dims d{C, H, D, F, pos, static_cast<float>(eps), false, false, 0, 1, static_cast<float>(base_lr)};
  const int64_t per_layer = kCommon + (mixer == kTttLinear ? kTttExtra : 0);
  const int64_t state_per_layer = mixer == kTttLinear ? 5 : 2;
  STD_TORCH_CHECK(!weights.empty() && weights.size() % per_layer == 0 &&
                      state.size() * per_layer == weights.size() * state_per_layer,
                  "bitttt_decode_: weights must hold ", per_layer, " tensors per layer and state ", state_per_layer,
                  ", got ", weights.size(), " and ", state.size());
  if (mixer == kTttLinear) {
    STD_TORCH_CHECK(ttt.size() == 3 && ttt[2] > 0 && ttt[0] >= 0, "bitttt_decode_: ttt must be [conv kernel "
                    "(0: none), gate (0/1), mini-batch > 0]");
    d.conv = ttt[0] > 0, d.conv_k = ttt[0], d.gate = ttt[1] != 0, d.b = ttt[2];
  }
  const int64_t n_layers = static_cast<int64_t>(weights.size()) / per_layer;
  const Layout lay = static_cast<Layout>(layout);
  const int64_t n_in = mixer == kAttention ? 3 * C : (d.conv ? 2 : 3) * C + (d.gate ? C : 0);
  if (mixer == kAttention)
    STD_TORCH_CHECK(rope.scalar_type() == ScalarType::Float && rope.is_contiguous() && rope.numel() == D,
                    "bitttt_decode_: rope must be the contiguous float32 rotation [D/2, 2] of pos");
  std::vector<Layer> layers(n_layers);
  for (int64_t l = 0; l < n_layers; ++l) {
    const Tensor* w = &weights[l * per_layer];
    const Tensor* st = &state[l * state_per_layer];
    auto f = [&](int i, int64_t numel) {
      check(w[i], "a float weight", l, ScalarType::Float, numel);
      return w[i].const_data_ptr<float>();
    };
    auto lin = [&](int i, const char* name, int64_t N, int64_t K) {
      check(w[i], name, l, ScalarType::Byte, layout_bytes(lay, N, K));
      check(w[i + 1], "a w_scale", l, ScalarType::Float, N);
      return Linear{w[i].const_data_ptr<uint8_t>(), w[i + 1].const_data_ptr<float>(), N, K};
    };
    Layer& L = layers[l];
    L.norm1 = f(0, C);
    L.in = lin(1, "the input projection", n_in, C);
    L.out = lin(3, "the output projection", C, C);
    L.norm2 = f(5, C);
    L.gate_up = lin(6, "gate_up", 2 * F, C);
    L.down = lin(8, "down", C, F);
    if (mixer == kAttention) {
      for (int j = 0; j < 2; ++j) {
        const Tensor& c = st[j];
        STD_TORCH_CHECK(c.scalar_type() == ScalarType::Float && c.is_contiguous() && c.dim() == 4 &&
                            c.size(0) == 1 && c.size(1) == H && c.size(3) == D && c.size(2) > pos,
                        "bitttt_decode_: the KV buffers of layer ", l, " must be contiguous float32 [1, ", H,
                        ", > pos=", pos, ", ", D, "]");
      }
      L.kc = st[0].mutable_data_ptr<float>(), L.vc = st[1].mutable_data_ptr<float>(), L.cap = st[0].size(2);
    } else {
      L.lr_w = f(10, H * C), L.lr_b = f(11, H), L.ts = f(12, d.b), L.ln_w = f(13, C), L.ln_b = f(14, C);
      L.post_w = f(15, C), L.post_b = f(16, C);
      L.conv_w = d.conv ? f(17, 2 * d.conv_k * C) : nullptr;
      L.conv_b = d.conv ? f(18, 2 * C) : nullptr;
      L.cos = f(19, d.b * D), L.sin = f(20, d.b * D);
      check(st[0], "the state W", l, ScalarType::Float, H * D * D);
      check(st[1], "the state c", l, ScalarType::Float, C);
      check(st[2], "the state gW", l, ScalarType::Float, H * D * D);
      check(st[3], "the state gc", l, ScalarType::Float, C);
      if (d.conv) check(st[4], "the conv inputs", l, ScalarType::Float, (d.conv_k - 1) * C);
      L.W = st[0].mutable_data_ptr<float>(), L.c = st[1].mutable_data_ptr<float>();
      L.gW = st[2].mutable_data_ptr<float>(), L.gc = st[3].mutable_data_ptr<float>();
      L.prev = d.conv ? st[4].mutable_data_ptr<float>() : nullptr;
    }
  }
  // Scratch: shared outputs, then one block per worker, 64-byte aligned pieces of one allocation.
  const int64_t widest = std::max(C, F);
  const Kernels kern{lay, active_kernels(), active_lut16_kernels(), active_trit5_kernels()};
  const int64_t Kp = kern.padded_k(widest);
  const int64_t workers = std::max<int64_t>(1, torch::stable::get_num_threads());
  const int64_t shared_bytes = align64(4 * (n_in + C + H + C + 2 * F));
  const int64_t table_bytes = lay == kLut16 ? Kp * kLut16TableBytesPerK : 0;
  const int64_t scores = mixer == kAttention ? pos + 1 : 0;  // a TTT position can be any size: no scores
  const int64_t worker_bytes = align64(4 * widest) + align64(Kp) + align64(table_bytes) + align64(4 * scores) +
                               align64(4 * 3 * D);
  Tensor storage = torch::stable::new_empty(x, {shared_bytes + workers * worker_bytes + 64}, ScalarType::Byte);
  uint8_t* base = storage.mutable_data_ptr<uint8_t>();
  base += (64 - reinterpret_cast<uintptr_t>(base) % 64) % 64;
  Shared sh;
  sh.x = x.mutable_data_ptr<float>();
  sh.in = reinterpret_cast<float*>(base);
  sh.mix = sh.in + n_in;
  sh.lr = sh.mix + C;
  sh.proj = sh.lr + H;
  sh.gate_up = sh.proj + C;
  std::vector<Scratch> scratch(workers);
  for (int64_t i = 0; i < workers; ++i) {
    uint8_t* p = base + shared_bytes + i * worker_bytes;
    Scratch& s = scratch[i];
    s.normed = reinterpret_cast<float*>(p);
    p += align64(4 * widest);
    s.xq = reinterpret_cast<int8_t*>(p);
    p += align64(Kp);
    s.tables = p;
    p += align64(table_bytes);
    s.scores = reinterpret_cast<float*>(p);
    p += align64(4 * scores);
    s.q = reinterpret_cast<float*>(p);
    s.k = s.q + D;
    s.y = s.k + D;
  }
  std::unique_ptr<Stage[]> stages(new Stage[kStagesPerLayer * n_layers]);
  const ttt::Kernels& tk = ttt::active_kernels();
  const float* rot = mixer == kAttention ? rope.const_data_ptr<float>() : nullptr;
  std::atomic<int64_t> slots{0};
  Sleep sleep;
  // One task per thread of the pool: each call of the body is one worker (see bitnet_decode_).
  torch::stable::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    Scratch& s = scratch[slots.fetch_add(1)];
    run_worker(kern, tk, static_cast<Mixer>(mixer), layers, d, sh, rot, stages.get(), sleep, s);
  });
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(bitttt, CPU, m) { m.impl("bitttt_decode_", TORCH_BOX(&bitttt_decode_cpu)); }

}  // namespace bitttt::decode
