// Attention backward on the CPU (flash-attention), deterministic: no atomics, every gradient
// element is summed by one thread in a fixed order.
//
//   pass 1  D_i = sum_d dO_id O_id                                  items: (batch, head, query block)
//   pass 2  dK, dV of one key block of one kv head                  items: (batch, kv head, key block)
//           over its query heads and query blocks: P = exp(S - lse), dV += P^T dO,
//           dP = dO V^T, dS = P (dP - D), dK += dS^T (scale Q); dS is the additive mask's gradient
//           (with dropout Z: dV += (P Z / (1 - p))^T dO and dP = dO V^T Z / (1 - p))
//   pass 3  dQ of one block of kDqBlockM queries: dQ = scale * sum over key blocks of dS K
//                                                                   items: (batch, head, query block)
// Passes 2 and 3 both recompute the score tiles from q, k and the saved lse. When there are at
// least twice as many (batch, kv head) pairs as threads, a fused pass replaces 2 and 3: one item
// per kv head walks its key blocks and also accumulates dQ += dS K in a float32 [group, L, E]
// buffer, so each tile is recomputed once (5 GEMMs per tile instead of 7). Both orders are fixed:
// results are bitwise reproducible for a given shape and thread count.
#include <vector>

#include "attention_tile.h"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace fastops {
namespace cpu {
namespace {

using namespace attn;

// Queries per dQ work item: the K, K^T and V^T tiles are packed once per kDqBlockM queries.
// (dK/dV items walk the queries kBlockM at a time.)
constexpr int64_t kDqBlockM = 256;
static_assert(kDqBlockM >= kBlockM, "scratch tiles are sized for the larger query block");

struct BackwardScratch {
  int64_t Ep, Evp;
  Buffer q, dout, kt, vt, kb, s, dp, dk, dv, dq;
  BackwardScratch(int64_t E, int64_t Ev)
      : Ep(round_up(E, kPad)), Evp(round_up(Ev, kPad)), q(kDqBlockM * Ep), dout(kDqBlockM * Evp),
        kt(E * kBlockN), vt(Ev * kBlockN), kb(kBlockN * Ep), s(kDqBlockM * kBlockN), dp(kDqBlockM * kBlockN),
        dk(kBlockN * Ep), dv(kBlockN * Evp), dq(kDqBlockM * Ep) {}
};

struct Block {
  int64_t n, h, i0, rows;
};

// Work item `item` of the query blocks of `block` rows.
FASTOPS_FORCE_INLINE Block query_block(const AttentionShape& sh, int64_t item, int64_t block) {
  const int64_t qblocks = ceil_div(sh.L, block);
  const int64_t nh = item / qblocks;
  const int64_t i0 = (item % qblocks) * block;
  return Block{nh / sh.H, nh % sh.H, i0, std::min(block, sh.L - i0)};
}

// Loads the query-side tiles of a query block: scale * Q, dO, and views of lse and D.
template <typename T>
FASTOPS_FORCE_INLINE void load_query_block(const AttentionBackwardParams& p, const Block& b,
                                           BackwardScratch& w) {
  const AttentionShape& sh = p.shape;
  const T* q = static_cast<const T*>(p.q) + b.n * p.q_strides.n + b.h * p.q_strides.h + b.i0 * p.q_strides.l;
  const T* dout = static_cast<const T*>(p.dout) + b.n * p.dout_strides.n + b.h * p.dout_strides.h +
                  b.i0 * p.dout_strides.l;
  pack_rows(q, p.q_strides.l, b.rows, sh.E, sh.scale, w.q.get(), w.Ep, b.rows);
  pack_rows(dout, p.dout_strides.l, b.rows, sh.Ev, 1.0f, w.dout.get(), w.Evp, b.rows);
}

// P (in w.s; with dropout, the dropped and rescaled P) and dS (in w.dp) of one tile, given K^T and V^T of its key block in w.kt, w.vt.
template <typename T, int W>
FASTOPS_FORCE_INLINE void recompute_tile(const AttentionBackwardParams& p, const TileCoord& t,
                                         const float* lse, const float* delta, BackwardScratch& w) {
  const AttentionShape& sh = p.shape;
  float* s = w.s.get();
  float* dp = w.dp.get();
  std::fill(s, s + t.rows * kBlockN, 0.0f);
  gemm<W>(w.q.get(), w.Ep, 1, w.kt.get(), kBlockN, s, kBlockN, t.rows, kBlockN, sh.E);
  mask_scores<T>(s, t, sh.causal, p.mask);
  probabilities(s, lse, t.rows);
  std::fill(dp, dp + t.rows * kBlockN, 0.0f);
  gemm<W>(w.dout.get(), w.Evp, 1, w.vt.get(), kBlockN, dp, kBlockN, t.rows, kBlockN, sh.Ev);
  if (sh.dropout_p > 0.0f) apply_dropout(dp, t, sh);  // dP of the undropped P: dO V^T * Z / (1 - p)
  for (int64_t r = 0; r < t.rows; ++r) {
    const float d = delta[r];
#pragma omp simd
    for (int64_t c = 0; c < kBlockN; ++c) dp[r * kBlockN + c] = s[r * kBlockN + c] * (dp[r * kBlockN + c] - d);
  }
  if (sh.dropout_p > 0.0f) apply_dropout(s, t, sh);  // w.s now holds the dropped P (for dV)
}

// ---- pass 1: D = rowsum(dO * O) --------------------------------------------------------------

template <typename T>
FASTOPS_FORCE_INLINE void delta_item(const AttentionBackwardParams& p, int64_t item, float* delta) {
  const AttentionShape& sh = p.shape;
  const Block b = query_block(sh, item, kBlockM);
  for (int64_t r = 0; r < b.rows; ++r) {
    const int64_t i = b.i0 + r;
    const T* o = static_cast<const T*>(p.out) + b.n * p.out_strides.n + b.h * p.out_strides.h + i * p.out_strides.l;
    const T* g = static_cast<const T*>(p.dout) + b.n * p.dout_strides.n + b.h * p.dout_strides.h +
                 i * p.dout_strides.l;
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int64_t d = 0; d < sh.Ev; ++d) acc += to_float(o[d]) * to_float(g[d]);
    delta[(b.n * sh.H + b.h) * sh.L + i] = acc;
  }
}

// ---- pass 2: dK, dV of one key block ---------------------------------------------------------

// dK, dV of key block j0 of kv head (n, hk) over its query heads and query blocks, written to
// p.dk / p.dv (and dS to p.dmask). With dq_acc (float32 [group, L, Ep]) it also adds dS K into
// it: the fused path, which then needs no pass 3.
template <typename T, int W>
FASTOPS_FORCE_INLINE void key_block(const AttentionBackwardParams& p, int64_t n, int64_t hk, int64_t j0,
                                    const float* delta, BackwardScratch& w, float* dq_acc) {
  const AttentionShape& sh = p.shape;
  const int64_t group = sh.H / sh.Hkv;
  const int64_t cols = std::min(kBlockN, sh.S - j0);
  const T* k = static_cast<const T*>(p.k) + n * p.k_strides.n + hk * p.k_strides.h + j0 * p.k_strides.l;
  const T* v = static_cast<const T*>(p.v) + n * p.v_strides.n + hk * p.v_strides.h + j0 * p.v_strides.l;
  pack_transposed(k, p.k_strides.l, cols, sh.E, w.kt.get(), kBlockN);
  pack_transposed(v, p.v_strides.l, cols, sh.Ev, w.vt.get(), kBlockN);
  if (dq_acc != nullptr) pack_rows(k, p.k_strides.l, cols, sh.E, 1.0f, w.kb.get(), w.Ep, kBlockN);
  std::fill(w.dk.get(), w.dk.get() + kBlockN * w.Ep, 0.0f);
  std::fill(w.dv.get(), w.dv.get() + kBlockN * w.Evp, 0.0f);
  const int64_t qb0 = sh.causal ? j0 / kBlockM : 0;  // causal: queries i < j0 see none of these keys
  for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
    for (int64_t i0 = qb0 * kBlockM; i0 < sh.L; i0 += kBlockM) {
      const Block b{n, h, i0, std::min(kBlockM, sh.L - i0)};
      load_query_block<T>(p, b, w);
      const int64_t row0 = (n * sh.H + h) * sh.L + i0;
      const TileCoord t{n, h, i0, j0, b.rows, cols};
      recompute_tile<T, W>(p, t, p.lse + row0, delta + row0, w);
      // dV += P^T dO, dK += dS^T (scale Q): the GEMM reads P and dS transposed (A strides 1, kBlockN)
      gemm<W>(w.s.get(), 1, kBlockN, w.dout.get(), w.Evp, w.dv.get(), w.Evp, cols, w.Evp, b.rows);
      gemm<W>(w.dp.get(), 1, kBlockN, w.q.get(), w.Ep, w.dk.get(), w.Ep, cols, w.Ep, b.rows);
      if (dq_acc != nullptr) {
        float* dq_rows = dq_acc + ((h - hk * group) * sh.L + i0) * w.Ep;
        gemm<W>(w.dp.get(), kBlockN, 1, w.kb.get(), w.Ep, dq_rows, w.Ep, b.rows, w.Ep, cols);
      }
      if (p.dmask != nullptr) {
        for (int64_t r = 0; r < b.rows; ++r)
          std::copy(w.dp.get() + r * kBlockN, w.dp.get() + r * kBlockN + cols,
                    p.dmask + ((row0 + r) * sh.S + j0));
      }
    }
  }
  T* dk = static_cast<T*>(p.dk) + ((n * sh.Hkv + hk) * sh.S + j0) * sh.E;
  T* dv = static_cast<T*>(p.dv) + ((n * sh.Hkv + hk) * sh.S + j0) * sh.Ev;
  for (int64_t c = 0; c < cols; ++c) {
#pragma omp simd
    for (int64_t d = 0; d < sh.E; ++d) dk[c * sh.E + d] = from_float<T>(w.dk.get()[c * w.Ep + d]);
#pragma omp simd
    for (int64_t d = 0; d < sh.Ev; ++d) dv[c * sh.Ev + d] = from_float<T>(w.dv.get()[c * w.Evp + d]);
  }
}

