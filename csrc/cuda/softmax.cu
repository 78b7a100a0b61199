// CUDA softmax kernels: forward y = softmax(x) and backward dx = y * (dy - sum(dy * y)) along `dim`
// of a contiguous tensor viewed as [outer, dim, inner]. Torch-free: raw pointers, sizes, a stream.
// Storage is float32, float16 or bfloat16; all math is float32 and comes from
// fastops/math/softmax.h (SoftmaxState, merge, push, rescale, softmax_output, softmax_grad).
//
// Launch configuration
// --------------------
// 1. Warp rows: inner == 1 and dim <= 1024 (kMaxWarpRowDim).
//    softmax_warp_*_kernel<T, kVec, kCols, kLanes>. A row is padded to cap = next_pow2(dim);
//    kLanes = min(cap, 32) lanes own one row (a warp holds 32 / kLanes rows) and each lane keeps
//    kCols = cap / kLanes (<= 32) elements in registers. Lane l holds the elements
//    (it * kLanes + l) * kVec + j, it < kCols / kVec, j < kVec, so each load instruction of a row
//    is contiguous across its lanes. kVec = min(kCols, 16 / sizeof(T)) (128-bit accesses once
//    kCols >= 4 for float32, >= 8 for 16-bit types) when every pointer is kVec * sizeof(T)-aligned
//    and dim % kVec == 0 (then every row is), else kVec = 1.
//    Block: 128 threads = 4 warps = 128 / kLanes rows. Grid: ceil(rows / rows_per_block) capped
//    at 65535; blocks then stride over row groups. The loop bound is block-uniform, so every lane
//    of a warp reaches every shuffle (rows past the end take part with no elements):
//    __shfl_xor_sync with the full mask and width kLanes. Forward: max, then sum of exp(x - max),
//    both by xor butterfly. Backward: sum of dy * y.
// 2. Block rows: inner == 1 and dim > 1024. softmax_block_*_kernel<T, kVec, 512>. One 512-thread
//    block per row; grid = min(rows, 65535), blocks stride over rows. When all pointers have the
//    same address mod 16 (and are element-aligned), each row is split into a scalar head up to
//    the first 16-byte boundary (< kVec elements), a body of 128-bit vectors and a scalar tail
//    (< kVec), so odd lengths (4097, 50257) still move 128-bit vectors; otherwise kVec = 1.
//    Pass 1: each thread loads 4 vectors at a time (all in flight), folds them into a chunk state
//    (max, sum of exp(x - max)) and merges that into its running SoftmaxState (online softmax); at
//    most 3 vectors remain, taken one at a time. Then warp shuffle merge, one state per warp
//    through shared memory, one barrier, and every warp merges the 16 per-warp states itself.
//    Pass 2 re-reads the row (mostly from L2) and writes. Backward: the same with
//    dot = sum(dy * y). Shared memory: two buffers of 16 states (256 B) forward, of 16 floats
//    (128 B) backward, alternating from row to row so one barrier per reduction suffices.
// 3. Columns: inner > 1. softmax_column_*_kernel<T, 4>. One thread per (o, i) column, 256 threads
//    per block, grid = min(ceil(outer * inner / 256), 65535), grid-stride over columns.
//    Neighbouring threads own neighbouring i, so every step over d is coalesced along inner.
//    4 loads in flight per thread.
// Zero-size tensors (outer * inner == 0 or dim == 0) return 0 without a launch. Row and column
// offsets are int64_t; only the short-row length (<= 1024) is an int.
// Register caps come from __launch_bounds__ minimum-blocks values (see kWarpRowForwardMinBlocks);
// no kernel spills on sm_80 or sm_90a.
//
// Dispatch: dtype switch -> <T> launcher that picks the kernel family and one switch on the row
// bucket; vector vs scalar access is a choice between two kernel pointers of one signature.
// x and y (dy, y and dx) are __restrict__: they must not overlap. (An exactly in-place call would
// still compute the right values, as every element is read only before it is written and by the
// thread that writes it, but callers should not rely on that.)

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "fastops/macros.h"
#include "fastops/math/softmax.h"
#include "fastops/softmax.h"
#include "storage.cuh"

