// Torch-free test of the BT2 CPU kernels: every kernel set this CPU runs against the scalar
// reference, bit for bit, on the shapes and extreme values of tests/ops/test_ternary_linear.py.
// Built by tests/native/build.sh natively (x86-64: avx2, avx512 where the CPU has it) and for
// aarch64 (neon, neon_dotprod), which .ci/arm_check runs under qemu-aarch64 with and without
// the dot-product extension.
//
//   test_kernels [--expect-isas scalar,neon,...]   exit 0 iff every check passed
//
// Checked per case and kernel set: x_scale (bits), x_sum, and every output (float32 bits,
// bfloat16 bits, int32), with the matmul split into tasks as ternary_linear_cpu.cpp does.
// Integer results are also checked against an int64 dot product of the unpacked weights
// (so the reference itself is tested), and closed forms where the pattern has one.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "cpu_features.h"
#include "ternary/bt2.h"
#include "ternary/dispatch.h"
#include "ternary/lut16.h"
#include "ternary/trit5.h"

namespace {

using namespace bitttt::ternary;

int g_passed = 0, g_failed = 0;

void check(bool ok, const std::string& what) {
  if (ok) {
    ++g_passed;
  } else {
    ++g_failed;
    std::printf("FAIL %s\n", what.c_str());
  }
}

// splitmix64: the same numbers on every platform.
struct Rng {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  double uniform() { return (next() >> 11) * (1.0 / 9007199254740992.0); }  // [0, 1)
  int ternary() { return static_cast<int>(next() % 3) - 1; }
  int8_t int8() { return static_cast<int8_t>(next() & 0xff); }
  float normal() {  // Box-Muller
    const double u = uniform() + 1e-300, v = uniform();
    return static_cast<float>(std::sqrt(-2.0 * std::log(u)) * std::cos(6.283185307179586 * v));
  }
};

// BT2 as docs/design.md §2 defines it, written here independently of the kernels.
std::vector<uint8_t> pack(const std::vector<int8_t>& q, int64_t N, int64_t K) {
  const int64_t Kp = (K + 255) / 256 * 256, row = Kp / 4;
  std::vector<uint8_t> packed(N * row, 0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < Kp; ++k) {
      const int code = k < K ? q[n * K + k] + 1 : 1;
      const int64_t run = k / 128, r = k % 128;
      packed[n * row + run * 32 + r % 32] |= static_cast<uint8_t>(code << (2 * (r / 32)));
    }
  return packed;
}

struct Weights {
  int64_t N, K;
  std::vector<int8_t> q;  // [N, K]
  std::vector<uint8_t> packed;
  std::vector<float> w_scale, bias;
};

Weights make_weights(int64_t N, int64_t K, Rng& rng, const std::function<int(int64_t, int64_t)>& q_of = nullptr) {
  Weights w{N, K, std::vector<int8_t>(N * K), {}, std::vector<float>(N), std::vector<float>(N)};
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) w.q[n * K + k] = static_cast<int8_t>(q_of ? q_of(n, k) : rng.ternary());
  w.packed = pack(w.q, N, K);
  for (int64_t n = 0; n < N; ++n) w.w_scale[n] = static_cast<float>(rng.uniform() + 0.05), w.bias[n] = rng.normal();
  return w;
}

enum class Dtype { F32, BF16 };

// What one kernel set made of one case.
struct Result {
  std::vector<float> x_scale;
  std::vector<int32_t> x_sum;
  std::vector<uint8_t> out;  // raw bytes of [M, N] float32, bf16 or int32
};

// The matmul over [0, M) x [0, N) in tasks of mt tokens x nt rows (ternary_linear_cpu.cpp).
void run_tasks(const Bt2Kernels& k, const int8_t* xq, int64_t M, int64_t Kp, const Weights& w, const Epilogue& ep,
               int64_t mt, int64_t nt) {
  for (int64_t m0 = 0; m0 < M; m0 += mt)
    for (int64_t n0 = 0; n0 < w.N; n0 += nt)
      k.matmul(xq, Kp, w.packed.data(), m0, std::min(M, m0 + mt), n0, std::min(w.N, n0 + nt), ep);
}

