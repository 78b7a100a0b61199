// Attention forward on the CPU (flash-attention): one work item is one [kForwardBlockM] block of
// queries of one (batch, head); it walks the key blocks with an online softmax, so the L x S
// score matrix never exists beyond one [kForwardBlockM, kBlockN] tile. Saves lse per query row.
//
// Per key block: S = (scale Q) K^T (+ mask), m' = max(m, rowmax S), P = exp(S - m'),
// l = l exp(m - m') + rowsum P, O = O exp(m - m') + P V; at the end out = O / l and
// lse = m + log l (+inf and out = 0 for a row with no unmasked key, as torch). Dropout zeroes and
// rescales P after l is summed (math/dropout.h), so lse is that of the undropped scores.
#include "attention_tile.h"

namespace fastops {
namespace cpu {
namespace {

using namespace attn;

// Queries per work item: K^T and V tiles are packed once per kForwardBlockM queries.
constexpr int64_t kForwardBlockM = 128;

struct ForwardScratch {
  int64_t Ep, Evp;
  Buffer q, kt, v, s, o, m, l;
  ForwardScratch(int64_t E, int64_t Ev)
      : Ep(round_up(E, kPad)), Evp(round_up(Ev, kPad)), q(kForwardBlockM * Ep), kt(E * kBlockN),
        v(kBlockN * Evp), s(kForwardBlockM * kBlockN), o(kForwardBlockM * Evp), m(kForwardBlockM), l(kForwardBlockM) {}
};

// Online-softmax update of one score tile (rows x kBlockN, in place to P) for running (m, l),
// rescaling the output rows accumulated so far.
FASTOPS_FORCE_INLINE void online_softmax(float* s, float* o, int64_t ldo, float* m, float* l, int64_t rows) {
  for (int64_t r = 0; r < rows; ++r) {
    float* sr = s + r * kBlockN;
    const float m_new = std::max(m[r], row_max(sr));
    const float alpha = math::rescale(m[r], m_new);
    const float shift = m_new == math::neg_infinity() ? 0.0f : m_new;  // all masked so far: p = 0
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t c = 0; c < kBlockN; ++c) {
      const float p = math::exp_f32(sr[c] - shift);
      sr[c] = p;
      sum += p;
    }
    l[r] = l[r] * alpha + sum;
    m[r] = m_new;
    if (alpha == 1.0f) continue;  // running max unchanged: nothing to rescale
    float* orow = o + r * ldo;
#pragma omp simd
    for (int64_t d = 0; d < ldo; ++d) orow[d] *= alpha;
  }
}

template <typename T, int W>
FASTOPS_FORCE_INLINE void forward_item(const AttentionForwardParams& p, int64_t item, ForwardScratch& w) {
  const AttentionShape& sh = p.shape;
  const int64_t qblocks = ceil_div(sh.L, kForwardBlockM);
  const int64_t nh = item / qblocks;
  const int64_t n = nh / sh.H, h = nh % sh.H, hk = h / (sh.H / sh.Hkv);
  const int64_t i0 = (item % qblocks) * kForwardBlockM;
  const int64_t rows = std::min(kForwardBlockM, sh.L - i0);
  const T* q = static_cast<const T*>(p.q) + n * p.q_strides.n + h * p.q_strides.h + i0 * p.q_strides.l;
  const T* k = static_cast<const T*>(p.k) + n * p.k_strides.n + hk * p.k_strides.h;
  const T* v = static_cast<const T*>(p.v) + n * p.v_strides.n + hk * p.v_strides.h;

  pack_rows(q, p.q_strides.l, rows, sh.E, sh.scale, w.q.get(), w.Ep, rows);
  std::fill(w.o.get(), w.o.get() + rows * w.Evp, 0.0f);
  std::fill(w.m.get(), w.m.get() + rows, math::neg_infinity());
  std::fill(w.l.get(), w.l.get() + rows, 0.0f);
  const int64_t kend = key_end(i0, rows, sh.S, sh.causal);
  for (int64_t j0 = 0; j0 < kend; j0 += kBlockN) {
    const int64_t cols = std::min(kBlockN, kend - j0);
    pack_transposed(k + j0 * p.k_strides.l, p.k_strides.l, cols, sh.E, w.kt.get(), kBlockN);
    pack_rows(v + j0 * p.v_strides.l, p.v_strides.l, cols, sh.Ev, 1.0f, w.v.get(), w.Evp, kBlockN);
    std::fill(w.s.get(), w.s.get() + rows * kBlockN, 0.0f);
    gemm<W>(w.q.get(), w.Ep, 1, w.kt.get(), kBlockN, w.s.get(), kBlockN, rows, kBlockN, sh.E);
    mask_scores<T>(w.s.get(), TileCoord{n, h, i0, j0, rows, cols}, sh.causal, p.mask);
    online_softmax(w.s.get(), w.o.get(), w.Evp, w.m.get(), w.l.get(), rows);
    if (sh.dropout_p > 0.0f) apply_dropout(w.s.get(), TileCoord{n, h, i0, j0, rows, cols}, sh);
    gemm<W>(w.s.get(), kBlockN, 1, w.v.get(), w.Evp, w.o.get(), w.Evp, rows, w.Evp, kBlockN);
  }
  T* out = static_cast<T*>(p.out) + n * p.out_strides.n + h * p.out_strides.h + i0 * p.out_strides.l;
  float* lse = p.lse + (n * sh.H + h) * sh.L + i0;
  for (int64_t r = 0; r < rows; ++r) {
    const float l = w.l.get()[r];
    const float inv = l == 0.0f ? 0.0f : 1.0f / l;
    const float* orow = w.o.get() + r * w.Evp;
    T* dst = out + r * p.out_strides.l;
#pragma omp simd
    for (int64_t d = 0; d < sh.Ev; ++d) dst[d] = from_float<T>(orow[d] * inv);
    lse[r] = l == 0.0f ? -math::neg_infinity() : w.m.get()[r] + std::log(l);
  }
}

template <typename T>
using ForwardEntry = void (*)(const AttentionForwardParams&, int64_t, ForwardScratch&);

template <typename T>
FASTOPS_TARGET_AVX512 void forward_avx512(const AttentionForwardParams& p, int64_t i, ForwardScratch& w) {
  forward_item<T, 16>(p, i, w);
}
template <typename T>
FASTOPS_TARGET_AVX2 void forward_avx2(const AttentionForwardParams& p, int64_t i, ForwardScratch& w) {
  forward_item<T, 8>(p, i, w);
}
template <typename T>
FASTOPS_TARGET_BASELINE void forward_baseline(const AttentionForwardParams& p, int64_t i, ForwardScratch& w) {
  forward_item<T, 4>(p, i, w);
}

template <typename T>
void forward_typed(const AttentionForwardParams& p) {
  const auto fn = select_isa<ForwardEntry<T>>(forward_baseline<T>, forward_avx2<T>, forward_avx512<T>);
  const AttentionShape& sh = p.shape;
  parallel_items(
      sh.N * sh.H * ceil_div(sh.L, kForwardBlockM), sh.N * sh.H * sh.L * sh.S * (sh.E + sh.Ev),
      [&] { return ForwardScratch(sh.E, sh.Ev); },
      [&](int64_t i, ForwardScratch& w) { fn(p, i, w); });
}

}  // namespace

void attention_forward(const AttentionForwardParams& p) {
  const AttentionShape& sh = p.shape;
  if (sh.N * sh.H * sh.L == 0) return;
  switch (sh.dtype) {
    case DType::kFloat32: return forward_typed<float>(p);
    case DType::kFloat16: return forward_typed<Half>(p);
    case DType::kBFloat16: return forward_typed<BFloat16>(p);
  }
}

}  // namespace cpu
}  // namespace fastops
