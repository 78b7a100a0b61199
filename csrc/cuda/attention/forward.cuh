// Flash-attention forward kernel (FlashAttention-2 scheme) on tensor cores.
//
// One CTA per (query block of kBlockM rows, query head h, batch n); grid.x enumerates
// ((n * H + h) * qblocks + qb), so consecutive CTAs share a head's K and V in L2. Each warp owns
// 16 query rows (kBlockM = 16 * kWarps). The Q tile stays in shared memory; K and V tiles of
// kBlockN keys are double buffered (cp.async: block j + 1 loads while block j is computed).
// Per key block and warp: S = Q K^T (mma, float32), masking, online softmax in registers
// (row max / sum across the 4 lanes of a quad), O = O * alpha + P V with P converted to the
// A-operand fragments in registers. Causal: key blocks past the block's last query are skipped.
// Epilogue: O / l stored as T, lse = m + log l (+inf and O = 0 for a row without unmasked key).
#pragma once

#include "cuda/attention/tiles.cuh"
#include "cuda/attention/scores.cuh"

namespace fastops {
namespace cuda {
namespace attn {

// D: head-dim bucket (E and Ev <= D, padded with zeros in shared memory).
template <int D_, int kWarps_, int kBlockN_>
struct ForwardTraits {
  static constexpr int D = D_;
  static constexpr int kWarps = kWarps_;
  static constexpr int kThreads = kWarps * kWarpSize;
  static constexpr int kBlockM = 16 * kWarps;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kSmemElems = kBlockM * D + 4 * kBlockN * D;  // Q + 2 x (K, V)
  static constexpr int kMaskBytes = kBlockM * kBlockN * 4;           // float32 mask tile, when masked
  static_assert(D % 64 == 0 && kBlockN % 16 == 0, "tile shapes");
};

template <typename Tr, typename T>
__global__ void __launch_bounds__(Tr::kThreads, 1) attention_forward_kernel(const AttentionForwardParams p, bool vec) {
  constexpr int D = Tr::D, BM = Tr::kBlockM, BN = Tr::kBlockN, NT = BN / 8, OT = D / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sK = sQ + BM * D;          // [2][BN * D]
  T* sV = sK + 2 * BN * D;      // [2][BN * D]
  float* sMask = reinterpret_cast<float*>(sV + 2 * BN * D);  // [BM * BN], with a mask only

  const AttentionShape& sh = p.shape;
  const int64_t qblocks = (sh.L + BM - 1) / BM;
  const int64_t nh = static_cast<int64_t>(blockIdx.x) / qblocks;
  const int64_t i0 = (static_cast<int64_t>(blockIdx.x) % qblocks) * BM;
  const Head hd{nh / sh.H, nh % sh.H};
  const int64_t hk = hd.h / (sh.H / sh.Hkv);
  const T* q = static_cast<const T*>(p.q) + hd.n * p.q_strides.n + hd.h * p.q_strides.h + i0 * p.q_strides.l;
  const T* k = static_cast<const T*>(p.k) + hd.n * p.k_strides.n + hk * p.k_strides.h;
  const T* v = static_cast<const T*>(p.v) + hd.n * p.v_strides.n + hk * p.v_strides.h;

  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int E = static_cast<int>(sh.E), Ev = static_cast<int>(sh.Ev);
  const int64_t kend = sh.causal ? min(sh.S, i0 + BM) : sh.S;
  const int64_t nblocks = (kend + BN - 1) / BN;

  auto load_kv = [&](int64_t jb, int stage) {
    const int64_t j0 = jb * BN;
    load_tile<T, BN, D, Tr::kThreads>(sK + stage * BN * D, TileSrc{k + j0 * p.k_strides.l, p.k_strides.l, sh.S - j0, E}, vec);
    load_tile<T, BN, D, Tr::kThreads>(sV + stage * BN * D, TileSrc{v + j0 * p.v_strides.l, p.v_strides.l, sh.S - j0, Ev}, vec);
  };
  load_tile<T, BM, D, Tr::kThreads>(sQ, TileSrc{q, p.q_strides.l, sh.L - i0, E}, vec);
  if (nblocks > 0) load_kv(0, 0);
  cp_async_commit();

  const Dropout drop(sh);
  const bool has_mask = p.mask.kind != MaskKind::kNone;
  float o[OT][4];
  zero(o);
  float m[2] = {math::neg_infinity(), math::neg_infinity()};
  float l[2] = {0.0f, 0.0f};  // partial sums of this lane's columns; summed over the quad at the end
  const int row0 = warp * 16;

  for (int64_t jb = 0; jb < nblocks; ++jb) {
    const int stage = pipeline_step(jb, nblocks, load_kv);
    const int64_t j0 = jb * BN;
    if (has_mask) load_mask<T, BM, BN, Tr::kThreads>(sMask, sh, p.mask, hd, i0, j0);
    __syncthreads();
    const T* k_tile = sK + stage * BN * D;
    const T* v_tile = sV + stage * BN * D;

    float s[NT][4];
    zero(s);
    gemm_rows<T, D, NT, D>(s, sQ, row0, k_tile, 0, lane);

    const ScoreTile tile(sh, hd, i0 + row0, j0);
    const float* mrow = sMask + row0 * BN;
    float row_max[2] = {math::neg_infinity(), math::neg_infinity()};
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = frag_row(e, lane), c = frag_col(nt, e, lane);
        s[nt][e] = tile.score(s[nt][e], r, c, sh, has_mask, mrow + r * BN + c);
        row_max[e / 2] = fmaxf(row_max[e / 2], s[nt][e]);
      }
    float alpha[2], shift[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float m_new = fmaxf(m[r], quad_max(row_max[r]));
      alpha[r] = math::rescale(m[r], m_new);
      shift[r] = m_new == math::neg_infinity() ? 0.0f : m_new;  // all masked so far: p = 0
      m[r] = m_new;
      l[r] *= alpha[r];
    }
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float pe = exp_shifted(s[nt][e], shift[e / 2]);
        l[e / 2] += pe;
        s[nt][e] = pe;
        if (drop.on) s[nt][e] = pe * drop.factor(tile.drop_index(frag_row(e, lane), frag_col(nt, e, lane), sh));
      }
#pragma unroll
    for (int ot = 0; ot < OT; ++ot)
#pragma unroll
      for (int e = 0; e < 4; ++e) o[ot][e] *= alpha[e / 2];
    gemm_regs<T, D, OT, NT / 2>(o, s, v_tile, 0, lane);
    __syncthreads();  // the next iteration's prefetch overwrites this stage
  }
  cp_async_wait<0>();

  float inv[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float lsum = quad_sum(l[r]);
    inv[r] = lsum == 0.0f ? 0.0f : 1.0f / lsum;
    const int64_t i = i0 + row0 + lane / 4 + 8 * r;
    if (lane % 4 == 0 && i < sh.L)
      p.lse[(hd.n * sh.H + hd.h) * sh.L + i] = lsum == 0.0f ? -math::neg_infinity() : m[r] + logf(lsum);
  }
  const int64_t r0 = i0 + row0;
  T* out = static_cast<T*>(p.out) + hd.n * p.out_strides.n + hd.h * p.out_strides.h + r0 * p.out_strides.l;
  store_rows<T, OT>(out, p.out_strides.l, sh.L - r0, Ev, o, inv[0], inv[1], vec, lane);
}

}  // namespace attn
}  // namespace cuda
}  // namespace fastops
