// Scaled dot-product attention (flash-attention algorithm): torch-free parameters and entry points.
//
// Dims: N batch, H query heads, Hkv key/value heads (H % Hkv == 0; query head h reads kv head
// h / (H / Hkv)), L queries, S keys, E query/key head dim, Ev value head dim.
//   q [N, H, L, E], k [N, Hkv, S, E], v [N, Hkv, S, Ev], out [N, H, L, Ev]: storage `dtype`,
//   last dim contiguous, the other three dims strided (strides in elements).
//   lse [N, H, L] float32, contiguous: logsumexp of each score row; +inf for a row whose every
//   key is masked (its output and gradients are 0, as torch's SDPA gives).
//   mask: none, bool (1 byte, true = attend) or additive (storage `dtype`), viewed as
//   [N, H, L, S] through strides (0 for broadcast dims).
// Scores: s_ij = scale * q_i . k_j + mask_ij; causal keeps j <= i (top-left aligned, as torch).
// Dropout (dropout_p > 0): probability p_ij is zeroed where math::dropout_bits(seed, index) <
// math::dropout_threshold(dropout_p), index = ((n * H + h) * L + i) * S + j, and scaled by
// 1 / (1 - dropout_p) elsewhere; lse is that of the undropped scores.
// Math is float32 whatever the storage type.
#pragma once

#include <cstdint>

#include "fastops/dtype.h"

namespace fastops {

enum class MaskKind : int { kNone = 0, kBool = 1, kAdditive = 2 };

struct AttentionMask {
  const void* ptr = nullptr;
  MaskKind kind = MaskKind::kNone;
  int64_t stride_n = 0, stride_h = 0, stride_l = 0, stride_s = 0;
};

// Strides (elements) of a [N, heads, len, dim] tensor whose last dim is contiguous.
struct Strides3 {
  int64_t n, h, l;
};

struct AttentionShape {
  int64_t N, H, Hkv, L, S, E, Ev;
  float scale;
  bool causal;
  DType dtype;
  float dropout_p = 0.0f;  // in [0, 1)
  uint64_t seed = 0;
};

struct AttentionForwardParams {
  AttentionShape shape;
  const void* q;
  const void* k;
  const void* v;
  void* out;
  float* lse;
  Strides3 q_strides, k_strides, v_strides, out_strides;
  AttentionMask mask;
};

// dq [N, H, L, E], dk [N, Hkv, S, E], dv [N, Hkv, S, Ev]: contiguous, storage `dtype`.
// dmask (optional) [N, H, L, S] float32 contiguous, zero-filled by the caller: d loss / d s_ij, the
// gradient of an additive mask before it is summed over broadcast dims.
// delta: [N, H, L] float32 scratch the CUDA backward needs (rowsum(dO * O)); the CPU kernel
// ignores it.
struct AttentionBackwardParams {
  AttentionShape shape;
  const void* q;
  const void* k;
  const void* v;
  const void* out;
  const void* dout;
  const float* lse;
  Strides3 q_strides, k_strides, v_strides, out_strides, dout_strides;
  AttentionMask mask;
  void* dq;
  void* dk;
  void* dv;
  float* dmask;
  float* delta = nullptr;
};

namespace cpu {
void attention_forward(const AttentionForwardParams& p);
void attention_backward(const AttentionBackwardParams& p);
}  // namespace cpu

// CUDA kernels (tensor cores, sm_80+): float16 / bfloat16 storage only, 0 < E, Ev <= 256, S > 0 (csrc/cuda/attention.cu). Return a cudaError_t as int (0 = ok);
// `stream` is a cudaStream_t.
namespace cuda {
int attention_forward(const AttentionForwardParams& p, void* stream);
int attention_backward(const AttentionBackwardParams& p, void* stream);
}  // namespace cuda

}  // namespace fastops
