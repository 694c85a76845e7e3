// CUDA entry points of the ternary ops (docs/design.md §2): the shared argument checks, then
//   1. quantize_tokens: per token absmax, s_x, x_q (int8, zero padded to Kp) and sum(x_q), with
//      the CPU's exact float expressions, so both devices produce the same x_q;
//   2. a GEMV for M <= kGemvMaxTokens that reads BT2 as stored (dp4a on the 2-bit codes), or a
//      GEMM for larger M on int8 tensor cores (WMMA) with weights decoded to q in shared memory;
//   3. the fused epilogue: the CPU's store_output (bt2.h), in the same float operation order.
// Kernels take raw pointers; every check lives in the entry points at the bottom.
#include <cuda_runtime.h>
#include <mma.h>

#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <optional>
#include <vector>

#include "cuda/common.cuh"
#include "ternary/bt2.h"
#include "ternary/checks.h"

namespace bitttt::ternary {
namespace {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;

// ---------------------------------------------------------------------------------------
// Epilogue (bt2.h's store_output on the device)
// ---------------------------------------------------------------------------------------

// bt2.h's float_to_bf16, bit for bit: round to nearest even, NaN stays a quiet NaN.
__device__ __forceinline__ uint16_t float_to_bf16_bits(float f) {
  uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

__device__ __forceinline__ float bf16_bits_to_float(uint16_t h) { return __uint_as_float(uint32_t(h) << 16); }

// Writes one output from the exact integer dot product acc = sum_k x_q[k] * q[k].
// The explicit _rn intrinsics keep nvcc from contracting (acc * w * x) + bias into an FMA:
// the CPU rounds after each operation, and so must this.
__device__ __forceinline__ void store_output_cuda(const Epilogue& ep, int64_t m, int64_t n, int32_t acc) {
  if (ep.kind == OutKind::Int32) {
    static_cast<int32_t*>(ep.out)[m * ep.ldo + n] = acc;
    return;
  }
  float y = __fmul_rn(__fmul_rn(__int2float_rn(acc), ep.w_scale[n]), ep.x_scale[m]);
  if (ep.bias) y = __fadd_rn(y, ep.bias[n]);
  if (ep.kind == OutKind::Float32)
    static_cast<float*>(ep.out)[m * ep.ldo + n] = y;
  else
    static_cast<uint16_t*>(ep.out)[m * ep.ldo + n] = float_to_bf16_bits(y);
}

// ---------------------------------------------------------------------------------------
// Activation quantization: one block per token
// ---------------------------------------------------------------------------------------

constexpr int kQuantThreads = 256;
constexpr int kWarp = 32;

template <typename T, typename Op>
__device__ __forceinline__ T warp_allreduce(T v, Op op) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Every thread of the block gets op over all threads' v. Must be reached by the whole block.
template <typename T, typename Op>
__device__ __forceinline__ T block_allreduce(T v, Op op) {
  __shared__ T partial[kQuantThreads / kWarp];
  v = warp_allreduce(v, op);
  if (threadIdx.x % kWarp == 0) partial[threadIdx.x / kWarp] = v;
  __syncthreads();
  T r = partial[0];
#pragma unroll
  for (int w = 1; w < kQuantThreads / kWarp; ++w) r = op(r, partial[w]);
  __syncthreads();  // partial is free again for the next call
  return r;
}

struct MaxOp {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct SumOp {
  __device__ int32_t operator()(int32_t a, int32_t b) const { return a + b; }
};

__device__ __forceinline__ float load_as_float(const float* x, int64_t k) { return x[k]; }
__device__ __forceinline__ float load_as_float(const uint16_t* x, int64_t k) { return bf16_bits_to_float(x[k]); }

// x [M, K] float32 or bf16 (raw bits) -> xq [M, Kp] int8 zero padded, x_scale [M] = 1 / s_x
// (NaN for a token with NaN/inf), x_sum [M] = sum_k xq. The CPU's quantize_scalar, step for
// step: absmax is exact in any order, s_x = 127 / max(absmax, 1e-5) is an IEEE division
// (no fast math), and __float2int_rn rounds half to even like std::nearbyint.
template <typename In>
__global__ void __launch_bounds__(kQuantThreads)
quantize_tokens(const In* __restrict__ x, int64_t K, int64_t Kp, int8_t* __restrict__ xq,
                float* __restrict__ x_scale, int32_t* __restrict__ x_sum) {
  const int64_t m = blockIdx.x;
  const In* xm = x + m * K;
  int8_t* qm = xq + m * Kp;

  float absmax = 0.0f;
  int bad = 0;
  for (int64_t k = threadIdx.x; k < K; k += kQuantThreads) {
    const float v = load_as_float(xm, k);
    absmax = fmaxf(absmax, fabsf(v));
    bad |= !isfinite(v);
  }
  absmax = block_allreduce(absmax, MaxOp{});
  if (__syncthreads_or(bad)) {  // defined behaviour: this token's outputs are NaN
    for (int64_t k = threadIdx.x; k < Kp; k += kQuantThreads) qm[k] = 0;
    if (threadIdx.x == 0) {
      x_scale[m] = __int_as_float(0x7fc00000);  // quiet NaN
      x_sum[m] = 0;
    }
    return;
  }

  const float s = 127.0f / fmaxf(absmax, kAbsmaxFloor);
  int32_t sum = 0;
  for (int64_t k = threadIdx.x; k < Kp; k += kQuantThreads) {
    int q = 0;
    if (k < K) q = min(127, max(-128, __float2int_rn(__fmul_rn(load_as_float(xm, k), s))));
    qm[k] = static_cast<int8_t>(q);
    sum += q;
  }
  sum = block_allreduce(sum, SumOp{});
  if (threadIdx.x == 0) {
    x_scale[m] = 1.0f / s;
    x_sum[m] = sum;
  }
}

// Already-quantized int8 x [M, K] -> xq [M, Kp] zero padded and x_sum (ternary_matmul_int8).
__global__ void __launch_bounds__(kQuantThreads)
layout_int8_tokens(const int8_t* __restrict__ x, int64_t K, int64_t Kp, int8_t* __restrict__ xq,
                   int32_t* __restrict__ x_sum) {
  const int64_t m = blockIdx.x;
  int32_t sum = 0;
  for (int64_t k = threadIdx.x; k < Kp; k += kQuantThreads) {
    const int8_t q = k < K ? x[m * K + k] : int8_t(0);
    xq[m * Kp + k] = q;
    sum += q;
  }
  sum = block_allreduce(sum, SumOp{});
  if (threadIdx.x == 0) x_sum[m] = sum;
}

// ---------------------------------------------------------------------------------------
// Decode GEMV (M <= kGemvMaxTokens): BT2 read as stored, no re-layout
// ---------------------------------------------------------------------------------------
//
// A 16-byte chunk c of a packed row is half (h = c % 2) of run c / 2: its uint32 word i holds
// bytes 16h + 4i .. +3 of the run, and (word >> 2s) & 0x03030303 are the codes of the four
// consecutive k = run*128 + 32s + 16h + 4i + 0..3 (bt2.h). So for each s the chunk's four
// words meet the 16 consecutive activations at run*128 + 32s + 16h, one int4 load, and four
// dp4a give sum x_q * code. acc - x_sum is then the exact sum x_q * q (q = code - 1).
//
// Lanes: a group of kLanes lanes walks kRows rows together, lane j taking chunks j, j + kLanes,
// ... (16-byte loads, contiguous across the group); each activation load serves kRows rows
// and every token is accumulated per weight load. Groups reduce with xor shuffles.

constexpr int kGemvThreads = 128;
constexpr int kGemvMaxTokens = 8;
constexpr int64_t kChunkBytes = 16;
constexpr int64_t kChunkK = kChunkBytes * kBT2WeightsPerByte;  // 64 weights per 16-byte chunk
static_assert(kBT2RunBytes == 2 * kChunkBytes, "a run is two chunks");
static_assert(kBT2PadK % kChunkK == 0, "rows are whole chunks");

// Rows per lane group: 1 for one or two tokens (activation traffic is small, more groups keep
// more loads in flight), 4 beyond (each activation load then serves four rows).
template <int kTokens>
constexpr int gemv_rows() { return kTokens <= 2 ? 1 : 4; }

template <int kTokens, int kLanes>
__global__ void __launch_bounds__(kGemvThreads)
ternary_gemv_bt2(const int8_t* __restrict__ xq, int64_t Kp, const uint8_t* __restrict__ packed, int64_t N,
                 Epilogue ep) {
  constexpr int kRows = gemv_rows<kTokens>();
  constexpr int kGroupsPerBlock = kGemvThreads / kLanes;
  static_assert(kLanes >= 1 && kLanes <= kWarp && (kLanes & (kLanes - 1)) == 0, "lane groups tile a warp");

  const int lane = threadIdx.x % kLanes;
  const int64_t n0 = (int64_t(blockIdx.x) * kGroupsPerBlock + threadIdx.x / kLanes) * kRows;
  const int64_t row_bytes = Kp / kBT2WeightsPerByte;
  const int64_t chunks = row_bytes / kChunkBytes;

  int32_t acc[kRows][kTokens] = {};
  for (int64_t c = lane; c < chunks; c += kLanes) {
    uint32_t w[kRows][4];
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      // Rows past N read nothing; code 0 words only feed accumulators that are never stored.
      int4 v = make_int4(0, 0, 0, 0);
      if (n0 + r < N) v = __ldg(reinterpret_cast<const int4*>(packed + (n0 + r) * row_bytes) + c);
      w[r][0] = v.x, w[r][1] = v.y, w[r][2] = v.z, w[r][3] = v.w;
    }
    const int64_t k0 = (c / 2) * kBT2RunK + (c % 2) * kChunkBytes;  // k of chunk byte 0, s = 0
#pragma unroll
    for (int s = 0; s < 4; ++s) {
#pragma unroll
      for (int t = 0; t < kTokens; ++t) {
        const int4 x = __ldg(reinterpret_cast<const int4*>(xq + t * Kp + k0 + s * kBT2RunBytes));
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
          const int shift = 2 * s;
          acc[r][t] = __dp4a(int((w[r][0] >> shift) & 0x03030303u), x.x, acc[r][t]);
          acc[r][t] = __dp4a(int((w[r][1] >> shift) & 0x03030303u), x.y, acc[r][t]);
          acc[r][t] = __dp4a(int((w[r][2] >> shift) & 0x03030303u), x.z, acc[r][t]);
          acc[r][t] = __dp4a(int((w[r][3] >> shift) & 0x03030303u), x.w, acc[r][t]);
        }
      }
    }
  }

  // Every lane of the warp takes part in the shuffles (groups are aligned: xor stays inside).
#pragma unroll
  for (int r = 0; r < kRows; ++r)
#pragma unroll
    for (int t = 0; t < kTokens; ++t)
#pragma unroll
      for (int offset = kLanes / 2; offset > 0; offset /= 2)
        acc[r][t] += __shfl_xor_sync(0xffffffffu, acc[r][t], offset);

  // The group's lanes share the kRows * kTokens stores.
#pragma unroll
  for (int r = 0; r < kRows; ++r)
#pragma unroll
    for (int t = 0; t < kTokens; ++t)
      if ((r * kTokens + t) % kLanes == lane && n0 + r < N)
        store_output_cuda(ep, t, n0 + r, acc[r][t] - ep.x_sum[t]);
}

// Lanes per row group: the most (so more loads are in flight) that still give each lane at
// least four chunks (K = 2560: 40 chunks, 8 lanes of 5); 4 below 32 chunks (Kp < 2048).
int gemv_lanes(int64_t chunks) {
  for (int lanes = kWarp; lanes > 4; lanes /= 2)
    if (chunks >= 4 * lanes) return lanes;
  return 4;
}

template <int kTokens, int kLanes>
void launch_gemv(const int8_t* xq, int64_t Kp, const uint8_t* packed, int64_t N, const Epilogue& ep,
                 cudaStream_t stream) {
  const int64_t rows_per_block = int64_t(kGemvThreads / kLanes) * gemv_rows<kTokens>();
  ternary_gemv_bt2<kTokens, kLanes>
      <<<cuda::ceil_div(N, rows_per_block), kGemvThreads, 0, stream>>>(xq, Kp, packed, N, ep);
  BITTTT_CUDA_CHECK_LAUNCH("ternary_gemv_bt2");
}

template <int kTokens>
void launch_gemv_lanes(const int8_t* xq, int64_t Kp, const uint8_t* packed, int64_t N, const Epilogue& ep,
                       cudaStream_t stream) {
  switch (gemv_lanes(Kp / kChunkK)) {
    case 32: return launch_gemv<kTokens, 32>(xq, Kp, packed, N, ep, stream);
    case 16: return launch_gemv<kTokens, 16>(xq, Kp, packed, N, ep, stream);
    case 8: return launch_gemv<kTokens, 8>(xq, Kp, packed, N, ep, stream);
    default: return launch_gemv<kTokens, 4>(xq, Kp, packed, N, ep, stream);
  }
}

void run_gemv(const int8_t* xq, int64_t M, int64_t Kp, const uint8_t* packed, int64_t N, const Epilogue& ep,
              cudaStream_t stream) {
  static_assert(kGemvMaxTokens == 8, "one case per token count below");
  switch (M) {
    case 1: return launch_gemv_lanes<1>(xq, Kp, packed, N, ep, stream);
    case 2: return launch_gemv_lanes<2>(xq, Kp, packed, N, ep, stream);
    case 3: return launch_gemv_lanes<3>(xq, Kp, packed, N, ep, stream);
    case 4: return launch_gemv_lanes<4>(xq, Kp, packed, N, ep, stream);
    case 5: return launch_gemv_lanes<5>(xq, Kp, packed, N, ep, stream);
    case 6: return launch_gemv_lanes<6>(xq, Kp, packed, N, ep, stream);
    case 7: return launch_gemv_lanes<7>(xq, Kp, packed, N, ep, stream);
    default: return launch_gemv_lanes<8>(xq, Kp, packed, N, ep, stream);
  }
}

// ---------------------------------------------------------------------------------------
// Prefill GEMM (M > kGemvMaxTokens): int8 tensor cores through WMMA
// ---------------------------------------------------------------------------------------
//
// A block computes a kTileM x kTileN tile of out = x_q @ q.T, walking K one BT2 run
// (kTileK = 128) at a time: the run's 32 bytes per weight row decode, in registers, to q in
// {-1, 0, 1} (code - 1, so no x_sum correction), stored as int8 next to the x_q tile.
//
// Shared memory holds each operand as kTileK / 16 slabs of [rows][16] int8: the 16x16 WMMA
// operands are then 256 contiguous bytes (256-bit aligned, ldm 16, as WMMA requires), and a
// warp's 16-byte stores of consecutive rows are bank-conflict free. A slab of x_q is row-major
// [m][k]; a slab of q stored [n][k] is the col-major K x N operand B (element (k, n) at n*16+k).
//
// Two stages: the next run's global loads are issued into registers before the current run's
// MMAs, and stored to the other stage after them; one barrier per run separates the stages.

constexpr int kTileM = 64, kTileN = 64, kTileK = 128;
constexpr int kWmma = 16;  // m16n16k16 for signed char
constexpr int kSlabs = kTileK / kWmma;
constexpr int kGemmWarpsM = 2, kGemmWarpsN = 2;
constexpr int kGemmThreads = kGemmWarpsM * kGemmWarpsN * kWarp;
constexpr int kWarpTileM = kTileM / kGemmWarpsM, kWarpTileN = kTileN / kGemmWarpsN;  // 32 x 32
constexpr int kFragsM = kWarpTileM / kWmma, kFragsN = kWarpTileN / kWmma;             // 2 x 2
constexpr int kStageBytes = (kTileM + kTileN) * kTileK;                                  // 16 KiB
constexpr int kOutLd = kTileN + 4;  // int32 staging of the tile: ldm a multiple of 4, rows offset by banks
constexpr int kSmemBytes = std::max(2 * kStageBytes, kTileM * kOutLd * 4);
// 16-byte global loads per thread per stage: x_q tile and packed tile.
constexpr int kXLoads = kTileM * kTileK / kChunkBytes / kGemmThreads;              // 4
constexpr int kWLoads = kTileN * (kTileK / kBT2WeightsPerByte) / kChunkBytes / kGemmThreads;  // 1
static_assert(kTileK == kBT2RunK, "a k step is one BT2 run");
static_assert(kXLoads * kGemmThreads * kChunkBytes == kTileM * kTileK, "x_q tile split evenly");
static_assert(kWLoads == 1 && kTileN * 2 == kGemmThreads, "one 16-byte half run per thread");
static_assert(kSmemBytes <= 48 * 1024, "static shared memory");

// q = code - 1 on four bytes at once without borrows between bytes: (code | 0x80) - 1 stays in
// its byte (>= 0x7f), and xor 0x80 leaves code - 1 mod 256, i.e. 0xff, 0x00, 0x01 for -1, 0, 1.
__device__ __forceinline__ uint32_t codes_to_q(uint32_t codes) {
  return ((codes | 0x80808080u) - 0x01010101u) ^ 0x80808080u;
}

struct GemmStage {
  int8_t* x;  // [kSlabs][kTileM][16]
  int8_t* q;  // [kSlabs][kTileN][16]
};

__device__ __forceinline__ GemmStage gemm_stage(unsigned char* smem, int stage) {
  int8_t* base = reinterpret_cast<int8_t*>(smem) + stage * kStageBytes;
  return {base, base + kTileM * kTileK};
}

// Global -> registers for run kt. Element e of the x_q tile is row e % kTileM, slab e / kTileM,
// so a warp's smem stores are consecutive rows of one slab.
struct GemmRegs {
  int4 x[kXLoads];
  int4 w;  // 16 bytes: half (h) of one weight row's run
};

__device__ __forceinline__ void gemm_load(GemmRegs& regs, const int8_t* __restrict__ xq, int64_t M, int64_t Kp,
                                          const uint8_t* __restrict__ packed, int64_t N, int64_t m0, int64_t n0,
                                          int64_t kt) {
#pragma unroll
  for (int i = 0; i < kXLoads; ++i) {
    const int e = threadIdx.x + i * kGemmThreads;
    const int64_t m = m0 + e % kTileM;
    // Rows past M are zero; they only feed outputs that are never stored.
    regs.x[i] = m < M ? __ldg(reinterpret_cast<const int4*>(xq + m * Kp + kt * kTileK) + e / kTileM)
                      : make_int4(0, 0, 0, 0);
  }
  const int64_t n = n0 + threadIdx.x % kTileN;
  const int h = threadIdx.x / kTileN;
  const int64_t row_bytes = Kp / kBT2WeightsPerByte;
  // Rows past N get code 1 (q = 0) everywhere; their outputs are never stored either.
  regs.w = n < N ? __ldg(reinterpret_cast<const int4*>(packed + n * row_bytes + kt * kBT2RunBytes) + h)
                 : make_int4(0x55555555, 0x55555555, 0x55555555, 0x55555555);
}

// Registers -> one stage, decoding the weights: word i of half h holds k = 32s + 16h + 4i + 0..3
// at bits 2s (bt2.h), i.e. slab 2s + h, bytes 4i..4i+3 of the row's 16.
__device__ __forceinline__ void gemm_store(const GemmRegs& regs, GemmStage st) {
#pragma unroll
  for (int i = 0; i < kXLoads; ++i) {
    const int e = threadIdx.x + i * kGemmThreads;
    reinterpret_cast<int4*>(st.x)[e] = regs.x[i];  // slab e / kTileM, row e % kTileM
  }
  const int row = threadIdx.x % kTileN, h = threadIdx.x / kTileN;
  const uint32_t w[4] = {uint32_t(regs.w.x), uint32_t(regs.w.y), uint32_t(regs.w.z), uint32_t(regs.w.w)};
#pragma unroll
  for (int s = 0; s < 4; ++s) {
    int4 q;
    q.x = int(codes_to_q((w[0] >> (2 * s)) & 0x03030303u));
    q.y = int(codes_to_q((w[1] >> (2 * s)) & 0x03030303u));
    q.z = int(codes_to_q((w[2] >> (2 * s)) & 0x03030303u));
    q.w = int(codes_to_q((w[3] >> (2 * s)) & 0x03030303u));
    reinterpret_cast<int4*>(st.q)[(2 * s + h) * kTileN + row] = q;
  }
}

__global__ void __launch_bounds__(kGemmThreads)
ternary_gemm_wmma(const int8_t* __restrict__ xq, int64_t M, int64_t Kp, const uint8_t* __restrict__ packed,
                  int64_t N, Epilogue ep) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 720
  __trap();  // int8 WMMA needs sm_72+; the build targets sm_75 and later
#else
  namespace wmma = nvcuda::wmma;
  __shared__ __align__(128) unsigned char smem[kSmemBytes];

