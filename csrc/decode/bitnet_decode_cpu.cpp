// bitnet_decode_: every decoder layer of a Hugging Face BitNet b1.58 model for one token of each
// of B independent sequences (rows), in one call and one parallel region (docs/design.md §4,
// "the decode step"). Row b has its own KV buffers and position. Per layer:
//   qkv = ternary(RMSNorm(x))            rope(q), rope(k); k, v written into the KV buffer at pos
//   y = softmax(q k^T / sqrt(D)) v       (GQA: query head h reads KV head h / (H / H_kv))
//   x += ternary_o(RMSNorm(y))           gu = ternary_gu(RMSNorm(x))
//   x += ternary_down(RMSNorm(relu(gate)^2 * up))
// The float steps round to the activations' dtype where bitttt.hf.bitnet's per-op path does
// (one rounding per torch op), and the ternary layers are rms_norm_ternary_linear's own steps
// (same norm row, same quantization, same BT2 kernel), so the two paths differ only in the
// attention's float32 summation order.
//
// B rows (bitttt serve's batch): each GEMV becomes one GEMM with M = B (the weights are read
// once for all rows), the attention runs one task per (row, KV head), and the small activation
// steps run per row. Every output of a row is computed by the same operations as a one-row call
// (the GEMM's int32 dot products are exact and its epilogue is per element), so row b of a
// B-row call equals the one-row call on that row, bit for bit.
//
// Why one call: the per-op path makes ~160 torch ops and 5 parallel regions per layer; at M = 1
// their dispatch, allocations and thread wake-ups cost as much as a third of the token
// (benchmarks/profile_decode.py). Here each stage of a layer is a set of tasks (row blocks of
// a GEMV, or KV heads of the attention) that the pool's workers claim from an atomic counter; a worker
// that finds a stage taken moves on, and every worker waits for the stage's last task before
// the next stage reads its output. The work does not depend on how many workers show up, so
// a thread the OS keeps off a busy CPU delays, and never blocks, the token. A waiting worker
// spins for a few tens of microseconds (a stage's last task is shorter than a sleep and a
// wake-up), then sleeps until the last task wakes it: on a busy machine a spinning or
// yielding waiter would take the CPU from the very thread it waits for. The small
// activation steps (norm, quantize, relu²·up) are repeated by each worker into its own
// scratch rather than run as a stage of their own: a few microseconds against a wait.
// With lut16 layouts (csrc/ternary/lut16.h; BitLinear's rule picks them: AVX2 machines) the
// GEMVs run the table-lookup kernels, each worker building its own tables per input.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

#include "ternary/bt2.h"
#include "ternary/dispatch.h"
#include "ternary/lut16.h"
#include "decode/decode_steps.h"