namespace fastops {
namespace cuda {
namespace {

using math::SoftmaxState;

constexpr int kWarpSize = 32;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kMaxVecBytes = 16;                // 128-bit loads and stores
constexpr int64_t kMaxGridBlocks = 65535;        // grid-stride loops cover any further work

constexpr int kMaxWarpRowDim = 1024;             // longest row one warp holds in registers
constexpr int kWarpRowThreads = 128;
constexpr int kBlockRowThreads = 512;
// Minimum resident blocks per SM given to __launch_bounds__, i.e. register caps of 64 (warp-row
// forward), 128 (warp-row backward, which holds dy and y: 64 floats at 1024 columns) and 64 (block
// rows). Without them ptxas picks fewer registers than it may and spills around the calls of the
// IEEE-division slow path (seen at 72 and 40 registers); with them nothing spills on sm_80/sm_90a.
constexpr int kWarpRowForwardMinBlocks = 8;
constexpr int kWarpRowBackwardMinBlocks = 4;
constexpr int kBlockRowMinBlocks = 2;
constexpr int kBlockRowUnroll = 4;               // vectors per thread in flight in the block kernel
constexpr int kColumnThreads = 256;
constexpr int kColumnUnroll = 4;                 // elements per column in flight

// ---------------------------------------------------------------------------------------------
// Storage <-> float32 (scalar conversions: storage.cuh)

// Bit patterns of the storage types, to move elements as 32-bit words.
__device__ __forceinline__ float f32_from_bits(float, unsigned b) { return __uint_as_float(b); }
__device__ __forceinline__ float f32_from_bits(__half, unsigned b) {
  return __half2float(__ushort_as_half(static_cast<unsigned short>(b)));
}
__device__ __forceinline__ float f32_from_bits(__nv_bfloat16, unsigned b) {
  return __bfloat162float(__ushort_as_bfloat16(static_cast<unsigned short>(b)));
}
template <typename T>
__device__ __forceinline__ unsigned bits_from_f32(float v) {
  return __float_as_uint(v);
}
template <>
__device__ __forceinline__ unsigned bits_from_f32<__half>(float v) {
  return __half_as_ushort(__float2half_rn(v));
}
template <>
__device__ __forceinline__ unsigned bits_from_f32<__nv_bfloat16>(float v) {
  return __bfloat16_as_ushort(__float2bfloat16_rn(v));
}

// kWords 32-bit words as one access of a CUDA vector type (uint4 for 128 bits).
template <int kWords>
__device__ __forceinline__ void load_words(const void* p, unsigned* w) {
  static_assert(kWords == 1 || kWords == 2 || kWords == 4, "1, 2 or 4 words");
  if constexpr (kWords == 4) {
    const uint4 r = *static_cast<const uint4*>(p);
    w[0] = r.x; w[1] = r.y; w[2] = r.z; w[3] = r.w;
  } else if constexpr (kWords == 2) {
    const uint2 r = *static_cast<const uint2*>(p);
    w[0] = r.x; w[1] = r.y;
  } else {
    w[0] = *static_cast<const unsigned*>(p);
  }
}

template <int kWords>
__device__ __forceinline__ void store_words(void* p, const unsigned* w) {
  static_assert(kWords == 1 || kWords == 2 || kWords == 4, "1, 2 or 4 words");
  if constexpr (kWords == 4) {
    *static_cast<uint4*>(p) = make_uint4(w[0], w[1], w[2], w[3]);
  } else if constexpr (kWords == 2) {
    *static_cast<uint2*>(p) = make_uint2(w[0], w[1]);
  } else {
    *static_cast<unsigned*>(p) = w[0];
  }
}

// kN consecutive elements as one access (p must be kN * sizeof(T)-aligned), converted to or
// from float32 through 32-bit words. (A struct of kN T's came out as 16-bit stores in places;
// with words, only the block kernels' one-vector remainder loops still get their 128-bit store
// split by the compiler into four 32-bit stores, same bytes.)
template <int kN, typename T>
__device__ __forceinline__ void load_f32(const T* __restrict__ p, float* out) {
  constexpr int kBytes = kN * static_cast<int>(sizeof(T));
  static_assert(kBytes <= kMaxVecBytes, "vector wider than 128 bits");
  if constexpr (kBytes < 4) {
    out[0] = to_f32(*p);
  } else {
    constexpr int kWords = kBytes / 4;
    constexpr int kPerWord = 4 / static_cast<int>(sizeof(T));
    constexpr int kShift = 32 / kPerWord;
    unsigned w[kWords];
    load_words<kWords>(p, w);
#pragma unroll
    for (int j = 0; j < kN; ++j) {
      out[j] = f32_from_bits(T(), w[j / kPerWord] >> (kShift * (j % kPerWord) % 32));
    }
  }
}

template <int kN, typename T>
__device__ __forceinline__ void store_f32(T* __restrict__ p, const float* in) {
  constexpr int kBytes = kN * static_cast<int>(sizeof(T));
  static_assert(kBytes <= kMaxVecBytes, "vector wider than 128 bits");
  if constexpr (kBytes < 4) {
    *p = from_f32<T>(in[0]);
  } else {
    constexpr int kWords = kBytes / 4;
    constexpr int kPerWord = 4 / static_cast<int>(sizeof(T));
    constexpr int kShift = 32 / kPerWord;
    unsigned w[kWords];
#pragma unroll
    for (int k = 0; k < kWords; ++k) w[k] = 0u;
#pragma unroll
    for (int j = 0; j < kN; ++j) {
      w[j / kPerWord] |= bits_from_f32<T>(in[j]) << (kShift * (j % kPerWord) % 32);
    }
    store_words<kWords>(p, w);
  }
}

// ---------------------------------------------------------------------------------------------
// Reductions. Every xor butterfly step combines with a commutative rule (fmaxf, +, merge), so all
// lanes of a group end with the bit-identical result.

// Combine rules, one per reduced type: `Max` for fmaxf, `+` for floats, merge for SoftmaxState.
struct Max {
  float v;
};
__device__ __forceinline__ Max combine(Max a, Max b) { return {fmaxf(a.v, b.v)}; }
__device__ __forceinline__ float combine(float a, float b) { return a + b; }
__device__ __forceinline__ SoftmaxState combine(SoftmaxState a, SoftmaxState b) { return math::merge(a, b); }

template <int kWidth>
__device__ __forceinline__ float shfl_xor(float v, int offset) {
  return __shfl_xor_sync(kFullMask, v, offset, kWidth);
}
template <int kWidth>
__device__ __forceinline__ Max shfl_xor(Max m, int offset) {
  return {shfl_xor<kWidth>(m.v, offset)};
}
template <int kWidth>
__device__ __forceinline__ SoftmaxState shfl_xor(SoftmaxState s, int offset) {
  SoftmaxState other;
  other.max = shfl_xor<kWidth>(s.max, offset);
  other.sum = shfl_xor<kWidth>(s.sum, offset);
  return other;
}

// Reduction over groups of kWidth lanes (xor butterfly): every lane gets its group's result.
template <int kWidth, typename T>
__device__ __forceinline__ T warp_reduce(T v) {
#pragma unroll
  for (int offset = kWidth / 2; offset > 0; offset /= 2) v = combine(v, shfl_xor<kWidth>(v, offset));
  return v;
}

template <int kWidth>
__device__ __forceinline__ float warp_max(float v) {
  return warp_reduce<kWidth>(Max{v}).v;
}

template <int kWidth>
__device__ __forceinline__ float warp_sum(float v) {
  return warp_reduce<kWidth>(v);
}

// Block-wide reduction; every thread gets the result. smem holds kThreads / 32 slots. Each warp
// writes its partial, and after the barrier every warp reduces all partials itself (lane l reads
// slot l % kWarps, so every width-kWarps segment holds the same values and ends bit-identical), so
// there is no divergent branch around the shuffles. Callers alternate between two smem buffers
// from one row to the next: a warp can only write a buffer again after the next row's barrier,
// which every warp reaches after reading this row's partials.
template <int kThreads, typename T>
__device__ __forceinline__ T block_reduce(T v, T* smem) {
  constexpr int kWarps = kThreads / kWarpSize;
  static_assert(kThreads % kWarpSize == 0 && kWarps <= kWarpSize, "block size");
  static_assert((kWarps & (kWarps - 1)) == 0, "warp count must be a power of two");
  const int lane = threadIdx.x % kWarpSize;
  v = warp_reduce<kWarpSize>(v);
  if (lane == 0) smem[threadIdx.x / kWarpSize] = v;
  __syncthreads();
  return warp_reduce<kWarps>(smem[lane % kWarps]);
}

// State of kN elements: their max and the sum of exp(x - max), one exp each (rescale returns 0
// when the max is -inf, so an all -inf chunk is {-inf, 0}, the same as pushing its elements).
template <int kN>
__device__ __forceinline__ SoftmaxState chunk_state(const float* v) {
  float m = v[0];
#pragma unroll
  for (int j = 1; j < kN; ++j) m = fmaxf(m, v[j]);
  float s = 0.0f;
#pragma unroll
  for (int j = 0; j < kN; ++j) s += math::rescale(v[j], m);
  return SoftmaxState{m, s};
}

// ---------------------------------------------------------------------------------------------
// 1. Warp rows (inner == 1, dim <= 1024): kLanes lanes per row, row in registers.

template <int kLanes>
struct WarpRowGroup {
  static_assert(kLanes >= 1 && kLanes <= kWarpSize && (kLanes & (kLanes - 1)) == 0, "lanes");
  static constexpr int kRowsPerBlock = kWarpRowThreads / kLanes;
};

template <typename T, int kVec, int kCols, int kLanes>
__global__ void __launch_bounds__(kWarpRowThreads, kWarpRowForwardMinBlocks)
    softmax_warp_forward_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t rows, int dim) {
  static_assert(kCols % kVec == 0, "kCols must be a multiple of kVec");
  constexpr int kIters = kCols / kVec;
  constexpr int kRowsPerBlock = WarpRowGroup<kLanes>::kRowsPerBlock;
  const int lane = threadIdx.x % kLanes;
  const int sub = threadIdx.x / kLanes;
  // base is block-uniform, so all lanes of a warp run the same iterations and reach every shuffle.
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock; base < rows;
       base += static_cast<int64_t>(gridDim.x) * kRowsPerBlock) {
    const int64_t row = base + sub;
    const bool valid = row < rows;
    const int64_t offset = valid ? row * dim : 0;
    const T* xr = x + offset;
    T* yr = y + offset;

    float v[kCols];
#pragma unroll
    for (int it = 0; it < kIters; ++it) {
      // dim % kVec == 0, so a vector is all in or all out
      const int col = (it * kLanes + lane) * kVec;
      if (valid && col < dim) {
        load_f32<kVec>(xr + col, v + it * kVec);
      } else {
#pragma unroll
        for (int j = 0; j < kVec; ++j) v[it * kVec + j] = math::neg_infinity();
      }
    }

    float m = v[0];
#pragma unroll
    for (int j = 1; j < kCols; ++j) m = fmaxf(m, v[j]);
    m = warp_max<kLanes>(m);
    float s = 0.0f;
#pragma unroll
    for (int j = 0; j < kCols; ++j) s += math::rescale(v[j], m);  // padding (-inf) adds 0
    s = warp_sum<kLanes>(s);
    const SoftmaxState state{m, s};

#pragma unroll
    for (int it = 0; it < kIters; ++it) {
      const int col = (it * kLanes + lane) * kVec;
      if (valid && col < dim) {
        float out[kVec];
#pragma unroll
        for (int j = 0; j < kVec; ++j) out[j] = math::softmax_output(v[it * kVec + j], state);
        store_f32<kVec>(yr + col, out);
      }
    }
  }
}

template <typename T, int kVec, int kCols, int kLanes>
__global__ void __launch_bounds__(kWarpRowThreads, kWarpRowBackwardMinBlocks)
    softmax_warp_backward_kernel(const T* __restrict__ dy, const T* __restrict__ y,
                                 T* __restrict__ dx, int64_t rows, int dim) {
  static_assert(kCols % kVec == 0, "kCols must be a multiple of kVec");
  constexpr int kIters = kCols / kVec;
  constexpr int kRowsPerBlock = WarpRowGroup<kLanes>::kRowsPerBlock;
  const int lane = threadIdx.x % kLanes;
  const int sub = threadIdx.x / kLanes;
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock; base < rows;
       base += static_cast<int64_t>(gridDim.x) * kRowsPerBlock) {
    const int64_t row = base + sub;
    const bool valid = row < rows;
    const int64_t offset = valid ? row * dim : 0;

    float g[kCols];
    float p[kCols];
#pragma unroll
    for (int it = 0; it < kIters; ++it) {
      const int col = (it * kLanes + lane) * kVec;
      if (valid && col < dim) {
        load_f32<kVec>(dy + offset + col, g + it * kVec);
        load_f32<kVec>(y + offset + col, p + it * kVec);
      } else {
#pragma unroll
        for (int j = 0; j < kVec; ++j) {
          g[it * kVec + j] = 0.0f;
          p[it * kVec + j] = 0.0f;
        }
      }
    }

    float dot = 0.0f;
#pragma unroll
    for (int j = 0; j < kCols; ++j) dot += g[j] * p[j];
    dot = warp_sum<kLanes>(dot);

#pragma unroll
    for (int it = 0; it < kIters; ++it) {
      const int col = (it * kLanes + lane) * kVec;
      if (valid && col < dim) {
        float out[kVec];
#pragma unroll
        for (int j = 0; j < kVec; ++j) {
          out[j] = math::softmax_grad(g[it * kVec + j], p[it * kVec + j], dot);
        }
        store_f32<kVec>(dx + offset + col, out);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// 2. Block rows (inner == 1, dim > 1024): one block per row, two passes over global memory.

// [0, head) scalar, [head, head + nvec * kVec) vectors, [tail_begin, dim) scalar.
struct RowSplit {
  int64_t head;
  int64_t nvec;
  int64_t tail_begin;
};

template <typename T, int kVec>
__device__ __forceinline__ RowSplit split_row(const T* row, int64_t dim) {
  constexpr uint32_t kBytes = kVec * sizeof(T);
  const uint32_t mis = static_cast<uint32_t>(reinterpret_cast<uintptr_t>(row) % kBytes);
  int64_t head = mis == 0 ? 0 : static_cast<int64_t>((kBytes - mis) / sizeof(T));
  head = head < dim ? head : dim;
  const int64_t nvec = (dim - head) / kVec;
  return RowSplit{head, nvec, head + nvec * kVec};
}

// Each thread takes vectors i, i + kThreads, ...: kUnroll of them per step of the main loop (all
// loads issued before any use), then at most kUnroll - 1 more one at a time.
template <typename T, int kVec, int kThreads>
__global__ void __launch_bounds__(kThreads, kBlockRowMinBlocks)
    softmax_block_forward_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t rows,
                                 int64_t dim) {
  static_assert(kThreads >= kVec, "head and tail (< kVec elements each) need one thread each");
  constexpr int kUnroll = kBlockRowUnroll;
  __shared__ SoftmaxState smem[2][kThreads / kWarpSize];  // alternating per row, see block_reduce
  const int tid = threadIdx.x;
  int buf = 0;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x, buf ^= 1) {  // block-uniform
    const T* xr = x + row * dim;
    T* yr = y + row * dim;
    const RowSplit sp = split_row<T, kVec>(xr, dim);
    const T* xb = xr + sp.head;
    T* yb = yr + sp.head;
    const int64_t tail = dim - sp.tail_begin;

    // Pass 1: online state. Head and tail (< kVec elements each) go to the first threads.
    SoftmaxState st = math::softmax_state_init();
    if (tid < sp.head) st = math::push(st, to_f32(xr[tid]));
    if (tid < tail) st = math::push(st, to_f32(xr[sp.tail_begin + tid]));
    int64_t i = tid;
    for (; i + (kUnroll - 1) * kThreads < sp.nvec; i += kUnroll * kThreads) {
      float v[kUnroll * kVec];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        load_f32<kVec>(xb + (i + u * kThreads) * kVec, v + u * kVec);
      }
      st = math::merge(st, chunk_state<kUnroll * kVec>(v));
    }
#pragma unroll 1
    for (; i < sp.nvec; i += kThreads) {
      float v[kVec];
      load_f32<kVec>(xb + i * kVec, v);
      st = math::merge(st, chunk_state<kVec>(v));
    }
    st = block_reduce<kThreads>(st, smem[buf]);

    // Pass 2: outputs.
    if (tid < sp.head) yr[tid] = from_f32<T>(math::softmax_output(to_f32(xr[tid]), st));
    if (tid < tail) {
      const int64_t k = sp.tail_begin + tid;
      yr[k] = from_f32<T>(math::softmax_output(to_f32(xr[k]), st));
    }
    i = tid;
    for (; i + (kUnroll - 1) * kThreads < sp.nvec; i += kUnroll * kThreads) {
      float v[kUnroll * kVec];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        load_f32<kVec>(xb + (i + u * kThreads) * kVec, v + u * kVec);
      }
#pragma unroll
      for (int j = 0; j < kUnroll * kVec; ++j) v[j] = math::softmax_output(v[j], st);
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        store_f32<kVec>(yb + (i + u * kThreads) * kVec, v + u * kVec);
      }
    }
#pragma unroll 1
    for (; i < sp.nvec; i += kThreads) {
      float v[kVec];
      load_f32<kVec>(xb + i * kVec, v);
#pragma unroll
      for (int j = 0; j < kVec; ++j) v[j] = math::softmax_output(v[j], st);
      store_f32<kVec>(yb + i * kVec, v);
    }
  }
}

