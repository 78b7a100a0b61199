// CUDA flash-attention launchers (kernels in attention/forward.cuh and attention/backward.cuh,
// tensor-core building blocks in attention/tiles.cuh, PTX wrappers in mma.cuh). Torch-free: the Params of
// fastops/attention.h and a cudaStream_t.
//
// Coverage: float16 and bfloat16 storage (mma.sync m16n8k16, float32 accumulation); float32
// inputs are not taken here (fastops/ops/attention.py sends them to the Triton kernels). Head dims
// are bucketed on max(E, Ev): 64, 128, 256, zero padded in
// shared memory. Tiles and dynamic shared memory per instantiation (+ the float32 mask tile when
// the call has a mask); registers (sm_80 / sm_90a, no spills) from ptxas:
//   forward  D=64:  128 queries x 64 keys, 8 warps, 48 KiB (+32)   ~199 / 195 regs
//            D=128: 128 x 64, 8 warps, 96 KiB (+32)                 ~248 / 247 regs
//            D=256:  64 x 16, 4 warps, 64 KiB (+4)                  ~241 / 236 regs
//   dK/dV    D=64:  64 keys x 32 queries, 4 warps, 32.5 KiB (+8)   ~209 / 207 regs
//            D=128: 64 keys x 16 queries, 4 warps, 48.3 KiB (+4)   ~248 / 250 regs
//            D=256: 64 keys x 16 queries, 4 warps, 96.3 KiB (+4), dK and dV in two launches, 255 regs
//   dQ       D=64:  64 queries x 64 keys, 4 warps, 48 KiB (+16)    ~246 / 242 regs
//            D=128: 64 x 32, 4 warps, 64 KiB (+8)                   ~233 / 235 regs
//            D=256: 64 x 16, 4 warps, 96 KiB (+4)                   255 regs
// (Smaller key/query steps for the bigger head dims keep the float32 accumulators in registers.)
// Global loads are 16-byte cp.async when every pointer is 16-byte aligned and every row stride,
// E and Ev are multiples of 8 elements; otherwise element loads (same kernels, runtime branch).
// Grids are one-dimensional (up to 2^31 - 1 CTAs); all offsets are int64_t.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>

#include "cuda/attention/backward.cuh"
#include "cuda/attention/forward.cuh"
#include "fastops/attention.h"