namespace bitttt::decode {
namespace {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;
using namespace bitttt::ternary;

constexpr int64_t kRowsPerTask = 64;  // as rms_norm_ternary_linear: 64 rows of K = 2560 are 40 KiB
constexpr int kWeightsPerLayer = 12;  // the `weights` list's stride, see the schema in module.cpp
constexpr int kStagesPerLayer = 5;
// One row's KV buffers of one layer, [H_kv, cap, D] each.
template <class V>
struct RowKV {
  typename V::T *k, *v;
  int64_t cap;
};

// Pointers of one layer (the weights list's order) and its rows' KV buffers.
template <class V>
struct Layer {
  using T = typename V::T;
  const T *norm_in, *norm_attn, *norm_post, *norm_ffn;
  const uint8_t *qkv, *o, *gate_up, *down;  // BT2, or lut16 layouts when the call has them
  const float *s_qkv, *s_o, *s_gate_up, *s_down;
  const RowKV<V>* kv;  // [B]
};

struct Dims {
  int64_t B, C, I, H, Hkv, D;
  const int64_t* pos;  // [B]: each row's position
  float eps, attn_scale;
};

// What one worker writes alone: the normalized and quantized inputs of the current GEMM (all
// B rows), one row's FFN activation, and one attention head's rotated q, k and scores.
template <class V>
struct Scratch {
  using T = typename V::T;
  T* normed;      // [max(C, H*D, I)]: one row
  T* act;         // [I]: one row
  int8_t* xq;     // [B, Kp] (Kp of the current input; room for the widest)
  uint8_t* tables;  // lut16: [B, Kp * kLut16TableBytesPerK] of the widest input
  float* x_scale;   // [B]
  int32_t* x_sum;   // [B]
  float* scores;  // [G, max pos + 1]
  float *q, *y;   // [G, D]: one KV head's queries (rotated) and outputs
  float* row;     // [D]: a cached k or v row in float32
};

// Shared outputs of the stages, in the model's dtype, row after row ([B, C], [B, Nqkv], ...).
template <class V>
struct Shared {
  using T = typename V::T;
  T *x, *qkv, *y, *proj, *gate_up;
};

// The GEMV kernels of a call: BT2's, or lut16's (then `lut16` is set).
struct Kernels {
  const Bt2Kernels& bt2;
  const Lut16Kernels* lut16;
};

// Row b of the GEMM's input: normed = RMSNorm(src; w, eps) as rms_norm_ternary_linear's row
// (float32 sum of squares in order, normalize, round to T, times w, round), then the kernels'
// quantization into xq's row b (and lut16's tables of that row).
template <class V>
void norm_quantize(const Kernels& kern, const typename V::T* src, const typename V::T* w, int64_t K, float eps,
                   Scratch<V>& s, int64_t b) {
  float ss = 0.f;
  for (int64_t k = 0; k < K; ++k) ss += V::load(src[k]) * V::load(src[k]);
  const float r = 1.0f / std::sqrt(ss / static_cast<float>(K) + eps);
  for (int64_t k = 0; k < K; ++k) s.normed[k] = V::store(V::load(w[k]) * V::load(V::store(V::load(src[k]) * r)));
  const int64_t Kp = bt2_padded_k(K);
  int8_t* xq = s.xq + b * Kp;
  auto quantize = [&](const auto& k) {
    if constexpr (std::is_same_v<V, F32>)
      k.quantize_f32(s.normed, K, Kp, xq, &s.x_scale[b], &s.x_sum[b]);
    else
      k.quantize_bf16(s.normed, K, Kp, xq, &s.x_scale[b], &s.x_sum[b]);
  };
  if (kern.lut16) {
    quantize(*kern.lut16);
    kern.lut16->tables(xq, Kp, s.tables + b * Kp * kLut16TableBytesPerK);
  } else {
    quantize(kern.bt2);
  }
}

// Weight rows [t*64, t*64+64) of out[B, N] = the layer on the worker's quantized inputs: one
// GEMM over the B rows (the lut16 kernels are GEMVs: one call per row, on cached weight rows).
template <class V>
void gemv_task(const Kernels& kern, const Scratch<V>& s, int64_t B, int64_t K, const uint8_t* weights,
               const float* w_scale, int64_t N, int64_t t, typename V::T* out) {
  static_assert(kRowsPerTask % kLut16Rows == 0, "lut16 tasks start on a block");
  const Epilogue ep{V::kOut, w_scale, nullptr, s.x_scale, s.x_sum, out, N};
  const int64_t n0 = t * kRowsPerTask, n1 = std::min(N, n0 + kRowsPerTask), Kp = bt2_padded_k(K);
  if (kern.lut16) {
    for (int64_t b = 0; b < B; ++b)
      kern.lut16->gemv(s.xq, s.tables + b * Kp * kLut16TableBytesPerK, Kp, weights, b, n0, n1, ep);
  } else {
    kern.bt2.matmul(s.xq, Kp, weights, 0, B, n0, n1, ep);
  }
}

// x[b, n] += out[b, n] for the task's columns n of every row, rounded to T as torch's add.
template <class V>
void residual_task(typename V::T* x, const typename V::T* out, int64_t B, int64_t N, int64_t t) {
  for (int64_t b = 0; b < B; ++b)
    for (int64_t n = t * kRowsPerTask; n < std::min(N, (t + 1) * kRowsPerTask); ++n)
      x[b * N + n] = V::store(V::load(x[b * N + n]) + V::load(out[b * N + n]));
}

template <class V>
void to_float(const typename V::T* x, int64_t D, float* out) {
  for (int64_t i = 0; i < D; ++i) out[i] = V::load(x[i]);
}

// Row b's KV head g and its G = H / H_kv query heads (head h = g * G + j, as
// one_token_attention's grouping): the new k (rotated) and v go into the row's buffer at its
// pos, then every query attends over positions 0..pos, each cached row read once for all G
// queries. Float32 throughout, as bitttt.nn.attention.one_token_attention; y rounded to T.
template <class V>
void attention_task(const Layer<V>& L, const Dims& d, const Shared<V>& sh, const typename V::T* cos_all,
                    const typename V::T* sin_all, Scratch<V>& s, int64_t b, int64_t g) {
  using T = typename V::T;
  const int64_t D = d.D, G = d.H / d.Hkv, pos = d.pos[b], n = pos + 1;
  const RowKV<V>& kv = L.kv[b];
  T* kc = kv.k + g * kv.cap * D;
  T* vc = kv.v + g * kv.cap * D;
  const T* qkv = sh.qkv + b * (d.H + 2 * d.Hkv) * D;
  const T *cos = cos_all + b * D, *sin = sin_all + b * D;
  rope<V>(qkv + (d.H + g) * D, cos, sin, D, s.row);
  const T* v_new = qkv + (d.H + d.Hkv + g) * D;
  for (int64_t i = 0; i < D; ++i) {
    kc[pos * D + i] = V::store(s.row[i]);  // exact: rope rounds to T
    vc[pos * D + i] = v_new[i];
  }
  for (int64_t j = 0; j < G; ++j) rope<V>(qkv + (g * G + j) * D, cos, sin, D, s.q + j * D);
  for (int64_t t = 0; t < n; ++t) {
    to_float<V>(kc + t * D, D, s.row);
    for (int64_t j = 0; j < G; ++j) s.scores[j * n + t] = dot(s.q + j * D, s.row, D) * d.attn_scale;
  }
  for (int64_t j = 0; j < G; ++j) {  // softmax of each query's scores, in place
    float* sc = s.scores + j * n;
    const float mx = *std::max_element(sc, sc + n);
    float sum = 0.f;
    for (int64_t t = 0; t < n; ++t) {
      sc[t] = std::exp(sc[t] - mx);
      sum += sc[t];
    }
    const float inv = 1.0f / sum;
    for (int64_t t = 0; t < n; ++t) sc[t] *= inv;
  }
  std::fill(s.y, s.y + G * D, 0.f);
  for (int64_t t = 0; t < n; ++t) {
    to_float<V>(vc + t * D, D, s.row);
    for (int64_t j = 0; j < G; ++j) {
      const float p = s.scores[j * n + t];
      float* y = s.y + j * D;
      for (int64_t i = 0; i < D; ++i) y[i] += p * s.row[i];
    }
  }
  T* out = sh.y + b * d.H * D + g * G * D;
  for (int64_t i = 0; i < G * D; ++i) out[i] = V::store(s.y[i]);
}

// The FFN's activation into s.act: relu(gate)² * up, each op rounded to T.
template <class V>
void ffn_act(const typename V::T* gate_up, int64_t I, Scratch<V>& s) {
  for (int64_t i = 0; i < I; ++i) {
    const float g = V::load(gate_up[i]);
    const float r = g < 0.f ? 0.f : g;  // relu; NaN passes, as F.relu's
    s.act[i] = V::store(V::load(V::store(r * r)) * V::load(gate_up[I + i]));
  }
}

// One worker's whole step: every layer's five stages in order.
template <class V>
void run_worker(const Kernels& kern, const std::vector<Layer<V>>& layers, const Dims& d, const Shared<V>& sh,
                const typename V::T* cos, const typename V::T* sin, Stage* stages, Sleep& sleep, Scratch<V>& s) {
  const int64_t B = d.B, C = d.C, I = d.I, HD = d.H * d.D, Nqkv = (d.H + 2 * d.Hkv) * d.D;
  auto tasks = [](int64_t N) { return (N + kRowsPerTask - 1) / kRowsPerTask; };
  // Every row's input of a GEMM, normalized and quantized: src [B, K] row after row.
  auto prepare = [&](const typename V::T* src, const typename V::T* w, int64_t K) {
    for (int64_t b = 0; b < B; ++b) norm_quantize<V>(kern, src + b * K, w, K, d.eps, s, b);
  };
  Stage* st = stages;
  for (const Layer<V>& L : layers) {
    run_stage(*st++, sleep, tasks(Nqkv), [&] { prepare(sh.x, L.norm_in, C); },
              [&](int64_t t) { gemv_task<V>(kern, s, B, C, L.qkv, L.s_qkv, Nqkv, t, sh.qkv); });
    run_stage(*st++, sleep, B * d.Hkv, [] {},
              [&](int64_t t) { attention_task<V>(L, d, sh, cos, sin, s, t / d.Hkv, t % d.Hkv); });
    run_stage(*st++, sleep, tasks(C), [&] { prepare(sh.y, L.norm_attn, HD); },
              [&](int64_t t) {
                gemv_task<V>(kern, s, B, HD, L.o, L.s_o, C, t, sh.proj);
                residual_task<V>(sh.x, sh.proj, B, C, t);
              });
    run_stage(*st++, sleep, tasks(2 * I), [&] { prepare(sh.x, L.norm_post, C); },
              [&](int64_t t) { gemv_task<V>(kern, s, B, C, L.gate_up, L.s_gate_up, 2 * I, t, sh.gate_up); });
    run_stage(*st++, sleep, tasks(C),
              [&] {
                for (int64_t b = 0; b < B; ++b) {
                  ffn_act<V>(sh.gate_up + b * 2 * I, I, s);
                  norm_quantize<V>(kern, s.act, L.norm_ffn, I, d.eps, s, b);
                }
              },
              [&](int64_t t) {
                gemv_task<V>(kern, s, B, I, L.down, L.s_down, C, t, sh.proj);
                residual_task<V>(sh.x, sh.proj, B, C, t);
              });
  }
}

int64_t align64(int64_t n) { return (n + 63) / 64 * 64; }

template <class V>
void decode_token(Tensor& x, const std::vector<Tensor>& weights, const std::vector<Tensor>& lut16,
                  const std::vector<Tensor>& kv, const Tensor& cos, const Tensor& sin, const Dims& d) {
  using T = typename V::T;
  const int64_t n_layers = static_cast<int64_t>(weights.size()) / kWeightsPerLayer, B = d.B;
  // kv holds row 0's 2 * n_layers buffers, then row 1's, ...: kv_rows[l * B + b] is row b's in layer l.
  std::vector<RowKV<V>> kv_rows(n_layers * B);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t l = 0; l < n_layers; ++l) {
      const Tensor& k = kv[2 * (b * n_layers + l)];
      kv_rows[l * B + b] = {static_cast<T*>(k.mutable_data_ptr()),
                            static_cast<T*>(kv[2 * (b * n_layers + l) + 1].mutable_data_ptr()), k.size(2)};
    }
  std::vector<Layer<V>> layers(n_layers);
  for (int64_t l = 0; l < n_layers; ++l) {
    const Tensor* w = &weights[l * kWeightsPerLayer];
    auto t = [&](int i) { return static_cast<const T*>(w[i].const_data_ptr()); };
    // The GEMV weights: BT2 (weights 1, 4, 7, 10) or the lut16 list's four.
    auto u8 = [&](int i) { return (lut16.empty() ? w[i] : lut16[4 * l + i / 3]).const_data_ptr<uint8_t>(); };
    auto f = [&](int i) { return w[i].const_data_ptr<float>(); };
    layers[l] = {t(0), t(3), t(6), t(9), u8(1), u8(4), u8(7), u8(10), f(2), f(5), f(8), f(11), &kv_rows[l * B]};
  }
  const int64_t C = d.C, I = d.I, HD = d.H * d.D, Nqkv = (d.H + 2 * d.Hkv) * d.D;
  const int64_t widest = std::max({C, HD, I}), G = d.H / d.Hkv, Kp = bt2_padded_k(widest);
  const int64_t max_pos = *std::max_element(d.pos, d.pos + B);
  const int64_t workers = std::max<int64_t>(1, torch::stable::get_num_threads());
  // Scratch, 64-byte aligned pieces of one allocation: shared outputs, then one block per worker.
  const int64_t shared_bytes = align64(static_cast<int64_t>(sizeof(T)) * B * (Nqkv + HD + C + 2 * I));
  const int64_t table_bytes = lut16.empty() ? 0 : B * Kp * kLut16TableBytesPerK;
  const int64_t worker_bytes = align64(static_cast<int64_t>(sizeof(T)) * (widest + I)) + align64(B * Kp) +
                               table_bytes + align64(8 * B) + align64(4 * G * (max_pos + 1)) +
                               align64(4 * (2 * G + 1) * d.D);
  Tensor storage = torch::stable::new_empty(x, {shared_bytes + workers * worker_bytes + 64}, ScalarType::Byte);
  uint8_t* base = storage.mutable_data_ptr<uint8_t>();
  base += (64 - reinterpret_cast<uintptr_t>(base) % 64) % 64;
  Shared<V> sh;
  sh.x = static_cast<T*>(x.mutable_data_ptr());
  sh.qkv = reinterpret_cast<T*>(base);
  sh.y = sh.qkv + B * Nqkv;
  sh.proj = sh.y + B * HD;
  sh.gate_up = sh.proj + B * C;
  std::vector<Scratch<V>> scratch(workers);
  for (int64_t w = 0; w < workers; ++w) {
    uint8_t* p = base + shared_bytes + w * worker_bytes;
    Scratch<V>& s = scratch[w];
    s.normed = reinterpret_cast<T*>(p);
    s.act = s.normed + widest;
    p += align64(static_cast<int64_t>(sizeof(T)) * (widest + I));
    s.xq = reinterpret_cast<int8_t*>(p);
    p += align64(B * Kp);
    s.tables = p;
    p += table_bytes;
    s.x_scale = reinterpret_cast<float*>(p);
    s.x_sum = reinterpret_cast<int32_t*>(s.x_scale + B);
    p += align64(8 * B);
    s.scores = reinterpret_cast<float*>(p);
    p += align64(4 * G * (max_pos + 1));
    s.q = reinterpret_cast<float*>(p);
    s.y = s.q + G * d.D;
    s.row = s.y + G * d.D;
  }
  std::unique_ptr<Stage[]> stages(new Stage[kStagesPerLayer * n_layers]);
  const Kernels kern{active_kernels(), lut16.empty() ? nullptr : &active_lut16_kernels()};
  const T* cos_p = static_cast<const T*>(cos.const_data_ptr());
  const T* sin_p = static_cast<const T*>(sin.const_data_ptr());
  std::atomic<int64_t> slots{0};
  Sleep sleep;
  // One task per thread of the pool: each call of the body is one worker, however the pool
  // splits the range (a thread given two ids, or the whole range inline, is one worker).
  torch::stable::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    Scratch<V>& s = scratch[slots.fetch_add(1)];
    run_worker<V>(kern, layers, d, sh, cos_p, sin_p, stages.get(), sleep, s);
  });
}