template <typename T, int kVec, int kThreads>
__global__ void __launch_bounds__(kThreads, kBlockRowMinBlocks)
    softmax_block_backward_kernel(const T* __restrict__ dy, const T* __restrict__ y,
                                  T* __restrict__ dx, int64_t rows, int64_t dim) {
  static_assert(kThreads >= kVec, "head and tail (< kVec elements each) need one thread each");
  constexpr int kUnroll = kBlockRowUnroll;
  __shared__ float smem[2][kThreads / kWarpSize];  // alternating per row, see block_reduce
  const int tid = threadIdx.x;
  int buf = 0;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x, buf ^= 1) {  // block-uniform
    const T* gr = dy + row * dim;
    const T* pr = y + row * dim;
    T* dr = dx + row * dim;
    const RowSplit sp = split_row<T, kVec>(gr, dim);  // the host checked all three share alignment
    const T* gb = gr + sp.head;
    const T* pb = pr + sp.head;
    T* db = dr + sp.head;
    const int64_t tail = dim - sp.tail_begin;

    // Pass 1: dot = sum(dy * y).
    float dot = 0.0f;
    if (tid < sp.head) dot += to_f32(gr[tid]) * to_f32(pr[tid]);
    if (tid < tail) {
      const int64_t k = sp.tail_begin + tid;
      dot += to_f32(gr[k]) * to_f32(pr[k]);
    }
    int64_t i = tid;
    for (; i + (kUnroll - 1) * kThreads < sp.nvec; i += kUnroll * kThreads) {
      float g[kUnroll * kVec];
      float p[kUnroll * kVec];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        load_f32<kVec>(gb + (i + u * kThreads) * kVec, g + u * kVec);
        load_f32<kVec>(pb + (i + u * kThreads) * kVec, p + u * kVec);
      }
#pragma unroll
      for (int j = 0; j < kUnroll * kVec; ++j) dot += g[j] * p[j];
    }