// ternary_linear: quantize each token, then the float epilogue.
Result run_linear(const Bt2Kernels& k, Dtype dt, const std::vector<float>& x, int64_t M, const Weights& w, bool bias,
                  int64_t mt, int64_t nt) {
  const int64_t K = w.K, Kp = bt2_padded_k(K);
  std::vector<int8_t> xq(std::max<int64_t>(M * Kp, 1));
  Result r{std::vector<float>(M), std::vector<int32_t>(M), {}};
  std::vector<uint16_t> xb(x.size());
  for (size_t i = 0; i < x.size(); ++i) xb[i] = float_to_bf16(x[i]);
  for (int64_t m = 0; m < M; ++m) {
    if (dt == Dtype::F32)
      k.quantize_f32(x.data() + m * K, K, Kp, xq.data() + m * Kp, &r.x_scale[m], &r.x_sum[m]);
    else
      k.quantize_bf16(xb.data() + m * K, K, Kp, xq.data() + m * Kp, &r.x_scale[m], &r.x_sum[m]);
  }
  r.out.assign(M * w.N * (dt == Dtype::F32 ? 4 : 2), 0xAB);
  const Epilogue ep{dt == Dtype::F32 ? OutKind::Float32 : OutKind::BFloat16, w.w_scale.data(),
                    bias ? w.bias.data() : nullptr, r.x_scale.data(), r.x_sum.data(), r.out.data(), w.N};
  run_tasks(k, xq.data(), M, Kp, w, ep, mt, nt);
  return r;
}

// ternary_matmul_int8: already-quantized activations, exact int32 outputs.
Result run_int8(const Bt2Kernels& k, const std::vector<int8_t>& x, int64_t M, const Weights& w, int64_t mt,
                int64_t nt) {
  const int64_t K = w.K, Kp = bt2_padded_k(K);
  std::vector<int8_t> xq(std::max<int64_t>(M * Kp, 1));
  Result r{{}, std::vector<int32_t>(M), std::vector<uint8_t>(M * w.N * 4, 0xAB)};
  for (int64_t m = 0; m < M; ++m) k.layout_int8(x.data() + m * K, K, Kp, xq.data() + m * Kp, &r.x_sum[m]);
  const Epilogue ep{OutKind::Int32, nullptr, nullptr, nullptr, r.x_sum.data(), r.out.data(), w.N};
  run_tasks(k, xq.data(), M, Kp, w, ep, mt, nt);
  return r;
}

std::vector<int32_t> as_int32(const std::vector<uint8_t>& bytes) {
  std::vector<int32_t> v(bytes.size() / 4);
  std::memcpy(v.data(), bytes.data(), bytes.size());
  return v;
}

// int64 sum_k x[m,k] * q[n,k]: the oracle of the integer core.
std::vector<int32_t> oracle_int8(const std::vector<int8_t>& x, int64_t M, const Weights& w) {
  std::vector<int32_t> out(M * w.N);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < w.N; ++n) {
      int64_t s = 0;
      for (int64_t k = 0; k < w.K; ++k) s += int64_t{x[m * w.K + k]} * w.q[n * w.K + k];
      out[m * w.N + n] = static_cast<int32_t>(s);
    }
  return out;
}

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// Equal bit patterns, except that any two NaNs are equal.
bool same_f32(const float* a, const float* b, size_t n, size_t* where) {
  for (size_t i = 0; i < n; ++i)
    if (!(bits(a[i]) == bits(b[i]) || (std::isnan(a[i]) && std::isnan(b[i])))) return *where = i, false;
  return true;
}

bool same_output(Dtype dt, const Result& a, const Result& b, size_t* where) {
  if (a.out.size() != b.out.size()) return *where = 0, false;
  if (dt == Dtype::F32)
    return same_f32(reinterpret_cast<const float*>(a.out.data()), reinterpret_cast<const float*>(b.out.data()),
                    a.out.size() / 4, where);
  for (size_t i = 0; i < a.out.size(); ++i)
    if (a.out[i] != b.out[i]) return *where = i / 2, false;
  return true;
}

struct Isa {
  std::string name;
  const Bt2Kernels* kernels;
};

std::vector<Isa> g_isas;  // every available set except scalar
const Bt2Kernels* g_scalar = nullptr;

std::string shape_id(int64_t M, int64_t K, int64_t N) {
  return "M" + std::to_string(M) + "-K" + std::to_string(K) + "-N" + std::to_string(N);
}