namespace fastops {
namespace cuda {
namespace {

using namespace attn;

using Fwd64 = ForwardTraits<64, 8, 64>;
using Fwd128 = ForwardTraits<128, 8, 64>;
using Fwd256 = ForwardTraits<256, 4, 16>;
using DkDv64 = DkDvTraits<64, 4, 32>;
using DkDv128 = DkDvTraits<128, 4, 16>;
using Dq64 = DqTraits<64, 4, 64>;
using Dq128 = DqTraits<128, 4, 32>;
using DkDv256 = DkDvTraits<256, 4, 16>;
using Dq256 = DqTraits<256, 4, 16>;

constexpr int64_t kMaxForwardHeadDim = 256;
constexpr int64_t kMaxBackwardHeadDim = 256;

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }
bool strides8(const Strides3& s) { return s.n % 8 == 0 && s.h % 8 == 0 && s.l % 8 == 0; }

int ceil_blocks(int64_t items, int64_t per, int64_t groups, unsigned* grid) {
  const int64_t blocks = groups * ((items + per - 1) / per);
  if (blocks > INT_MAX) return static_cast<int>(cudaErrorInvalidConfiguration);
  *grid = static_cast<unsigned>(blocks);
  return 0;
}

// Sets the dynamic shared memory of `kernel` and launches it on grid x threads.
template <typename Kernel, typename Params>
int launch(Kernel kernel, unsigned grid, int threads, size_t smem, cudaStream_t stream, const Params& p, bool vec) {
  if (grid == 0) return 0;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (err != cudaSuccess) return static_cast<int>(err);
  kernel<<<grid, threads, smem, stream>>>(p, vec);
  return static_cast<int>(cudaGetLastError());
}

template <typename Tr, typename T>
int forward_launch(const AttentionForwardParams& p, bool vec, cudaStream_t stream) {
  unsigned grid = 0;
  if (int err = ceil_blocks(p.shape.L, Tr::kBlockM, p.shape.N * p.shape.H, &grid)) return err;
  const size_t smem = Tr::kSmemElems * sizeof(T) + (p.mask.kind != MaskKind::kNone ? Tr::kMaskBytes : 0);
  return launch(attention_forward_kernel<Tr, T>, grid, Tr::kThreads, smem, stream, p, vec);
}

template <typename T>
int forward_typed(const AttentionForwardParams& p, bool vec, cudaStream_t stream) {
  const int64_t d = p.shape.E > p.shape.Ev ? p.shape.E : p.shape.Ev;
  if (d <= 64) return forward_launch<Fwd64, T>(p, vec, stream);
  if (d <= 128) return forward_launch<Fwd128, T>(p, vec, stream);
  return forward_launch<Fwd256, T>(p, vec, stream);
}

// kSplit: dK and dV in two launches of the dK/dV kernel (head dim 256).
template <typename DkDv, typename Dq, typename T, bool kSplit = false>
int backward_launch(const AttentionBackwardParams& p, bool vec, cudaStream_t stream) {
  const AttentionShape& sh = p.shape;
  const int64_t rows = sh.N * sh.H * sh.L;
  constexpr int kDeltaThreads = 256, kRowsPerBlock = kDeltaThreads / kWarpSize;
  const int64_t delta_blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
  const unsigned dgrid = static_cast<unsigned>(delta_blocks < 65535 ? delta_blocks : 65535);  // grid-stride
  if (rows > 0) {
    attention_delta_kernel<T><<<dgrid, kDeltaThreads, 0, stream>>>(p);
    if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) return static_cast<int>(err);
  }
  unsigned grid = 0;
  if (int err = ceil_blocks(sh.S, DkDv::kBlockN, sh.N * sh.Hkv, &grid)) return err;
  const bool masked = p.mask.kind != MaskKind::kNone;
  const size_t dkdv_smem = DkDv::kSmemBytes + (masked ? DkDv::kMaskBytes : 0);
  if constexpr (kSplit) {
    if (int err = launch(attention_dkdv_kernel<DkDv, T, true, false>, grid, DkDv::kThreads, dkdv_smem, stream, p, vec))
      return err;
    if (int err = launch(attention_dkdv_kernel<DkDv, T, false, true>, grid, DkDv::kThreads, dkdv_smem, stream, p, vec))
      return err;
  } else {
    if (int err = launch(attention_dkdv_kernel<DkDv, T, true, true>, grid, DkDv::kThreads, dkdv_smem, stream, p, vec))
      return err;
  }
  if (int err = ceil_blocks(sh.L, Dq::kBlockM, sh.N * sh.H, &grid)) return err;
  return launch(attention_dq_kernel<Dq, T>, grid, Dq::kThreads, Dq::kSmemBytes + (masked ? Dq::kMaskBytes : 0),
                stream, p, vec);
}

template <typename T>
int backward_typed(const AttentionBackwardParams& p, bool vec, cudaStream_t stream) {
  const int64_t d = p.shape.E > p.shape.Ev ? p.shape.E : p.shape.Ev;
  if (d <= 64) return backward_launch<DkDv64, Dq64, T>(p, vec, stream);
  if (d <= 128) return backward_launch<DkDv128, Dq128, T>(p, vec, stream);
  return backward_launch<DkDv256, Dq256, T, true>(p, vec, stream);
}

// What every kernel needs: 16-bit storage, 0 < E, Ev <= max_d, S > 0 (an empty key set has no
// softmax; the caller handles it), and the int32 quantities the kernels keep in int.
bool covered(const AttentionShape& sh, int64_t max_d) {
  return (sh.dtype == DType::kFloat16 || sh.dtype == DType::kBFloat16) && sh.E > 0 && sh.Ev > 0 &&
         sh.E <= max_d && sh.Ev <= max_d && sh.S > 0 && sh.Hkv > 0 && sh.H % sh.Hkv == 0;
}

}  // namespace

int attention_forward(const AttentionForwardParams& p, void* stream) {
  const AttentionShape& sh = p.shape;
  if (sh.N * sh.H * sh.L == 0) return 0;
  if (!covered(sh, kMaxForwardHeadDim)) return static_cast<int>(cudaErrorInvalidValue);
  const bool vec = aligned16(p.q) && aligned16(p.k) && aligned16(p.v) && strides8(p.q_strides) &&
                   strides8(p.k_strides) && strides8(p.v_strides) && strides8(p.out_strides) && aligned16(p.out) &&
                   sh.E % 8 == 0 && sh.Ev % 8 == 0;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  return sh.dtype == DType::kFloat16 ? forward_typed<__half>(p, vec, s) : forward_typed<__nv_bfloat16>(p, vec, s);
}

int attention_backward(const AttentionBackwardParams& p, void* stream) {
  const AttentionShape& sh = p.shape;
  if (sh.N * sh.H * (sh.L + sh.S) == 0) return 0;
  if (!covered(sh, kMaxBackwardHeadDim) || p.delta == nullptr) return static_cast<int>(cudaErrorInvalidValue);
  const bool vec = aligned16(p.q) && aligned16(p.k) && aligned16(p.v) && aligned16(p.dout) && aligned16(p.dq) &&
                   aligned16(p.dk) && aligned16(p.dv) && strides8(p.q_strides) && strides8(p.k_strides) &&
                   strides8(p.v_strides) && strides8(p.dout_strides) && sh.E % 8 == 0 && sh.Ev % 8 == 0;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  return sh.dtype == DType::kFloat16 ? backward_typed<__half>(p, vec, s) : backward_typed<__nv_bfloat16>(p, vec, s);
}

}  // namespace cuda
}  // namespace fastops
