// Flash-attention backward kernels (FlashAttention-2 scheme) on tensor cores, deterministic:
// no atomics, every gradient element is summed by one thread in a fixed order.
//
//   1. attention_delta_kernel: D_i = sum_d dO_id O_id into p.delta (float32 [N, H, L]); one warp
//      per query row.
//   2. attention_dkdv_kernel: one CTA per (key block of kBlockN = 16 * kWarps keys, kv head hk,
//      batch n); each warp owns 16 keys (head dim 256: one launch for dK, one for dV). K and V of the block stay in shared memory; the CTA walks
//      the query heads of hk (GQA) and their query blocks (causal: from the block holding key
//      j0 on), Q, dO, lse and D double buffered with cp.async. Per query block, with the scores
//      held transposed (rows = keys) in registers:
//        S^T = K Q^T, P^T = exp(S^T - lse), dP^T = V dO^T (times the dropout factor Z),
//        dS^T = P^T (dP^T - D), dV += (P^T Z) dO, dK += dS^T Q;  dK *= scale at the end.
//   3. attention_dq_kernel: one CTA per (query block, head, batch), warps over queries; walks the
//      key blocks (causal: up to the block's last query), K and V double buffered:
//        S = Q K^T, P = exp(S - lse), dP = dO V^T Z, dS = P (dP - D), dQ += dS K; dQ *= scale.
//      It also writes dS to p.dmask (the additive mask's gradient) when asked.
// Kernels 2 and 3 both recompute the score tiles (7 GEMMs per tile in all, as FlashAttention-2's
// deterministic mode); dq in a separate pass instead of atomics keeps the result reproducible.
#pragma once

#include "cuda/attention/tiles.cuh"
#include "cuda/attention/scores.cuh"

namespace fastops {
namespace cuda {
namespace attn {

template <typename T>
__global__ void __launch_bounds__(256) attention_delta_kernel(const AttentionBackwardParams p) {
  const AttentionShape& sh = p.shape;
  const int64_t rows = sh.N * sh.H * sh.L;
  const int lane = threadIdx.x % kWarpSize;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / kWarpSize);
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / kWarpSize) + threadIdx.x / kWarpSize;
       row < rows; row += warps) {
    const int64_t n = row / (sh.H * sh.L), h = (row / sh.L) % sh.H, i = row % sh.L;
    const T* o = static_cast<const T*>(p.out) + n * p.out_strides.n + h * p.out_strides.h + i * p.out_strides.l;
    const T* g = static_cast<const T*>(p.dout) + n * p.dout_strides.n + h * p.dout_strides.h + i * p.dout_strides.l;
    float acc = 0.0f;
    for (int64_t d = lane; d < sh.Ev; d += kWarpSize) acc += to_f32(o[d]) * to_f32(g[d]);
#pragma unroll
    for (int off = kWarpSize / 2; off > 0; off /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, off);
    if (lane == 0) p.delta[row] = acc;
  }
}

// dK/dV pass: kBlockN = 16 * kWarps keys per CTA, kBlockM queries per step.
template <int D_, int kWarps_, int kBlockM_>
struct DkDvTraits {
  static constexpr int D = D_;
  static constexpr int kWarps = kWarps_;
  static constexpr int kThreads = kWarps * kWarpSize;
  static constexpr int kBlockN = 16 * kWarps;
  static constexpr int kBlockM = kBlockM_;
  // K, V + 2 x (Q, dO) tiles, then 2 x (lse, D) float rows
  static constexpr int kSmemElems = 2 * kBlockN * D + 4 * kBlockM * D;
  static constexpr int kSmemBytes = kSmemElems * 2 + 4 * kBlockM * 4;
  static constexpr int kMaskBytes = kBlockM * kBlockN * 4;  // float32 [queries, keys] mask tile
  static_assert(D % 64 == 0 && kBlockM % 16 == 0, "tile shapes");
};