// Every kernel set vs scalar on one ternary_linear case; returns the scalar result.
Result compare_linear(const std::string& id, Dtype dt, const std::vector<float>& x, int64_t M, const Weights& w,
                      bool bias, int64_t mt = 64, int64_t nt = 64) {
  const std::string name = id + (dt == Dtype::F32 ? "-f32" : "-bf16") + (bias ? "-bias" : "-nobias");
  const Result ref = run_linear(*g_scalar, dt, x, M, w, bias, mt, nt);
  for (const Isa& isa : g_isas) {
    const Result got = run_linear(*isa.kernels, dt, x, M, w, bias, mt, nt);
    size_t at = 0;
    check(same_f32(got.x_scale.data(), ref.x_scale.data(), M, &at), isa.name + " " + name + " x_scale[" + std::to_string(at) + "]");
    check(got.x_sum == ref.x_sum, isa.name + " " + name + " x_sum");
    check(same_output(dt, got, ref, &at), isa.name + " " + name + " out[" + std::to_string(at) + "]");
  }
  return ref;
}

// Scalar vs the int64 oracle (or `expected`), then every kernel set vs scalar.
void compare_int8(const std::string& id, const std::vector<int8_t>& x, int64_t M, const Weights& w,
                  const std::vector<int32_t>* expected = nullptr, int64_t mt = 64, int64_t nt = 64) {
  const std::string name = id + "-int8";
  const Result ref = run_int8(*g_scalar, x, M, w, mt, nt);
  const std::vector<int32_t> want = expected ? *expected : oracle_int8(x, M, w);
  check(as_int32(ref.out) == want, "scalar " + name + " vs int64 oracle");
  for (const Isa& isa : g_isas) {
    const Result got = run_int8(*isa.kernels, x, M, w, mt, nt);
    check(as_int32(got.out) == want, isa.name + " " + name);
  }
}

std::vector<float> random_tokens(int64_t M, int64_t K, Rng& rng) {
  std::vector<float> x(M * K);
  for (int64_t m = 0; m < M; ++m) {
    const float scale = std::exp(static_cast<float>(rng.uniform() * 6 - 3));  // a different scale per token
    for (int64_t k = 0; k < K; ++k) x[m * K + k] = rng.normal() * scale;
  }
  return x;
}

// (M, K, N) of tests/ops/test_ternary_linear.py SHAPES: K across none, one and several
// 256-blocks plus a partial one; N and M across the 4-row / 4-token tiles and 64-tasks.
const int64_t kShapes[][3] = {
    {1, 100, 17}, {1, 2600, 1},    {1, 1, 3},      {2, 256, 3},   {2, 2560, 100},  {7, 2600, 17},
    {7, 1, 100},  {64, 100, 100},  {64, 2560, 1},  {64, 256, 17}, {513, 256, 3},   {513, 2600, 100},
};

void test_shapes() {
  for (const auto& s : kShapes) {
    const int64_t M = s[0], K = s[1], N = s[2];
    Rng rng{static_cast<uint64_t>(M * 31 + K * 7 + N)};
    const Weights w = make_weights(N, K, rng);
    const std::vector<float> x = random_tokens(M, K, rng);
    for (Dtype dt : {Dtype::F32, Dtype::BF16})
      for (bool bias : {false, true}) compare_linear(shape_id(M, K, N), dt, x, M, w, bias);
    std::vector<int8_t> xq(M * K);
    for (auto& v : xq) v = rng.int8();
    compare_int8(shape_id(M, K, N), xq, M, w);
  }
  // Odd task splits: tiles that start on odd rows and tokens, partial 4-token groups.
  Rng rng{7};
  const Weights w = make_weights(19, 700, rng);
  const std::vector<float> x = random_tokens(11, 700, rng);
  compare_linear("M11-K700-N19-tasks5x3", Dtype::F32, x, 11, w, true, 5, 3);
  std::vector<int8_t> xq(11 * 700);
  for (auto& v : xq) v = rng.int8();
  compare_int8("M11-K700-N19-tasks5x3", xq, 11, w, nullptr, 5, 3);
  // bitttt serve's batches in one call each: one group of 4..8 tokens, or two (AVX-512 tiles).
  const Weights ws = make_weights(19, 2600, rng);
  for (int64_t M : {6, 9, 16}) {
    std::vector<int8_t> xs(M * 2600);
    for (auto& v : xs) v = rng.int8();
    compare_int8(shape_id(M, 2600, 19), xs, M, ws);
  }
}