template <typename T, int W>
FASTOPS_FORCE_INLINE void dkdv_item(const AttentionBackwardParams& p, int64_t item, const float* delta,
                                    BackwardScratch& w) {
  const int64_t kblocks = ceil_div(p.shape.S, kBlockN);
  const int64_t nk = item / kblocks;
  key_block<T, W>(p, nk / p.shape.Hkv, nk % p.shape.Hkv, (item % kblocks) * kBlockN, delta, w, nullptr);
}

// ---- fused path: one kv head per item, dQ accumulated across its key blocks in float32 ---------

template <typename T, int W>
FASTOPS_FORCE_INLINE void head_item(const AttentionBackwardParams& p, int64_t item, const float* delta,
                                    BackwardScratch& w) {
  const AttentionShape& sh = p.shape;
  const int64_t n = item / sh.Hkv, hk = item % sh.Hkv, group = sh.H / sh.Hkv;
  Buffer dq_acc(group * sh.L * w.Ep);
  std::fill(dq_acc.get(), dq_acc.get() + group * sh.L * w.Ep, 0.0f);
  for (int64_t j0 = 0; j0 < sh.S; j0 += kBlockN) key_block<T, W>(p, n, hk, j0, delta, w, dq_acc.get());
  T* dq = static_cast<T*>(p.dq) + (n * sh.H + hk * group) * sh.L * sh.E;
  for (int64_t r = 0; r < group * sh.L; ++r) {
#pragma omp simd
    for (int64_t d = 0; d < sh.E; ++d) dq[r * sh.E + d] = from_float<T>(sh.scale * dq_acc.get()[r * w.Ep + d]);
  }
}

