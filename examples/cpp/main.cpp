// Calls bitttt::ternary_linear through torch's dispatcher from C++, on weights packed here.
//
//   ternary_linear_example PATH/TO/bitttt/_C.<abi>.so
//
// Loading the library runs its static registrations: the bitttt:: op schemas and their CPU
// kernels. Then any libtorch program can call them by name. Prints the output y [M, N] of
// fixed inputs, one "y m n value" line per element, for the caller to check.
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>
#include <dlfcn.h>

#include <cstdint>
#include <cstdio>
#include <optional>
#include <vector>

namespace {

constexpr int64_t M = 3, N = 5, K = 300;  // K is padded to a multiple of 256 when packed

// Ternary weights in {-1, 0, 1} and exactly representable activations: the caller recomputes
// the same values.
int8_t weight(int64_t n, int64_t k) { return static_cast<int8_t>((n * 7 + k * 5) % 3 - 1); }
float activation(int64_t m, int64_t k) { return static_cast<float>((m * 31 + k * 17) % 23 - 11) / 8.0f; }
float row_scale(int64_t n) { return 0.5f + static_cast<float>(n) / 16.0f; }

// BT2 (docs/design.md §2): weight k = run*128 + s*32 + j goes to byte run*32 + j of its row,
// bits 2s..2s+1, as the code q + 1; padding holds code 1 (weight 0).
at::Tensor pack_bt2() {
  const int64_t Kp = (K + 255) / 256 * 256;
  at::Tensor packed = at::empty({N, Kp / 4}, at::kByte);
  uint8_t* out = packed.data_ptr<uint8_t>();
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t byte = 0; byte < Kp / 4; ++byte) {
      const int64_t run = byte / 32, j = byte % 32;
      uint8_t v = 0;
      for (int64_t s = 0; s < 4; ++s) {
        const int64_t k = run * 128 + s * 32 + j;
        const int code = k < K ? weight(n, k) + 1 : 1;
        v = static_cast<uint8_t>(v | (code << (2 * s)));
      }
      out[n * (Kp / 4) + byte] = v;
    }
  }
  return packed;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s PATH/TO/bitttt/_C.so\n", argv[0]);
    return 2;
  }
  if (dlopen(argv[1], RTLD_NOW | RTLD_GLOBAL) == nullptr) {
    std::fprintf(stderr, "cannot load %s: %s\n", argv[1], dlerror());
    return 1;
  }
  // The schema: ternary_linear(Tensor x, Tensor packed, Tensor w_scale, Tensor? bias=None) -> Tensor
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("bitttt::ternary_linear", "")
                .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                  const std::optional<at::Tensor>&)>();

  at::Tensor x = at::empty({M, K}, at::kFloat);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; ++k) x.data_ptr<float>()[m * K + k] = activation(m, k);
  at::Tensor w_scale = at::empty({N}, at::kFloat);
  for (int64_t n = 0; n < N; ++n) w_scale.data_ptr<float>()[n] = row_scale(n);

  const at::Tensor y = op.call(x, pack_bt2(), w_scale, std::nullopt).contiguous();
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) std::printf("y %lld %lld %.9g\n", static_cast<long long>(m),
                                                static_cast<long long>(n), y.data_ptr<float>()[m * N + n]);
  return 0;
}