// Saturated int8 activations times all-equal or alternating weights: the largest |sums| per
// lane a kernel's int16 partial sums must carry (x * (q + 1) reaches -256). Odd rows are
// negated; the expected sums are computed in closed form.
void test_extreme_int8() {
  struct Pattern {
    const char* name;
    int (*x)(int64_t);
    int (*q)(int64_t);
  };
  const Pattern patterns[] = {
      {"x127-wplus", [](int64_t) { return 127; }, [](int64_t) { return 1; }},
      {"x127-wminus", [](int64_t) { return 127; }, [](int64_t) { return -1; }},
      {"xminus128-wplus", [](int64_t) { return -128; }, [](int64_t) { return 1; }},
      {"xminus128-wminus", [](int64_t) { return -128; }, [](int64_t) { return -1; }},
      {"xalt-walt", [](int64_t k) { return k % 2 ? 127 : -128; }, [](int64_t k) { return k % 2 ? 1 : -1; }},
      {"xalt-wplus", [](int64_t k) { return k % 2 ? 127 : -128; }, [](int64_t) { return 1; }},
      {"xminus128-walt", [](int64_t) { return -128; }, [](int64_t k) { return (k / 3) % 2 ? -1 : 1; }},
  };
  for (const Pattern& p : patterns)
    for (int64_t K : {2600, 4096})
      for (int64_t M : {1, 5, 8, 13, 16}) {  // one token, then the serve batch's 4..8-token groups
        const int64_t N = 6;
        Rng rng{1};
        const Weights w = make_weights(N, K, rng, [&](int64_t n, int64_t k) { return (n % 2 ? -1 : 1) * p.q(k); });
        std::vector<int8_t> x(M * K);
        int64_t sum = 0;
        for (int64_t k = 0; k < K; ++k) sum += int64_t{p.x(k)} * p.q(k);
        for (int64_t m = 0; m < M; ++m)
          for (int64_t k = 0; k < K; ++k) x[m * K + k] = static_cast<int8_t>(p.x(k));
        std::vector<int32_t> want(M * N);
        for (int64_t m = 0; m < M; ++m)
          for (int64_t n = 0; n < N; ++n) want[m * N + n] = static_cast<int32_t>(n % 2 ? -sum : sum);
        compare_int8(std::string(p.name) + "-" + shape_id(M, K, N), x, M, w, &want);
      }
}

// Float activations that saturate to +-127 (constant or alternating sign) against all-equal
// or alternating weights: y = sign * K * w_scale in closed form, checked on scalar too.
void test_saturated_float() {
  struct Pattern {
    const char* name;
    float (*x)(int64_t);
    int (*q)(int64_t);
    int sign;
  };
  const Pattern patterns[] = {
      {"xplus-wplus", [](int64_t) { return 1.0f; }, [](int64_t) { return 1; }, 1},
      {"xminus-wplus", [](int64_t) { return -1.0f; }, [](int64_t) { return 1; }, -1},
      {"xminus-wminus", [](int64_t) { return -1.0f; }, [](int64_t) { return -1; }, 1},
      {"xalt-walt", [](int64_t k) { return k % 2 ? 1.0f : -1.0f; }, [](int64_t k) { return k % 2 ? 1 : -1; }, 1},
      {"xalt-wplus", [](int64_t k) { return k % 2 ? 1.0f : -1.0f; }, [](int64_t) { return 1; }, 0},
  };
  for (const Pattern& p : patterns)
    for (int64_t K : {2600, 4096})
      for (Dtype dt : {Dtype::F32, Dtype::BF16}) {
        const int64_t M = 5, N = 4;
        Rng rng{2};
        Weights w = make_weights(N, K, rng, [&](int64_t, int64_t k) { return p.q(k); });
        w.w_scale = {0.5f, 1.0f, 0.25f, 2.0f};
        std::vector<float> x(M * K);
        for (int64_t m = 0; m < M; ++m)
          for (int64_t k = 0; k < K; ++k) x[m * K + k] = p.x(k);
        const std::string id = std::string(p.name) + "-" + shape_id(M, K, N);
        const Result ref = compare_linear(id, dt, x, M, w, false);
        bool closed = true;
        for (int64_t m = 0; m < M; ++m)
          for (int64_t n = 0; n < N; ++n) {
            const float want = static_cast<float>(p.sign * K) * w.w_scale[n];  // exact in float32
            float y;
            if (dt == Dtype::F32) {
              std::memcpy(&y, ref.out.data() + 4 * (m * N + n), 4);
              closed = closed && std::fabs(y - want) <= 1e-6f * std::fabs(want);
            } else {
              uint16_t h;
              std::memcpy(&h, ref.out.data() + 2 * (m * N + n), 2);
              closed = closed && std::fabs(bf16_to_float(h) - want) <= std::ldexp(std::fabs(want), -7);
            }
          }
        check(closed, "scalar " + id + (dt == Dtype::F32 ? "-f32" : "-bf16") + " closed form");
      }
}