// ---- pass 3: dQ of one query block -----------------------------------------------------------

template <typename T, int W>
FASTOPS_FORCE_INLINE void dq_item(const AttentionBackwardParams& p, int64_t item, const float* delta,
                                  BackwardScratch& w) {
  const AttentionShape& sh = p.shape;
  const Block b = query_block(sh, item, kDqBlockM);
  const int64_t hk = b.h / (sh.H / sh.Hkv);
  const int64_t row0 = (b.n * sh.H + b.h) * sh.L + b.i0;
  load_query_block<T>(p, b, w);
  std::fill(w.dq.get(), w.dq.get() + b.rows * w.Ep, 0.0f);
  const T* k = static_cast<const T*>(p.k) + b.n * p.k_strides.n + hk * p.k_strides.h;
  const T* v = static_cast<const T*>(p.v) + b.n * p.v_strides.n + hk * p.v_strides.h;
  const int64_t kend = key_end(b.i0, b.rows, sh.S, sh.causal);
  for (int64_t j0 = 0; j0 < kend; j0 += kBlockN) {
    const int64_t cols = std::min(kBlockN, kend - j0);
    pack_transposed(k + j0 * p.k_strides.l, p.k_strides.l, cols, sh.E, w.kt.get(), kBlockN);
    pack_transposed(v + j0 * p.v_strides.l, p.v_strides.l, cols, sh.Ev, w.vt.get(), kBlockN);
    pack_rows(k + j0 * p.k_strides.l, p.k_strides.l, cols, sh.E, 1.0f, w.kb.get(), w.Ep, kBlockN);
    recompute_tile<T, W>(p, TileCoord{b.n, b.h, b.i0, j0, b.rows, cols}, p.lse + row0, delta + row0, w);
    gemm<W>(w.dp.get(), kBlockN, 1, w.kb.get(), w.Ep, w.dq.get(), w.Ep, b.rows, w.Ep, kBlockN);
  }
  T* dq = static_cast<T*>(p.dq) + row0 * sh.E;
  for (int64_t r = 0; r < b.rows; ++r) {
#pragma omp simd
    for (int64_t d = 0; d < sh.E; ++d) dq[r * sh.E + d] = from_float<T>(sh.scale * w.dq.get()[r * w.Ep + d]);
  }
}