void check_tensor(const Tensor& t, const char* what, int64_t l, ScalarType dtype, int64_t numel) {
  STD_TORCH_CHECK(t.scalar_type() == dtype && t.numel() == numel && t.is_contiguous(), "bitnet_decode_: ", what,
                  " of layer ", l, " must be contiguous ", torch::headeronly::toString(dtype), " with ", numel,
                  " elements, got ", torch::headeronly::toString(t.scalar_type()), " with ", t.numel());
}

void bitnet_decode_cpu(Tensor x, std::vector<Tensor> weights, std::vector<Tensor> lut16, std::vector<Tensor> kv,
                       Tensor cos, Tensor sin, std::vector<int64_t> pos, int64_t n_heads, int64_t n_kv_heads,
                       int64_t intermediate, double eps) {
  const ScalarType dtype = x.scalar_type();
  const int64_t B = static_cast<int64_t>(pos.size());
  STD_TORCH_CHECK(dtype == ScalarType::Float || dtype == ScalarType::BFloat16,
                  "bitnet_decode_: x must be float32 or bfloat16, got ", torch::headeronly::toString(dtype));
  STD_TORCH_CHECK(B > 0, "bitnet_decode_: pos must hold one position per row, got none");
  STD_TORCH_CHECK(weights.size() % kWeightsPerLayer == 0 && !weights.empty() && kv.size() * 6 == weights.size() * B,
                  "bitnet_decode_: weights must hold 12 tensors per layer and kv 2 (k, v) per layer and row, got ",
                  weights.size(), " and ", kv.size(), " for ", B, " rows");
  STD_TORCH_CHECK(lut16.empty() || lut16.size() * 3 == weights.size(),
                  "bitnet_decode_: lut16 must be empty or hold 4 layouts per layer (qkv, o, gate_up, down), got ",
                  lut16.size(), " for ", weights.size() / kWeightsPerLayer, " layers");
  STD_TORCH_CHECK(n_heads > 0 && n_kv_heads > 0 && n_heads % n_kv_heads == 0,
                  "bitnet_decode_: n_heads=", n_heads, " must be a positive multiple of n_kv_heads=", n_kv_heads);
  STD_TORCH_CHECK(eps > 0, "bitnet_decode_: eps must be > 0, got ", eps);
  for (int64_t p : pos) STD_TORCH_CHECK(p >= 0, "bitnet_decode_: pos must be >= 0, got ", p);
  const int64_t C = weights[0].numel(), I = intermediate, D = cos.numel() / B, H = n_heads, Hkv = n_kv_heads;
  STD_TORCH_CHECK(x.is_contiguous() && x.numel() == B * C,
                  "bitnet_decode_: x must be contiguous [B, C] (B = len(pos) = ", B, ", C = ", C, "), got ",
                  x.numel(), " elements");
  STD_TORCH_CHECK(D > 0 && D % 2 == 0 && cos.numel() == B * D && sin.numel() == B * D && cos.scalar_type() == dtype &&
                      sin.scalar_type() == dtype && cos.is_contiguous() && sin.is_contiguous(),
                  "bitnet_decode_: cos and sin must be contiguous [B, D] (D even) in x's dtype");
  STD_TORCH_CHECK(I > 0, "bitnet_decode_: intermediate must be > 0, got ", I);
  const int64_t HD = H * D, Nqkv = (H + 2 * Hkv) * D;
  const int64_t n_layers = static_cast<int64_t>(weights.size()) / kWeightsPerLayer;
  for (int64_t l = 0; l < n_layers; ++l) {
    const Tensor* w = &weights[l * kWeightsPerLayer];
    const int64_t in[4] = {C, HD, C, I}, out[4] = {Nqkv, C, 2 * I, C};
    const char* names[4] = {"qkv", "o_proj", "gate_up", "down_proj"};
    for (int j = 0; j < 4; ++j) {
      check_tensor(w[3 * j], "a norm weight", l, dtype, in[j]);
      check_tensor(w[3 * j + 1], names[j], l, ScalarType::Byte, out[j] * bt2_padded_k(in[j]) / kBT2WeightsPerByte);
      check_tensor(w[3 * j + 2], "a w_scale", l, ScalarType::Float, out[j]);
      if (!lut16.empty())
        check_tensor(lut16[4 * l + j], names[j], l, ScalarType::Byte,
                     lut16_padded_rows(out[j]) * bt2_padded_k(in[j]) / kBT2WeightsPerByte);
    }
    for (int64_t b = 0; b < B; ++b)
      for (int j = 0; j < 2; ++j) {
        const Tensor& c = kv[2 * (b * n_layers + l) + j];
        STD_TORCH_CHECK(c.scalar_type() == dtype && c.is_contiguous() && c.dim() == 4 && c.size(0) == 1 &&
                            c.size(1) == Hkv && c.size(3) == D && c.size(2) > pos[b],
                        "bitnet_decode_: the KV buffers of layer ", l, " (row ", b, ") must be contiguous [1, ", Hkv,
                        ", > pos=", pos[b], ", ", D, "] in x's dtype");
      }
  }
  // Rows must not share a KV buffer: two rows writing one buffer's position would race.
  std::vector<const void*> buffers;
  for (const Tensor& t : kv) buffers.push_back(t.const_data_ptr());
  std::sort(buffers.begin(), buffers.end());
  STD_TORCH_CHECK(std::adjacent_find(buffers.begin(), buffers.end()) == buffers.end(),
                  "bitnet_decode_: every row and layer needs KV buffers of its own (two share one)");
  const Dims d{B, C, I, H, Hkv, D, pos.data(), static_cast<float>(eps), static_cast<float>(1.0 / std::sqrt(double(D)))};
  if (dtype == ScalarType::Float)
    decode_token<F32>(x, weights, lut16, kv, cos, sin, d);
  else
    decode_token<BF16>(x, weights, lut16, kv, cos, sin, d);
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(bitttt, CPU, m) { m.impl("bitnet_decode_", TORCH_BOX(&bitnet_decode_cpu)); }

}  // namespace bitttt::decode
