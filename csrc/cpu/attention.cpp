// Attention forward on the CPU (flash-attention): one work item is one [kForwardBlockM] block of
// queries of one (batch, head); it walks the key blocks with an online softmax, so the L x S
// score matrix never exists beyond one [kForwardBlockM, kBlockN] tile. Saves lse per query row.
//
// Per key block: S = scale Q K^T (+ mask), m' = max(m, rowmax S), P = exp(S - m'),
// l = l exp(m - m') + rowsum P, O = O exp(m - m') + P V; at the end out = O / l and
// lse = m + log l (+inf and out = 0 for a row with no unmasked key, as torch). Dropout zeroes and
// rescales P after l is summed (math/dropout.h), so lse is that of the undropped scores.
//
// K^T and V are packed once per call for every (batch, kv head) into the GEMM's B layout, before
// the query blocks run, so every query block reads ready panels. Two GEMM kinds
// (attention_tile.h): float32 FMA (scale folded into the packed Q), and, for bfloat16 on a CPU
// with AVX512-BF16, `vdpbf16ps` on bfloat16 pairs: Q K^T sums exact bfloat16 products in
// float32 (scaled afterwards), and P is rounded to bfloat16 for P V (as torch's CPU kernel does).
#include <type_traits>

#include "attention_tile.h"

namespace fastops {
namespace cpu {
namespace {

using namespace attn;

// Queries per work item.
constexpr int64_t kForwardBlockM = 128;

// Elements per packed k step: 1 float, or a pair of bfloat16 in 32 bits.
template <typename Kd>
constexpr int64_t kPerElem = std::is_same_v<typename Kd::Elem, float> ? 1 : 2;

// Packed K^T and V of every (batch, kv head): per key block of kBlockN keys, kt [Eq][kBlockN]
// then v [kBlockN / per][Evp] (per = 1 float or 2 pairs along the keys), zero-padded.
template <typename Kd>
struct KVLayout {
  int64_t Eq, Evp, kt_block, v_block, kblocks, head;
  KVLayout(const AttentionShape& sh)
      : Eq(ceil_div(sh.E, kPerElem<Kd>)), Evp(round_up(sh.Ev, kPad)), kt_block(Eq * kBlockN),
        v_block(kBlockN / kPerElem<Kd> * Evp), kblocks(ceil_div(sh.S, kBlockN)),
        head(kblocks * (kt_block + v_block)) {}
};

struct ForwardScratch {
  int64_t Ep, Evp;
  Buffer q, s, pp, o, m, l;
  ForwardScratch(int64_t E, int64_t Ev)
      : Ep(round_up(E, kPad)), Evp(round_up(Ev, kPad)), q(kForwardBlockM * Ep), s(kForwardBlockM * kBlockN),
        pp(kForwardBlockM * kBlockN / 2), o(kForwardBlockM * Evp), m(kForwardBlockM), l(kForwardBlockM) {}
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
      const float p = math::exp_f32_nonpositive(sr[c] - shift);  // sr[c] <= shift
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

// 32-bit word of two bfloat16: lo | hi << 16.
FASTOPS_FORCE_INLINE uint32_t pair_bits(uint16_t lo, uint16_t hi) {
  return static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
}
FASTOPS_FORCE_INLINE uint16_t bits16(BFloat16 x) { return x.bits; }
FASTOPS_FORCE_INLINE uint16_t bits16(float x) { return from_float<BFloat16>(x).bits; }

// The forward of storage type T with GEMM kind Kd.
template <typename T, typename Kd>
struct Forward {
  static constexpr bool kPairs = !std::is_same_v<typename Kd::Elem, float>;
  using E = typename Kd::Elem;

  // Packs K^T and V of key block jb of (n, hk) into dst (KVLayout).
  FASTOPS_FORCE_INLINE static void pack_kv(const AttentionForwardParams& p, const KVLayout<Kd>& lay, int64_t n,
                                           int64_t hk, int64_t jb, E* dst) {
    const AttentionShape& sh = p.shape;
    const int64_t j0 = jb * kBlockN, cols = std::min(kBlockN, sh.S - j0);
    const T* k = static_cast<const T*>(p.k) + n * p.k_strides.n + hk * p.k_strides.h + j0 * p.k_strides.l;
    const T* v = static_cast<const T*>(p.v) + n * p.v_strides.n + hk * p.v_strides.h + j0 * p.v_strides.l;
    E* kt = dst;
    E* vp = dst + lay.kt_block;
    if constexpr (!kPairs) {
      pack_transposed(k, p.k_strides.l, cols, sh.E, kt, kBlockN);
      pack_rows(v, p.v_strides.l, cols, sh.Ev, 1.0f, vp, lay.Evp, kBlockN);
    } else {
      // kt[q][j] = (K[j, 2q], K[j, 2q + 1]); vp[i][d] = (V[2i, d], V[2i + 1, d])
      std::fill(kt, kt + lay.kt_block, 0u);
      for (int64_t j = 0; j < cols; ++j) {
        const T* row = k + j * p.k_strides.l;
        for (int64_t q = 0; q < sh.E / 2; ++q) kt[q * kBlockN + j] = pair_bits(bits16(row[2 * q]), bits16(row[2 * q + 1]));
        if (sh.E % 2) kt[(sh.E / 2) * kBlockN + j] = pair_bits(bits16(row[sh.E - 1]), 0);
      }
      std::fill(vp, vp + lay.v_block, 0u);
      for (int64_t i = 0; 2 * i < cols; ++i) {
        const T* r0 = v + 2 * i * p.v_strides.l;
        const T* r1 = r0 + p.v_strides.l;
        uint32_t* d = vp + i * lay.Evp;
        if (2 * i + 1 < cols) {
#pragma omp simd
          for (int64_t c = 0; c < sh.Ev; ++c) d[c] = pair_bits(bits16(r0[c]), bits16(r1[c]));
        } else {
          for (int64_t c = 0; c < sh.Ev; ++c) d[c] = pair_bits(bits16(r0[c]), 0);
        }
      }
    }
  }