int64_t max_threads() {
#if defined(_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// ---- ISA entries ------------------------------------------------------------------------------

template <typename T>
using Entry = void (*)(const AttentionBackwardParams&, int64_t, const float*, BackwardScratch&);

#define FASTOPS_ATTENTION_ENTRIES(name)                                                                  \
  template <typename T>                                                                                \
  FASTOPS_TARGET_AVX512 void name##_avx512(const AttentionBackwardParams& p, int64_t i, const float* d, \
                                           BackwardScratch& w) {                                       \
    name##_item<T, 16>(p, i, d, w);                                                                    \
  }                                                                                                    \
  template <typename T>                                                                                \
  FASTOPS_TARGET_AVX2 void name##_avx2(const AttentionBackwardParams& p, int64_t i, const float* d,     \
                                       BackwardScratch& w) {                                           \
    name##_item<T, 8>(p, i, d, w);                                                                     \
  }                                                                                                    \
  template <typename T>                                                                                \
  FASTOPS_TARGET_BASELINE void name##_baseline(const AttentionBackwardParams& p, int64_t i,            \
                                               const float* d, BackwardScratch& w) {                   \
    name##_item<T, 4>(p, i, d, w);                                                                     \
  }

FASTOPS_ATTENTION_ENTRIES(dkdv)
FASTOPS_ATTENTION_ENTRIES(dq)
FASTOPS_ATTENTION_ENTRIES(head)
#undef FASTOPS_ATTENTION_ENTRIES

template <typename T>
void backward_typed(const AttentionBackwardParams& p) {
  const AttentionShape& sh = p.shape;
  const int64_t qitems = sh.N * sh.H * ceil_div(sh.L, kBlockM);
  std::vector<float> delta(sh.N * sh.H * sh.L);
  const int64_t work = sh.N * sh.H * sh.L * sh.S * (sh.E + sh.Ev);
#pragma omp parallel for schedule(static) if (work >= kParallelMinWork)
  for (int64_t i = 0; i < qitems; ++i) delta_item<T>(p, i, delta.data());
  const auto make = [&] { return BackwardScratch(sh.E, sh.Ev); };
  if (sh.N * sh.Hkv >= 2 * max_threads()) {  // enough kv heads to keep every thread busy: fused
    const auto head = select_isa<Entry<T>>(head_baseline<T>, head_avx2<T>, head_avx512<T>);
    parallel_items(sh.N * sh.Hkv, work, make, [&](int64_t i, BackwardScratch& w) { head(p, i, delta.data(), w); });
    return;
  }
  const auto dkdv = select_isa<Entry<T>>(dkdv_baseline<T>, dkdv_avx2<T>, dkdv_avx512<T>);
  parallel_items(sh.N * sh.Hkv * ceil_div(sh.S, kBlockN), work, make,
                 [&](int64_t i, BackwardScratch& w) { dkdv(p, i, delta.data(), w); });
  const auto dq = select_isa<Entry<T>>(dq_baseline<T>, dq_avx2<T>, dq_avx512<T>);
  parallel_items(sh.N * sh.H * ceil_div(sh.L, kDqBlockM), work, make, [&](int64_t i, BackwardScratch& w) { dq(p, i, delta.data(), w); });
}

}  // namespace

void attention_backward(const AttentionBackwardParams& p) {
  switch (p.shape.dtype) {
    case DType::kFloat32: return backward_typed<float>(p);
    case DType::kFloat16: return backward_typed<Half>(p);
    case DType::kBFloat16: return backward_typed<BFloat16>(p);
  }
}

}  // namespace cpu
}  // namespace fastops