#pragma unroll 1
    for (; i < sp.nvec; i += kThreads) {
      float g[kVec];
      float p[kVec];
      load_f32<kVec>(gb + i * kVec, g);
      load_f32<kVec>(pb + i * kVec, p);
#pragma unroll
      for (int j = 0; j < kVec; ++j) dot += g[j] * p[j];
    }
    dot = block_reduce<kThreads>(dot, smem[buf]);

    // Pass 2: dx.
    if (tid < sp.head) {
      dr[tid] = from_f32<T>(math::softmax_grad(to_f32(gr[tid]), to_f32(pr[tid]), dot));
    }
    if (tid < tail) {
      const int64_t k = sp.tail_begin + tid;
      dr[k] = from_f32<T>(math::softmax_grad(to_f32(gr[k]), to_f32(pr[k]), dot));
    }
    i = tid;
    for (; i + (kUnroll - 1) * kThreads < sp.nvec; i += kUnroll * kThreads) {
      float g[kUnroll * kVec];
      float p[kUnroll * kVec];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        load_f32<kVec>(gb + (i + u * kThreads) * kVec, g + u * kVec);
        load_f32<kVec>(pb + (i + u * kThreads) * kVec, p + u * kVec);
      }
#pragma unroll
      for (int j = 0; j < kUnroll * kVec; ++j) g[j] = math::softmax_grad(g[j], p[j], dot);
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        store_f32<kVec>(db + (i + u * kThreads) * kVec, g + u * kVec);
      }
    }