  // kv holds the packed heads from (batch * Hkv + kv head) number `first` on.
  FASTOPS_FORCE_INLINE static void item(const AttentionForwardParams& p, const KVLayout<Kd>& lay, const E* kv,
                                        int64_t first, int64_t item, ForwardScratch& w) {
    const AttentionShape& sh = p.shape;
    const int64_t qblocks = ceil_div(sh.L, kForwardBlockM);
    const int64_t nh = item / qblocks;
    const int64_t n = nh / sh.H, h = nh % sh.H, hk = h / (sh.H / sh.Hkv);
    const int64_t i0 = (item % qblocks) * kForwardBlockM;
    const int64_t rows = std::min(kForwardBlockM, sh.L - i0);
    const T* q = static_cast<const T*>(p.q) + n * p.q_strides.n + h * p.q_strides.h + i0 * p.q_strides.l;
    const E* head = kv + (n * sh.Hkv + hk - first) * lay.head;

    E* qt = reinterpret_cast<E*>(w.q.get());
    if constexpr (!kPairs) {
      pack_rows(q, p.q_strides.l, rows, sh.E, sh.scale, qt, w.Ep, rows);
    } else {
      for (int64_t r = 0; r < rows; ++r) {
        const T* row = q + r * p.q_strides.l;
        for (int64_t c = 0; c < sh.E / 2; ++c) qt[r * lay.Eq + c] = pair_bits(bits16(row[2 * c]), bits16(row[2 * c + 1]));
        if (sh.E % 2) qt[r * lay.Eq + sh.E / 2] = pair_bits(bits16(row[sh.E - 1]), 0);
      }
    }
    const int64_t ldq = kPairs ? lay.Eq : w.Ep;
    std::fill(w.o.get(), w.o.get() + rows * w.Evp, 0.0f);
    std::fill(w.m.get(), w.m.get() + rows, math::neg_infinity());
    std::fill(w.l.get(), w.l.get() + rows, 0.0f);
    const int64_t kend = key_end(i0, rows, sh.S, sh.causal);
    for (int64_t j0 = 0; j0 < kend; j0 += kBlockN) {
      const int64_t cols = std::min(kBlockN, kend - j0);
      const E* kt = head + (j0 / kBlockN) * (lay.kt_block + lay.v_block);
      const E* vp = kt + lay.kt_block;
      float* s = w.s.get();
      std::fill(s, s + rows * kBlockN, 0.0f);
      gemm_kind<Kd>(qt, ldq, 1, kt, kBlockN, s, kBlockN, rows, kBlockN, lay.Eq);
      if constexpr (kPairs) {
        const float scale = sh.scale;
#pragma omp simd
        for (int64_t e = 0; e < rows * kBlockN; ++e) s[e] *= scale;
      }
      const TileCoord t{n, h, i0, j0, rows, cols};
      mask_scores<T>(s, t, sh.causal, p.mask);
      online_softmax(s, w.o.get(), w.Evp, w.m.get(), w.l.get(), rows);
      if (sh.dropout_p > 0.0f) apply_dropout(s, t, sh);
      if constexpr (!kPairs) {
        gemm_kind<Kd>(s, kBlockN, 1, vp, w.Evp, w.o.get(), w.Evp, rows, w.Evp, kBlockN);
      } else {
        uint32_t* pp = reinterpret_cast<uint32_t*>(w.pp.get());
        constexpr int64_t half = kBlockN / 2;
        for (int64_t r = 0; r < rows; ++r) {
#pragma omp simd
          for (int64_t c = 0; c < half; ++c)
            pp[r * half + c] = pair_bits(bits16(s[r * kBlockN + 2 * c]), bits16(s[r * kBlockN + 2 * c + 1]));
        }
        const int64_t pairs = ceil_div(cols, 2);  // keys past cols have p = 0 and zero V rows
        gemm_kind<Kd>(pp, half, 1, vp, w.Evp, w.o.get(), w.Evp, rows, w.Evp, pairs);
      }
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
};

// One ISA entry pair per (T, kind): pack one key block, run one query block.
template <typename T, typename Kd>
struct Entries {
  void (*pack)(const AttentionForwardParams&, const KVLayout<Kd>&, int64_t, int64_t, int64_t, typename Kd::Elem*);
  void (*item)(const AttentionForwardParams&, const KVLayout<Kd>&, const typename Kd::Elem*, int64_t, int64_t,
               ForwardScratch&);
};

#define FASTOPS_FORWARD_ENTRIES(SUFFIX, TARGET, KIND)                                                       \
  template <typename T>                                                                                   \
  TARGET void pack_##SUFFIX(const AttentionForwardParams& p, const KVLayout<KIND>& lay, int64_t n,          \
                            int64_t hk, int64_t jb, typename KIND::Elem* dst) {                            \
    Forward<T, KIND>::pack_kv(p, lay, n, hk, jb, dst);                                                    \
  }                                                                                                       \
  template <typename T>                                                                                   \
  TARGET void item_##SUFFIX(const AttentionForwardParams& p, const KVLayout<KIND>& lay,                    \
                            const typename KIND::Elem* kv, int64_t first, int64_t i, ForwardScratch& w) {  \
    Forward<T, KIND>::item(p, lay, kv, first, i, w);                                                      \
  }

FASTOPS_FORWARD_ENTRIES(avx512, FASTOPS_TARGET_AVX512, FmaKind<16>)
FASTOPS_FORWARD_ENTRIES(avx2, FASTOPS_TARGET_AVX2, FmaKind<8>)
FASTOPS_FORWARD_ENTRIES(baseline, FASTOPS_TARGET_BASELINE, FmaKind<4>)
#if FASTOPS_HAVE_X86_PATHS
FASTOPS_FORWARD_ENTRIES(bf16dp, FASTOPS_TARGET_AVX512BF16, Bf16PairKind)
#endif
#undef FASTOPS_FORWARD_ENTRIES

// Packed K/V of the calling thread, kept between calls; at most kChunkElems (64 MB): more heads
// than that are packed and run a chunk of kv heads at a time.
thread_local std::unique_ptr<Buffer> tls_kv;
thread_local int64_t tls_kv_elems = 0;
constexpr int64_t kChunkElems = int64_t(16) << 20;

template <typename T, typename Kd>
void run(const AttentionForwardParams& p, const Entries<T, Kd>& e) {
  const AttentionShape& sh = p.shape;
  const KVLayout<Kd> lay(sh);
  const int64_t heads = sh.N * sh.Hkv, group = sh.H / sh.Hkv, qblocks = ceil_div(sh.L, kForwardBlockM);
  const int64_t chunk = std::clamp<int64_t>(kChunkElems / std::max<int64_t>(lay.head, 1), 1, heads);
  const int64_t elems = chunk * lay.head;
  if (elems > tls_kv_elems || !tls_kv) {
    tls_kv = std::make_unique<Buffer>(elems);
    tls_kv_elems = elems;
  }
  auto* kv = reinterpret_cast<typename Kd::Elem*>(tls_kv->get());
  const int64_t work = sh.N * sh.H * sh.L * sh.S * (sh.E + sh.Ev);
  for (int64_t first = 0; first < heads; first += chunk) {
    const int64_t count = std::min(chunk, heads - first);
    const int64_t pack_items = count * lay.kblocks;
#pragma omp parallel for schedule(static) if (pack_items > 1 && work >= kParallelMinWork)
    for (int64_t i = 0; i < pack_items; ++i) {
      const int64_t nk = first + i / lay.kblocks, jb = i % lay.kblocks;
      e.pack(p, lay, nk / sh.Hkv, nk % sh.Hkv, jb, kv + (nk - first) * lay.head + jb * (lay.kt_block + lay.v_block));
    }
    // query items (n, h, block) of kv heads [first, first + count): h = hk * group + g, so they are contiguous
    const int64_t item0 = first * group * qblocks;
    parallel_items(
        count * group * qblocks, work, [&] { return ForwardScratch(sh.E, sh.Ev); },
        [&](int64_t i, ForwardScratch& w) { e.item(p, lay, kv, first, item0 + i, w); });
  }
  if (tls_kv_elems > kChunkElems) {  // one head past the chunk size: not kept
    tls_kv.reset();
    tls_kv_elems = 0;
  }
}

template <typename T>
void forward_typed(const AttentionForwardParams& p) {
#if FASTOPS_HAVE_X86_PATHS
  if constexpr (std::is_same_v<T, BFloat16>) {
    if (has_avx512_bf16()) return run<T, Bf16PairKind>(p, {pack_bf16dp<T>, item_bf16dp<T>});
  }
#endif
  switch (active_isa()) {
    case Isa::kAvx512: return run<T, FmaKind<16>>(p, {pack_avx512<T>, item_avx512<T>});
    case Isa::kAvx2: return run<T, FmaKind<8>>(p, {pack_avx2<T>, item_avx2<T>});
    default: return run<T, FmaKind<4>>(p, {pack_baseline<T>, item_baseline<T>});
  }
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