// Activations at the edges of the quantization rule (design §2), as the Python tests use.
void test_activation_edges() {
  Rng rng{9};
  for (Dtype dt : {Dtype::F32, Dtype::BF16}) {
    const char* d = dt == Dtype::F32 ? "f32" : "bf16";
    // NaN / +-inf in tokens 1 and 4 at k = pos, pos + 7: those rows NaN, the others finite.
    for (float bad : {NAN, INFINITY, -INFINITY})
      for (int64_t pos : {0, 150, 299}) {
        const int64_t M = 6, K = 300, N = 17;
        const Weights w = make_weights(N, K, rng);
        std::vector<float> x = random_tokens(M, K, rng);
        x[1 * K + pos] = bad;
        x[4 * K + (pos + 7) % K] = bad;
        const std::string id = std::string("nonfinite") + (std::isnan(bad) ? "nan" : bad > 0 ? "inf" : "neginf") +
                               "-k" + std::to_string(pos);
        const Result ref = compare_linear(id, dt, x, M, w, true);
        bool rows_ok = true;
        for (int64_t m = 0; m < M; ++m)
          for (int64_t n = 0; n < N; ++n) {
            float y;
            if (dt == Dtype::F32) {
              std::memcpy(&y, ref.out.data() + 4 * (m * N + n), 4);
            } else {
              uint16_t h;
              std::memcpy(&h, ref.out.data() + 2 * (m * N + n), 2);
              y = bf16_to_float(h);
            }
            rows_ok = rows_ok && ((m == 1 || m == 4) ? std::isnan(y) : std::isfinite(y));
          }
        check(rows_ok, std::string("scalar ") + id + "-" + d + " NaN rows exactly");
      }
    // Huge and tiny absmax (1e30, 1e-30), and all-zero tokens.
    for (float target : {1e30f, 1e-30f, 0.0f}) {
      const int64_t M = 7, K = 2600, N = 17;
      const Weights w = make_weights(N, K, rng);
      std::vector<float> x = random_tokens(M, K, rng);
      for (int64_t m = 0; m < M; ++m) {
        float absmax = 0;
        for (int64_t k = 0; k < K; ++k) absmax = std::fmax(absmax, std::fabs(x[m * K + k]));
        for (int64_t k = 0; k < K; ++k) x[m * K + k] = x[m * K + k] / absmax * target;
      }
      const std::string id = target == 0 ? "zero-tokens" : target > 1 ? "absmax1e30" : "absmax1e-30";
      for (bool bias : {false, true}) compare_linear(id, dt, x, M, w, bias);
    }
    // absmax 3e-6 under the 1e-5 floor.
    {
      const float vals[] = {3e-6f, 1e-6f, -2e-6f, 5e-7f, 0.0f};
      std::vector<float> x(300);
      for (int64_t k = 0; k < 300; ++k) x[k] = vals[k % 5];
      compare_linear("absmax-below-floor", dt, x, 1, make_weights(17, 300, rng), false);
    }
    // Exact .5 ties (absmax 127 and 254), K = 299: partial chunks and the scalar tail.
    for (float unit : {1.0f, 2.0f}) {
      std::vector<float> x{127.0f * unit};
      for (int v = -127; v < 127; ++v) x.push_back((v + 0.5f) * unit);
      while (x.size() < 299) x.push_back((x.size() % 2 ? 0.5f : -1.5f) * unit);
      compare_linear(unit == 1 ? "ties-absmax127" : "ties-absmax254", dt, x, 1, make_weights(100, 299, rng), true);
    }
    // s_x = fl(127 / 3) puts these x just at or below a tie (test_activation_scale_*), K = 71.
    {
      std::vector<float> x{3.0f};
      for (int i = 0; i < 35; ++i) x.push_back(0.011811024509370327f), x.push_back(0.03543306887149811f);
      compare_linear("scale-probe", dt, x, 1, make_weights(5, 71, rng), false);
    }
  }
}

// --- lut16 (lut16.h): the layout written here from the header's byte map, independently
// of repack_bt2_to_lut16; every ISA's lut16 kernels against the int64 oracle and, for float
// outputs, bit for bit against the scalar BT2 kernels.
std::vector<uint8_t> pack_lut16(const Weights& w) {
  const int64_t Kp = bt2_padded_k(w.K), Np = (w.N + 15) / 16 * 16, row = Kp / 4;
  std::vector<uint8_t> out(Np * row, 0);
  for (int64_t n = 0; n < Np; ++n)
    for (int64_t k = 0; k < Kp; ++k) {
      const int code = n < w.N && k < w.K ? w.q[n * w.K + k] + 1 : 1;
      const int64_t q = k / 8, j = k % 8, h = (j / 2) % 2;
      out[n / 16 * 16 * row + q * 32 + h * 16 + n % 16] |= static_cast<uint8_t>(code << (4 * (j / 4) + 2 * (j % 2)));
    }
  return out;
}