#pragma unroll 1
    for (; i < sp.nvec; i += kThreads) {
      float g[kVec];
      float p[kVec];
      load_f32<kVec>(gb + i * kVec, g);
      load_f32<kVec>(pb + i * kVec, p);
#pragma unroll
      for (int j = 0; j < kVec; ++j) g[j] = math::softmax_grad(g[j], p[j], dot);
      store_f32<kVec>(db + i * kVec, g);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// 3. Columns (inner > 1): one thread per (o, i), looping over d with stride inner.

template <typename T, int kUnroll>
__global__ void __launch_bounds__(kColumnThreads)
    softmax_column_forward_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t columns,
                                  int64_t dim, int64_t inner) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kColumnThreads;
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * kColumnThreads + threadIdx.x; c < columns;
       c += stride) {
    const int64_t o = c / inner;
    const int64_t base = o * dim * inner + (c - o * inner);
    const T* xc = x + base;
    T* yc = y + base;

    SoftmaxState st = math::softmax_state_init();
    int64_t d = 0;
    for (; d + kUnroll <= dim; d += kUnroll) {
      float v[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) v[u] = to_f32(xc[(d + u) * inner]);
      st = math::merge(st, chunk_state<kUnroll>(v));
    }
    for (; d < dim; ++d) st = math::push(st, to_f32(xc[d * inner]));

#pragma unroll 4
    for (d = 0; d < dim; ++d) {
      yc[d * inner] = from_f32<T>(math::softmax_output(to_f32(xc[d * inner]), st));
    }
  }
}