// dQ pass: kBlockM = 16 * kWarps queries per CTA, kBlockN keys per step.
template <int D_, int kWarps_, int kBlockN_>
struct DqTraits {
  static constexpr int D = D_;
  static constexpr int kWarps = kWarps_;
  static constexpr int kThreads = kWarps * kWarpSize;
  static constexpr int kBlockM = 16 * kWarps;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kSmemElems = 2 * kBlockM * D + 4 * kBlockN * D;  // Q, dO + 2 x (K, V)
  static constexpr int kSmemBytes = kSmemElems * 2;
  static constexpr int kMaskBytes = kBlockM * kBlockN * 4;  // float32 [queries, keys] mask tile
  static_assert(D % 64 == 0 && kBlockN % 16 == 0, "tile shapes");
};

// kDk / kDv: which of the two gradients this launch accumulates (both for head dims <= 128; for
// 256 one launch each, so the float32 accumulators of a warp's 16 keys fit in registers).
template <typename Tr, typename T, bool kDk, bool kDv>
__global__ void __launch_bounds__(Tr::kThreads, 1) attention_dkdv_kernel(const AttentionBackwardParams p, bool vec) {
  constexpr int D = Tr::D, BM = Tr::kBlockM, BN = Tr::kBlockN, MT = BM / 8, OT = D / 8;
  constexpr int KT = kDk ? OT : 2, VT = kDv ? OT : 2;  // unused accumulators stay minimal
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sK = reinterpret_cast<T*>(smem_raw);
  T* sV = sK + BN * D;
  T* sQ = sV + BN * D;       // [2][BM * D]
  T* sdO = sQ + 2 * BM * D;  // [2][BM * D]
  float* sLse = reinterpret_cast<float*>(sdO + 2 * BM * D);  // [2][BM]
  float* sDelta = sLse + 2 * BM;                              // [2][BM]
  float* sMask = sDelta + 2 * BM;                             // [BM * BN], with a mask only

  const AttentionShape& sh = p.shape;
  const int64_t kblocks = (sh.S + BN - 1) / BN;
  const int64_t nk = static_cast<int64_t>(blockIdx.x) / kblocks;
  const int64_t j0 = (static_cast<int64_t>(blockIdx.x) % kblocks) * BN;
  const int64_t n = nk / sh.Hkv, hk = nk % sh.Hkv, group = sh.H / sh.Hkv;
  const int E = static_cast<int>(sh.E), Ev = static_cast<int>(sh.Ev);
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;

  const T* k = static_cast<const T*>(p.k) + n * p.k_strides.n + hk * p.k_strides.h + j0 * p.k_strides.l;
  const T* v = static_cast<const T*>(p.v) + n * p.v_strides.n + hk * p.v_strides.h + j0 * p.v_strides.l;
  load_tile<T, BN, D, Tr::kThreads>(sK, TileSrc{k, p.k_strides.l, sh.S - j0, E}, vec);
  load_tile<T, BN, D, Tr::kThreads>(sV, TileSrc{v, p.v_strides.l, sh.S - j0, Ev}, vec);

  // Work list: query heads hk * group .. + group, query blocks qb0 .. (causal: queries i < j0
  // see none of these keys).
  const int64_t qb0 = sh.causal ? j0 / BM : 0;
  const int64_t nq = (sh.L + BM - 1) / BM - qb0;
  const int64_t items = nq > 0 ? group * nq : 0;
  auto load_q = [&](int64_t t, int stage) {
    const int64_t h = hk * group + t / nq, i0 = (qb0 + t % nq) * BM;
    const T* q = static_cast<const T*>(p.q) + n * p.q_strides.n + h * p.q_strides.h + i0 * p.q_strides.l;
    const T* g = static_cast<const T*>(p.dout) + n * p.dout_strides.n + h * p.dout_strides.h + i0 * p.dout_strides.l;
    load_tile<T, BM, D, Tr::kThreads>(sQ + stage * BM * D, TileSrc{q, p.q_strides.l, sh.L - i0, E}, vec);
    load_tile<T, BM, D, Tr::kThreads>(sdO + stage * BM * D, TileSrc{g, p.dout_strides.l, sh.L - i0, Ev}, vec);
    for (int r = threadIdx.x; r < BM; r += Tr::kThreads) {
      const int64_t row = (n * sh.H + h) * sh.L + i0 + r;
      const bool in = i0 + r < sh.L;
      sLse[stage * BM + r] = in ? p.lse[row] : -math::neg_infinity();  // +inf: p = 0
      sDelta[stage * BM + r] = in ? p.delta[row] : 0.0f;
    }
  };
  if (items > 0) load_q(0, 0);
  cp_async_commit();

  const Dropout drop(sh);
  const bool has_mask = p.mask.kind != MaskKind::kNone;
  float dk[KT][4], dv[VT][4];
  zero(dk);
  zero(dv);
  const int key0 = warp * 16;  // this warp's first key in the block

  for (int64_t t = 0; t < items; ++t) {
    const int stage = pipeline_step(t, items, load_q);
    const Head hd{n, hk * group + t / nq};
    const int64_t i0 = (qb0 + t % nq) * BM;
    if (has_mask) load_mask<T, BM, BN, Tr::kThreads>(sMask, sh, p.mask, hd, i0, j0);
    __syncthreads();
    const T* q_tile = sQ + stage * BM * D;
    const T* do_tile = sdO + stage * BM * D;
    const float* lse = sLse + stage * BM;
    const float* delta = sDelta + stage * BM;

    float st[MT][4], dpt[MT][4];  // S^T then P^T Z;  dP^T then dS^T
    zero(st);
    zero(dpt);
    gemm_rows<T, D, MT, D>(st, sK, key0, q_tile, 0, lane);
    if constexpr (kDk) gemm_rows<T, D, MT, D>(dpt, sV, key0, do_tile, 0, lane);
    const ScoreTile tile(sh, hd, i0, j0 + key0);  // rows of the fragments are keys
    const float* mcol = sMask + key0;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int c = frag_col(mt, e, lane), r = frag_row(e, lane);
        const float pe = exp_shifted(tile.score(st[mt][e], c, r, sh, has_mask, mcol + c * BN + r), lse[c]);
        const float z = drop.on ? drop.factor(tile.drop_index(c, r, sh)) : 1.0f;
        dpt[mt][e] = pe * (dpt[mt][e] * z - delta[c]);
        st[mt][e] = pe * z;
      }
    if constexpr (kDv) gemm_regs<T, D, OT, MT / 2>(dv, st, do_tile, 0, lane);
    if constexpr (kDk) gemm_regs<T, D, OT, MT / 2>(dk, dpt, q_tile, 0, lane);
    __syncthreads();
  }
  cp_async_wait<0>();

  const int64_t r0 = j0 + key0;
  T* dk_out = static_cast<T*>(p.dk) + ((n * sh.Hkv + hk) * sh.S + r0) * sh.E;
  T* dv_out = static_cast<T*>(p.dv) + ((n * sh.Hkv + hk) * sh.S + r0) * sh.Ev;
  if constexpr (kDk) store_rows<T, OT>(dk_out, sh.E, sh.S - r0, E, dk, sh.scale, sh.scale, vec, lane);
  if constexpr (kDv) store_rows<T, OT>(dv_out, sh.Ev, sh.S - r0, Ev, dv, 1.0f, 1.0f, vec, lane);
}