// One lut16 call over [0, M) x [0, N) in 64-row tasks, as ternary_linear_lut16_cpu.cpp does.
Result run_lut16(const Lut16Kernels& k, const std::vector<uint8_t>& layout, Dtype dt, const std::vector<float>* x,
                 const std::vector<int8_t>* xi, int64_t M, const Weights& w, bool bias) {
  const int64_t K = w.K, Kp = bt2_padded_k(K);
  std::vector<int8_t> xq(std::max<int64_t>(M * Kp, 1));
  std::vector<uint8_t> tables(std::max<int64_t>(M * Kp * kLut16TableBytesPerK, 1));
  std::vector<uint16_t> xb;
  if (x)
    for (float v : *x) xb.push_back(float_to_bf16(v));
  Result r{std::vector<float>(M), std::vector<int32_t>(M), {}};
  for (int64_t m = 0; m < M; ++m) {
    if (xi)
      k.layout_int8(xi->data() + m * K, K, Kp, xq.data() + m * Kp, &r.x_sum[m]);
    else if (dt == Dtype::F32)
      k.quantize_f32(x->data() + m * K, K, Kp, xq.data() + m * Kp, &r.x_scale[m], &r.x_sum[m]);
    else
      k.quantize_bf16(xb.data() + m * K, K, Kp, xq.data() + m * Kp, &r.x_scale[m], &r.x_sum[m]);
    k.tables(xq.data() + m * Kp, Kp, tables.data() + m * Kp * kLut16TableBytesPerK);
  }
  const OutKind kind = xi ? OutKind::Int32 : dt == Dtype::F32 ? OutKind::Float32 : OutKind::BFloat16;
  r.out.assign(M * w.N * (kind == OutKind::BFloat16 ? 2 : 4), 0xAB);
  const Epilogue ep{kind, w.w_scale.data(), bias ? w.bias.data() : nullptr, r.x_scale.data(), r.x_sum.data(),
                    r.out.data(), w.N};
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n0 = 0; n0 < w.N; n0 += 64)
      k.gemv(xq.data(), tables.data() + m * Kp * kLut16TableBytesPerK, Kp, layout.data(), m, n0,
             std::min(w.N, n0 + 64), ep);
  return r;
}

void compare_lut16(const std::string& id, const Weights& w, const std::vector<float>& x, const std::vector<int8_t>& xi,
                   int64_t M, const std::vector<int32_t>* expected = nullptr) {
  const std::vector<uint8_t> layout = pack_lut16(w);
  std::vector<uint8_t> repacked(layout.size(), 0xAB);
  repack_bt2_to_lut16(w.packed.data(), w.N, bt2_padded_k(w.K), repacked.data(), 0, (w.N + 15) / 16 * 16);
  check(repacked == layout, "repack_bt2_to_lut16 " + id);
  const std::vector<int32_t> want = expected ? *expected : oracle_int8(xi, M, w);
  std::vector<const Lut16Kernels*> sets{&lut16_kernels_scalar()};
  for (const Isa& isa : g_isas) {
    set_isa(isa.name);
    sets.push_back(&active_lut16_kernels());
  }
  for (const Lut16Kernels* k : sets) {
    const std::string name = std::string("lut16-") + k->name + " " + id;
    check(as_int32(run_lut16(*k, layout, Dtype::F32, nullptr, &xi, M, w, false).out) == want, name + "-int8");
    if (x.empty()) continue;
    for (Dtype dt : {Dtype::F32, Dtype::BF16}) {
      const Result ref = run_linear(*g_scalar, dt, x, M, w, true, 64, 64);
      size_t at = 0;
      check(same_output(dt, run_lut16(*k, layout, dt, &x, nullptr, M, w, true), ref, &at),
            name + (dt == Dtype::F32 ? "-f32" : "-bf16") + " out[" + std::to_string(at) + "]");
    }
  }
}