template <typename T, int kUnroll>
__global__ void __launch_bounds__(kColumnThreads)
    softmax_column_backward_kernel(const T* __restrict__ dy, const T* __restrict__ y,
                                   T* __restrict__ dx, int64_t columns, int64_t dim,
                                   int64_t inner) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kColumnThreads;
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * kColumnThreads + threadIdx.x; c < columns;
       c += stride) {
    const int64_t o = c / inner;
    const int64_t base = o * dim * inner + (c - o * inner);
    const T* gc = dy + base;
    const T* pc = y + base;
    T* dc = dx + base;

    float dot = 0.0f;
#pragma unroll kUnroll
    for (int64_t d = 0; d < dim; ++d) dot += to_f32(gc[d * inner]) * to_f32(pc[d * inner]);

#pragma unroll kUnroll
    for (int64_t d = 0; d < dim; ++d) {
      dc[d * inner] =
          from_f32<T>(math::softmax_grad(to_f32(gc[d * inner]), to_f32(pc[d * inner]), dot));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Launchers

bool aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

unsigned grid_blocks(int64_t work, int64_t per_block) {
  const int64_t blocks = (work + per_block - 1) / per_block;
  return static_cast<unsigned>(blocks < kMaxGridBlocks ? blocks : kMaxGridBlocks);
}

int ceil_log2(int64_t n) {
  int k = 0;
  while ((int64_t{1} << k) < n) ++k;
  return k;
}

int launch_status() { return static_cast<int>(cudaGetLastError()); }

template <typename T>
constexpr int max_vec() {
  return kMaxVecBytes / static_cast<int>(sizeof(T));
}

// Short rows padded to kCap = next_pow2(dim) elements: kLanes lanes of a warp hold kCols elements
// each, loaded kVec at a time.
template <typename T, int kCap>
struct WarpRowShape {
  static constexpr int kLanes = kCap < kWarpSize ? kCap : kWarpSize;
  static constexpr int kCols = kCap / kLanes;
  static constexpr int kVec = kCols < max_vec<T>() ? kCols : max_vec<T>();
};

template <typename T, int kCap>
int launch_warp_forward(const SoftmaxParams& p, cudaStream_t stream) {
  using S = WarpRowShape<T, kCap>;
  constexpr int kLanes = S::kLanes, kCols = S::kCols, kVec = S::kVec;
  const T* x = static_cast<const T*>(p.x);
  T* y = static_cast<T*>(p.y);
  const int dim = static_cast<int>(p.dim);
  const bool vec = aligned(x, kVec * sizeof(T)) && aligned(y, kVec * sizeof(T)) && dim % kVec == 0;
  auto kernel = vec ? softmax_warp_forward_kernel<T, kVec, kCols, kLanes>
                    : softmax_warp_forward_kernel<T, 1, kCols, kLanes>;
  const unsigned grid = grid_blocks(p.outer, WarpRowGroup<kLanes>::kRowsPerBlock);
  kernel<<<grid, kWarpRowThreads, 0, stream>>>(x, y, p.outer, dim);
  return launch_status();
}

template <typename T, int kCap>
int launch_warp_backward(const SoftmaxBackwardParams& p, cudaStream_t stream) {
  using S = WarpRowShape<T, kCap>;
  constexpr int kLanes = S::kLanes, kCols = S::kCols, kVec = S::kVec;
  const T* dy = static_cast<const T*>(p.dy);
  const T* y = static_cast<const T*>(p.y);
  T* dx = static_cast<T*>(p.dx);
  const int dim = static_cast<int>(p.dim);
  const size_t bytes = kVec * sizeof(T);
  const bool vec = aligned(dy, bytes) && aligned(y, bytes) && aligned(dx, bytes) && dim % kVec == 0;
  auto kernel = vec ? softmax_warp_backward_kernel<T, kVec, kCols, kLanes>
                    : softmax_warp_backward_kernel<T, 1, kCols, kLanes>;
  const unsigned grid = grid_blocks(p.outer, WarpRowGroup<kLanes>::kRowsPerBlock);
  kernel<<<grid, kWarpRowThreads, 0, stream>>>(dy, y, dx, p.outer, dim);
  return launch_status();
}

// Block rows vectorise when every pointer is element-aligned and all share one address mod 16.
template <typename T>
bool same_alignment(const void* a, const void* b) {
  const uintptr_t ua = reinterpret_cast<uintptr_t>(a);
  const uintptr_t ub = reinterpret_cast<uintptr_t>(b);
  return aligned(a, sizeof(T)) && aligned(b, sizeof(T)) && ua % kMaxVecBytes == ub % kMaxVecBytes;
}

template <typename T>
int launch_block_forward(const SoftmaxParams& p, cudaStream_t stream) {
  constexpr int kVec = max_vec<T>();
  const T* x = static_cast<const T*>(p.x);
  T* y = static_cast<T*>(p.y);
  auto kernel = same_alignment<T>(x, y) ? softmax_block_forward_kernel<T, kVec, kBlockRowThreads>
                                        : softmax_block_forward_kernel<T, 1, kBlockRowThreads>;
  kernel<<<grid_blocks(p.outer, 1), kBlockRowThreads, 0, stream>>>(x, y, p.outer, p.dim);
  return launch_status();
}

template <typename T>
int launch_block_backward(const SoftmaxBackwardParams& p, cudaStream_t stream) {
  constexpr int kVec = max_vec<T>();
  const T* dy = static_cast<const T*>(p.dy);
  const T* y = static_cast<const T*>(p.y);
  T* dx = static_cast<T*>(p.dx);
  const bool vec = same_alignment<T>(dy, y) && same_alignment<T>(dy, dx);
  auto kernel = vec ? softmax_block_backward_kernel<T, kVec, kBlockRowThreads>
                    : softmax_block_backward_kernel<T, 1, kBlockRowThreads>;
  kernel<<<grid_blocks(p.outer, 1), kBlockRowThreads, 0, stream>>>(dy, y, dx, p.outer, p.dim);
  return launch_status();
}

template <typename T>
int launch_column_forward(const SoftmaxParams& p, cudaStream_t stream) {
  const int64_t columns = p.outer * p.inner;
  softmax_column_forward_kernel<T, kColumnUnroll>
      <<<grid_blocks(columns, kColumnThreads), kColumnThreads, 0, stream>>>(
          static_cast<const T*>(p.x), static_cast<T*>(p.y), columns, p.dim, p.inner);
  return launch_status();
}

template <typename T>
int launch_column_backward(const SoftmaxBackwardParams& p, cudaStream_t stream) {
  const int64_t columns = p.outer * p.inner;
  softmax_column_backward_kernel<T, kColumnUnroll>
      <<<grid_blocks(columns, kColumnThreads), kColumnThreads, 0, stream>>>(
          static_cast<const T*>(p.dy), static_cast<const T*>(p.y), static_cast<T*>(p.dx), columns,
          p.dim, p.inner);
  return launch_status();
}

// The short-row bucket: launch(std::integral_constant<int, kCap>{}) with kCap = next_pow2(dim),
// dim <= kMaxWarpRowDim.
template <typename Launch>
int with_row_capacity(int64_t dim, Launch&& launch) {
  static_assert(kMaxWarpRowDim == 1024, "the cases below stop at 1024");
  switch (ceil_log2(dim)) {
    case 0: return launch(std::integral_constant<int, 1>{});
    case 1: return launch(std::integral_constant<int, 2>{});
    case 2: return launch(std::integral_constant<int, 4>{});
    case 3: return launch(std::integral_constant<int, 8>{});
    case 4: return launch(std::integral_constant<int, 16>{});
    case 5: return launch(std::integral_constant<int, 32>{});
    case 6: return launch(std::integral_constant<int, 64>{});
    case 7: return launch(std::integral_constant<int, 128>{});
    case 8: return launch(std::integral_constant<int, 256>{});
    case 9: return launch(std::integral_constant<int, 512>{});
    default: return launch(std::integral_constant<int, 1024>{});
  }
}

// Second dispatch level: kernel family, then the short-row bucket.
template <typename T>
int forward_typed(const SoftmaxParams& p, cudaStream_t stream) {
  if (p.inner > 1) return launch_column_forward<T>(p, stream);
  if (p.dim > kMaxWarpRowDim) return launch_block_forward<T>(p, stream);
  return with_row_capacity(p.dim, [&](auto cap) { return launch_warp_forward<T, decltype(cap)::value>(p, stream); });
}

template <typename T>
int backward_typed(const SoftmaxBackwardParams& p, cudaStream_t stream) {
  if (p.inner > 1) return launch_column_backward<T>(p, stream);
  if (p.dim > kMaxWarpRowDim) return launch_block_backward<T>(p, stream);
  return with_row_capacity(p.dim, [&](auto cap) { return launch_warp_backward<T, decltype(cap)::value>(p, stream); });
}

bool is_empty(int64_t outer, int64_t dim, int64_t inner) {
  return outer <= 0 || dim <= 0 || inner <= 0;
}

}  // namespace

int softmax_forward(const SoftmaxParams& p, void* stream) {
  if (is_empty(p.outer, p.dim, p.inner)) return 0;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (p.dtype) {
    case DType::kFloat32: return forward_typed<float>(p, s);
    case DType::kFloat16: return forward_typed<__half>(p, s);
    case DType::kBFloat16: return forward_typed<__nv_bfloat16>(p, s);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

int softmax_backward(const SoftmaxBackwardParams& p, void* stream) {
  if (is_empty(p.outer, p.dim, p.inner)) return 0;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (p.dtype) {
    case DType::kFloat32: return backward_typed<float>(p, s);
    case DType::kFloat16: return backward_typed<__half>(p, s);
    case DType::kBFloat16: return backward_typed<__nv_bfloat16>(p, s);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

}  // namespace cuda
}  // namespace fastops