template <typename Tr, typename T>
__global__ void __launch_bounds__(Tr::kThreads, 1) attention_dq_kernel(const AttentionBackwardParams p, bool vec) {
  constexpr int D = Tr::D, BM = Tr::kBlockM, BN = Tr::kBlockN, NT = BN / 8, OT = D / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sdO = sQ + BM * D;
  T* sK = sdO + BM * D;      // [2][BN * D]
  T* sV = sK + 2 * BN * D;   // [2][BN * D]
  float* sMask = reinterpret_cast<float*>(sV + 2 * BN * D);  // [BM * BN], with a mask only

  const AttentionShape& sh = p.shape;
  const int64_t qblocks = (sh.L + BM - 1) / BM;
  const int64_t nh = static_cast<int64_t>(blockIdx.x) / qblocks;
  const int64_t i0 = (static_cast<int64_t>(blockIdx.x) % qblocks) * BM;
  const Head hd{nh / sh.H, nh % sh.H};
  const int64_t hk = hd.h / (sh.H / sh.Hkv);
  const int E = static_cast<int>(sh.E), Ev = static_cast<int>(sh.Ev);
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;

  const T* q = static_cast<const T*>(p.q) + hd.n * p.q_strides.n + hd.h * p.q_strides.h + i0 * p.q_strides.l;
  const T* g = static_cast<const T*>(p.dout) + hd.n * p.dout_strides.n + hd.h * p.dout_strides.h + i0 * p.dout_strides.l;
  const T* k = static_cast<const T*>(p.k) + hd.n * p.k_strides.n + hk * p.k_strides.h;
  const T* v = static_cast<const T*>(p.v) + hd.n * p.v_strides.n + hk * p.v_strides.h;
  const int64_t kend = sh.causal ? min(sh.S, i0 + BM) : sh.S;
  const int64_t nblocks = (kend + BN - 1) / BN;

  auto load_kv = [&](int64_t jb, int stage) {
    const int64_t j0 = jb * BN;
    load_tile<T, BN, D, Tr::kThreads>(sK + stage * BN * D, TileSrc{k + j0 * p.k_strides.l, p.k_strides.l, sh.S - j0, E}, vec);
    load_tile<T, BN, D, Tr::kThreads>(sV + stage * BN * D, TileSrc{v + j0 * p.v_strides.l, p.v_strides.l, sh.S - j0, Ev}, vec);
  };
  load_tile<T, BM, D, Tr::kThreads>(sQ, TileSrc{q, p.q_strides.l, sh.L - i0, E}, vec);
  load_tile<T, BM, D, Tr::kThreads>(sdO, TileSrc{g, p.dout_strides.l, sh.L - i0, Ev}, vec);
  if (nblocks > 0) load_kv(0, 0);
  cp_async_commit();

  const int row0 = warp * 16;
  float lse[2], delta[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t i = i0 + row0 + lane / 4 + 8 * r;
    const int64_t row = (hd.n * sh.H + hd.h) * sh.L + i;
    lse[r] = i < sh.L ? p.lse[row] : -math::neg_infinity();
    delta[r] = i < sh.L ? p.delta[row] : 0.0f;
  }
  const Dropout drop(sh);
  const bool has_mask = p.mask.kind != MaskKind::kNone;
  float dq[OT][4];
  zero(dq);

  for (int64_t jb = 0; jb < nblocks; ++jb) {
    const int stage = pipeline_step(jb, nblocks, load_kv);
    const int64_t j0 = jb * BN;
    if (has_mask) load_mask<T, BM, BN, Tr::kThreads>(sMask, sh, p.mask, hd, i0, j0);
    __syncthreads();
    const T* k_tile = sK + stage * BN * D;
    const T* v_tile = sV + stage * BN * D;

    float s[NT][4], dp[NT][4];  // S then unused;  dP then dS
    zero(s);
    zero(dp);
    gemm_rows<T, D, NT, D>(s, sQ, row0, k_tile, 0, lane);
    gemm_rows<T, D, NT, D>(dp, sdO, row0, v_tile, 0, lane);
    const ScoreTile tile(sh, hd, i0 + row0, j0);
    const float* mrow = sMask + row0 * BN;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = frag_row(e, lane), c = frag_col(nt, e, lane);
        const float pe = exp_shifted(tile.score(s[nt][e], r, c, sh, has_mask, mrow + r * BN + c), lse[e / 2]);
        const float z = drop.on ? drop.factor(tile.drop_index(r, c, sh)) : 1.0f;
        dp[nt][e] = pe * (dp[nt][e] * z - delta[e / 2]);
      }
    if (p.dmask != nullptr) {  // dS is the additive mask's gradient: float32 [N, H, L, S]
      float* dm = p.dmask + tile.drop_base;  // the element index of (i0 + row0, j0)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int r = frag_row(e, lane), c = frag_col(nt, e, lane);
          if (r < tile.li && c < tile.lj) dm[static_cast<int64_t>(r) * sh.S + c] = dp[nt][e];
        }
    }
    gemm_regs<T, D, OT, NT / 2>(dq, dp, k_tile, 0, lane);
    __syncthreads();
  }
  cp_async_wait<0>();

  const int64_t r0 = i0 + row0;
  T* dq_out = static_cast<T*>(p.dq) + ((hd.n * sh.H + hd.h) * sh.L + r0) * sh.E;
  store_rows<T, OT>(dq_out, sh.E, sh.L - r0, E, dq, sh.scale, sh.scale, vec, lane);
}

}  // namespace attn
}  // namespace cuda
}  // namespace fastops