void test_lut16() {
  for (const auto& s : kShapes) {
    const int64_t M = std::min<int64_t>(s[0], 7), K = s[1], N = s[2];
    Rng rng{static_cast<uint64_t>(M * 31 + K * 7 + N)};
    const Weights w = make_weights(N, K, rng);
    std::vector<float> x = random_tokens(M, K, rng);
    if (M > 1) x[K + K / 2] = NAN;  // token 1's row is NaN
    std::vector<int8_t> xi(M * K);
    for (auto& v : xi) v = rng.int8();
    compare_lut16(shape_id(M, K, N), w, x, xi, M);
  }
  // The int16 worst case: every entry -512 (x = -128, code 2), 64 per lane per 256 weights.
  for (int64_t K : {256, 2600, 4096})
    for (int xv : {-128, 127})
      for (int qv : {1, -1}) {
        const int64_t M = 2, N = 70;
        Rng rng{3};
        const Weights w = make_weights(N, K, rng, [&](int64_t n, int64_t) { return n % 2 ? -qv : qv; });
        const std::vector<int8_t> xi(M * K, static_cast<int8_t>(xv));
        std::vector<int32_t> want(M * N);
        for (int64_t i = 0; i < M * N; ++i) want[i] = static_cast<int32_t>((i % N) % 2 ? -xv * qv * K : xv * qv * K);
        compare_lut16("extreme-x" + std::to_string(xv) + "-q" + std::to_string(qv) + "-K" + std::to_string(K), w, {},
                      xi, M, &want);
      }
  set_isa("auto");
}

// --- trit5 (trit5.h): the layout written here from the header's definition (byte =
// ceil(v * 256 / 243) of the five codes of weights 64 i + j of a 320-weight block),
// independently of repack_bt2_to_trit5; every ISA's trit5 kernels against the int64 oracle
// and, for float outputs, bit for bit against the scalar BT2 kernels.
std::vector<uint8_t> pack_trit5(const Weights& w) {
  const int64_t Kt = (w.K + 319) / 320 * 320, row = Kt / 5;
  std::vector<uint8_t> out(std::max<int64_t>(w.N * row, 1), 0);
  for (int64_t n = 0; n < w.N; ++n)
    for (int64_t b = 0; b < Kt / 320; ++b)
      for (int64_t j = 0; j < 64; ++j) {
        int v = 0;
        for (int64_t i = 0; i < 5; ++i) {
          const int64_t k = b * 320 + 64 * i + j;
          v = 3 * v + (k < w.K ? w.q[n * w.K + k] + 1 : 1);
        }
        out[n * row + b * 64 + j] = static_cast<uint8_t>((v * 256 + 242) / 243);
      }
  return out;
}

// One trit5 call over [0, M) x [0, N) in 64-row tasks, as ternary_linear_trit5_cpu.cpp does.
Result run_trit5(const Trit5Kernels& k, const std::vector<uint8_t>& layout, Dtype dt, const std::vector<float>* x,
                 const std::vector<int8_t>* xi, int64_t M, const Weights& w, bool bias) {
  const int64_t K = w.K, Kt = (K + 319) / 320 * 320;
  std::vector<int8_t> xq(std::max<int64_t>(M * Kt, 1));
  std::vector<uint16_t> xb;
  if (x)
    for (float v : *x) xb.push_back(float_to_bf16(v));
  Result r{std::vector<float>(M), std::vector<int32_t>(M), {}};
  for (int64_t m = 0; m < M; ++m) {
    if (xi)
      k.layout_int8(xi->data() + m * K, K, Kt, xq.data() + m * Kt, &r.x_sum[m]);
    else if (dt == Dtype::F32)
      k.quantize_f32(x->data() + m * K, K, Kt, xq.data() + m * Kt, &r.x_scale[m], &r.x_sum[m]);
    else
      k.quantize_bf16(xb.data() + m * K, K, Kt, xq.data() + m * Kt, &r.x_scale[m], &r.x_sum[m]);
  }
  const OutKind kind = xi ? OutKind::Int32 : dt == Dtype::F32 ? OutKind::Float32 : OutKind::BFloat16;
  r.out.assign(M * w.N * (kind == OutKind::BFloat16 ? 2 : 4), 0xAB);
  const Epilogue ep{kind, w.w_scale.data(), bias ? w.bias.data() : nullptr, r.x_scale.data(), r.x_sum.data(),
                    r.out.data(), w.N};
  for (int64_t n0 = 0; n0 < w.N; n0 += 64) k.matmul(xq.data(), Kt, layout.data(), 0, M, n0, std::min(w.N, n0 + 64), ep);
  return r;
}