  const int64_t m0 = int64_t(blockIdx.x) * kTileM, n0 = int64_t(blockIdx.y) * kTileN;
  const int warp = threadIdx.x / kWarp;
  const int wm = warp / kGemmWarpsN, wn = warp % kGemmWarpsN;

  wmma::fragment<wmma::accumulator, kWmma, kWmma, kWmma, int> acc[kFragsM][kFragsN];
#pragma unroll
  for (int i = 0; i < kFragsM; ++i)
#pragma unroll
    for (int j = 0; j < kFragsN; ++j) wmma::fill_fragment(acc[i][j], 0);

  const int64_t steps = Kp / kTileK;
  GemmRegs regs;
  if (steps > 0) {
    gemm_load(regs, xq, M, Kp, packed, N, m0, n0, 0);
    gemm_store(regs, gemm_stage(smem, 0));
  }
  __syncthreads();

  for (int64_t kt = 0; kt < steps; ++kt) {
    const bool more = kt + 1 < steps;
    if (more) gemm_load(regs, xq, M, Kp, packed, N, m0, n0, kt + 1);  // in flight during the MMAs
    const GemmStage st = gemm_stage(smem, int(kt % 2));
#pragma unroll
    for (int slab = 0; slab < kSlabs; ++slab) {
      wmma::fragment<wmma::matrix_a, kWmma, kWmma, kWmma, signed char, wmma::row_major> a[kFragsM];
      wmma::fragment<wmma::matrix_b, kWmma, kWmma, kWmma, signed char, wmma::col_major> b[kFragsN];
#pragma unroll
      for (int i = 0; i < kFragsM; ++i)
        wmma::load_matrix_sync(a[i], reinterpret_cast<const signed char*>(
                                         st.x + (slab * kTileM + wm * kWarpTileM + i * kWmma) * kWmma), kWmma);
#pragma unroll
      for (int j = 0; j < kFragsN; ++j)
        wmma::load_matrix_sync(b[j], reinterpret_cast<const signed char*>(
                                         st.q + (slab * kTileN + wn * kWarpTileN + j * kWmma) * kWmma), kWmma);
#pragma unroll
      for (int i = 0; i < kFragsM; ++i)
#pragma unroll
        for (int j = 0; j < kFragsN; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
    }
    // The other stage was last read in step kt - 1, before the barrier that ended it.
    if (more) gemm_store(regs, gemm_stage(smem, int((kt + 1) % 2)));
    __syncthreads();
  }

  // Fragments' element order is opaque: stage the tile in shared memory (free after the last
  // barrier), then write it with consecutive threads on consecutive n.
  int32_t* out_tile = reinterpret_cast<int32_t*>(smem);
#pragma unroll
  for (int i = 0; i < kFragsM; ++i)
#pragma unroll
    for (int j = 0; j < kFragsN; ++j)
      wmma::store_matrix_sync(out_tile + (wm * kWarpTileM + i * kWmma) * kOutLd + wn * kWarpTileN + j * kWmma,
                              acc[i][j], kOutLd, wmma::mem_row_major);
  __syncthreads();
  for (int e = threadIdx.x; e < kTileM * kTileN; e += kGemmThreads) {
    const int64_t m = m0 + e / kTileN, n = n0 + e % kTileN;
    if (m < M && n < N) store_output_cuda(ep, m, n, out_tile[(e / kTileN) * kOutLd + e % kTileN]);
  }
#endif
}

void run_gemm(const int8_t* xq, int64_t M, int64_t Kp, const uint8_t* packed, int64_t N, const Epilogue& ep,
              cudaStream_t stream) {
  const int64_t n_tiles = (N + kTileN - 1) / kTileN;
  STD_TORCH_CHECK(n_tiles <= 65535, "bitttt: N=", N, " is over the CUDA kernel's limit of ",
                  65535 * kTileN, " output features");
  // x first: consecutive blocks share a weight tile (and walk it from L2 together).
  const dim3 grid(cuda::ceil_div(M, kTileM), static_cast<unsigned>(n_tiles));
  ternary_gemm_wmma<<<grid, kGemmThreads, 0, stream>>>(xq, M, Kp, packed, N, ep);
  BITTTT_CUDA_CHECK_LAUNCH("ternary_gemm_wmma");
}

// ---------------------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------------------

Tensor as_contiguous(const Tensor& t) { return t.is_contiguous() ? t : torch::stable::contiguous(t); }

// The kernels read packed and x_q with 16-byte loads. Rows are multiples of 64 bytes, so only a
// view with an odd storage offset can be misaligned; such a view is copied.
Tensor as_aligned16(const Tensor& t) {
  return reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 == 0 ? t : torch::stable::clone(t);
}

// Per-token quantized activations in one allocation, as on the CPU: xq [M, Kp] int8, then
// x_scale [M] float and x_sum [M] int32 (Kp is a multiple of 256: both stay aligned).
struct QuantizedTokens {
  Tensor storage;
  int8_t* xq;
  float* x_scale;
  int32_t* x_sum;
};

QuantizedTokens allocate_tokens(const Tensor& like, int64_t M, int64_t Kp) {
  // One quantization block per token, indexed by blockIdx.x.
  STD_TORCH_CHECK(M <= INT32_MAX, "bitttt: ", M, " tokens in one call is over the CUDA kernels' limit of ", INT32_MAX);
  Tensor storage = torch::stable::new_empty(like, {std::max<int64_t>(M * (Kp + 8), 1)}, ScalarType::Char);
  int8_t* base = storage.mutable_data_ptr<int8_t>();
  return {storage, base, reinterpret_cast<float*>(base + M * Kp), reinterpret_cast<int32_t*>(base + M * Kp + 4 * M)};
}

std::vector<int64_t> output_sizes(const Tensor& x, int64_t N) {
  std::vector<int64_t> sizes(x.sizes().begin(), x.sizes().end());
  sizes.back() = N;
  return sizes;
}

void run_matmul(const int8_t* xq, int64_t M, int64_t Kp, const uint8_t* packed, int64_t N, const Epilogue& ep,
                cudaStream_t stream) {
  if (M == 0 || N == 0) return;
  if (M <= kGemvMaxTokens)
    run_gemv(xq, M, Kp, packed, N, ep, stream);
  else
    run_gemm(xq, M, Kp, packed, N, ep, stream);
}

Tensor ternary_linear_cuda(Tensor x, Tensor packed, Tensor w_scale, std::optional<Tensor> bias) {
  const TernaryShape shape = check_ternary_linear(x, packed, w_scale, bias);
  const int64_t M = shape.M, K = shape.K, N = shape.N, Kp = shape.Kp;
  check_same_cuda_device("ternary_linear", x, "packed", packed);
  check_same_cuda_device("ternary_linear", x, "w_scale", w_scale);
  if (bias.has_value()) check_same_cuda_device("ternary_linear", x, "bias", *bias);

  const ScalarType dtype = x.scalar_type();
  const int32_t device = x.get_device_index();
  torch::stable::accelerator::DeviceGuard guard(device);
  const cudaStream_t stream = cuda::current_stream(device);

  w_scale = as_contiguous(w_scale);
  std::optional<Tensor> bias_f32;
  if (bias.has_value())
    bias_f32 = as_contiguous(bias->scalar_type() == ScalarType::Float ? *bias
                                                                      : torch::stable::to(*bias, ScalarType::Float));
  x = as_contiguous(x);
  packed = as_aligned16(packed);

  if (K == 0) return empty_k_output(x, output_sizes(x, N), dtype, bias);  // before any launch
  Tensor out = torch::stable::new_empty(x, output_sizes(x, N), dtype);
  if (M == 0 || N == 0) return out;
  const QuantizedTokens tokens = allocate_tokens(x, M, Kp);
  if (dtype == ScalarType::Float)
    quantize_tokens<float><<<static_cast<unsigned>(M), kQuantThreads, 0, stream>>>(
        x.const_data_ptr<float>(), K, Kp, tokens.xq, tokens.x_scale, tokens.x_sum);
  else
    quantize_tokens<uint16_t><<<static_cast<unsigned>(M), kQuantThreads, 0, stream>>>(
        static_cast<const uint16_t*>(x.const_data_ptr()), K, Kp, tokens.xq, tokens.x_scale, tokens.x_sum);
  BITTTT_CUDA_CHECK_LAUNCH("quantize_tokens");

  const Epilogue ep{dtype == ScalarType::Float ? OutKind::Float32 : OutKind::BFloat16,
                    w_scale.const_data_ptr<float>(),
                    bias_f32 ? bias_f32->const_data_ptr<float>() : nullptr,
                    tokens.x_scale,
                    tokens.x_sum,
                    out.mutable_data_ptr(),
                    N};
  run_matmul(tokens.xq, M, Kp, packed.const_data_ptr<uint8_t>(), N, ep, stream);
  return out;
}

// Exact integer product of int8 activations [M, K] with BT2 weights: int32 [M, N], through the
// same GEMV / GEMM as ternary_linear (how the tests check those bit for bit).
Tensor ternary_matmul_int8_cuda(Tensor xq_in, Tensor packed) {
  const TernaryShape shape = check_ternary_matmul_int8(xq_in, packed);
  const int64_t M = shape.M, K = shape.K, N = shape.N, Kp = shape.Kp;
  check_same_cuda_device("ternary_matmul_int8", xq_in, "packed", packed);

  const int32_t device = xq_in.get_device_index();
  torch::stable::accelerator::DeviceGuard guard(device);
  const cudaStream_t stream = cuda::current_stream(device);
  xq_in = as_contiguous(xq_in);
  packed = as_aligned16(packed);

  if (K == 0) return empty_k_output(xq_in, {M, N}, ScalarType::Int, std::nullopt);  // before any launch
  Tensor out = torch::stable::new_empty(xq_in, {M, N}, ScalarType::Int);
  if (M == 0 || N == 0) return out;
  const QuantizedTokens tokens = allocate_tokens(xq_in, M, Kp);
  layout_int8_tokens<<<static_cast<unsigned>(M), kQuantThreads, 0, stream>>>(xq_in.const_data_ptr<int8_t>(), K, Kp,
                                                                              tokens.xq, tokens.x_sum);
  BITTTT_CUDA_CHECK_LAUNCH("layout_int8_tokens");
  const Epilogue ep{OutKind::Int32, nullptr, nullptr, nullptr, tokens.x_sum, out.mutable_data_ptr(), N};
  run_matmul(tokens.xq, M, Kp, packed.const_data_ptr<uint8_t>(), N, ep, stream);
  return out;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(bitttt, CUDA, m) {
  m.impl("ternary_linear", TORCH_BOX(&ternary_linear_cuda));
  m.impl("ternary_matmul_int8", TORCH_BOX(&ternary_matmul_int8_cuda));
}

}  // namespace bitttt::ternary