void compare_trit5(const std::string& id, const Weights& w, const std::vector<float>& x, const std::vector<int8_t>& xi,
                   int64_t M, const std::vector<int32_t>* expected = nullptr) {
  const std::vector<uint8_t> layout = pack_trit5(w);
  std::vector<uint8_t> repacked(layout.size(), 0xAB);
  if (w.N > 0) repack_bt2_to_trit5(w.packed.data(), w.K, repacked.data(), 0, w.N);
  check(w.N == 0 || repacked == layout, "repack_bt2_to_trit5 " + id);
  const std::vector<int32_t> want = expected ? *expected : oracle_int8(xi, M, w);
  std::vector<const Trit5Kernels*> sets{&trit5_kernels_scalar()};
  for (const Isa& isa : g_isas) {
    set_isa(isa.name);
    sets.push_back(&active_trit5_kernels());
  }
  for (const Trit5Kernels* k : sets) {
    const std::string name = std::string("trit5-") + k->name + " " + id;
    check(as_int32(run_trit5(*k, layout, Dtype::F32, nullptr, &xi, M, w, false).out) == want, name + "-int8");
    if (x.empty()) continue;
    for (Dtype dt : {Dtype::F32, Dtype::BF16}) {
      const Result ref = run_linear(*g_scalar, dt, x, M, w, true, 64, 64);
      size_t at = 0;
      check(same_output(dt, run_trit5(*k, layout, dt, &x, nullptr, M, w, true), ref, &at),
            name + (dt == Dtype::F32 ? "-f32" : "-bf16") + " out[" + std::to_string(at) + "]");
    }
  }
}

void test_trit5() {
  for (const auto& s : kShapes) {
    const int64_t M = std::min<int64_t>(s[0], 7), K = s[1], N = s[2];
    Rng rng{static_cast<uint64_t>(M * 31 + K * 7 + N)};
    const Weights w = make_weights(N, K, rng);
    std::vector<float> x = random_tokens(M, K, rng);
    if (M > 1) x[K + K / 2] = NAN;  // token 1's row is NaN
    std::vector<int8_t> xi(M * K);
    for (auto& v : xi) v = rng.int8();
    compare_trit5(shape_id(M, K, N), w, x, xi, M);
  }
  // Extreme activations against every sign: 10 products of up to 512 per int16 lane (AVX2).
  for (int64_t K : {320, 2600, 4096})
    for (int xv : {-128, 127})
      for (int qv : {1, -1}) {
        const int64_t M = 5, N = 70;
        Rng rng{3};
        const Weights w = make_weights(N, K, rng, [&](int64_t n, int64_t) { return n % 2 ? -qv : qv; });
        const std::vector<int8_t> xi(M * K, static_cast<int8_t>(xv));
        std::vector<int32_t> want(M * N);
        for (int64_t i = 0; i < M * N; ++i) want[i] = static_cast<int32_t>((i % N) % 2 ? -xv * qv * K : xv * qv * K);
        compare_trit5("extreme-x" + std::to_string(xv) + "-q" + std::to_string(qv) + "-K" + std::to_string(K), w, {},
                      xi, M, &want);
      }
  set_isa("auto");
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= s.size()) {
    const size_t end = s.find(',', start);
    out.push_back(s.substr(start, end == std::string::npos ? std::string::npos : end - start));
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> available = available_isas();
  std::string joined;
  for (const auto& n : available) joined += (joined.empty() ? "" : ",") + n;
  const bitttt::CpuFeatures& f = bitttt::cpu_features();
  std::printf("available ISAs: %s (neon=%d dotprod=%d avx2=%d avx512f=%d)\n", joined.c_str(), f.neon, f.dotprod,
              f.avx2, f.avx512f);
  for (int i = 1; i + 1 < argc; ++i)
    if (std::string(argv[i]) == "--expect-isas")
      check(split(argv[i + 1]) == available, std::string("available ISAs are ") + argv[i + 1]);

  for (const auto& n : available) {
    set_isa(n);
    if (n == "scalar")
      g_scalar = &active_kernels();
    else
      g_isas.push_back({n, &active_kernels()});
    check(active_kernels().name == n, "set_isa(" + n + ") selects it");
  }
#if defined(BITTTT_AMX)
  // The AMX set is the avx512 one (same name) with tiles for 8+ tokens: tested as its own set.
  std::printf("amx tiles: %s\n", f.amx_int8 ? "tested" : "not granted on this CPU/OS");
  if (f.amx_int8) {
    set_isa("amx");
    check(amx_active(), "set_isa(amx) runs the AMX tiles");
    g_isas.push_back({"amx", &active_kernels()});
  }
#endif
  test_shapes();
  test_extreme_int8();
  test_saturated_float();
  test_activation_edges();
  test_lut16();
  test_trit5();
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
