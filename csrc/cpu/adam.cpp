// Fused Adam / AdamW on the CPU: one pass over each tensor (read p, g, m, v; write p, m, v),
// OpenMP over (tensor, chunk) work items, SIMD through the ISA entries of isa.h.
//
// The element math is fastops/math/adam.h. A chunk is kChunk contiguous elements of one tensor;
// the chunks of all tensors form one list that the threads split statically, so a step over
// many small tensors and one over a few large ones both spread evenly. Offsets are int64_t.
//
// sqrt vectorises because setup.py compiles with -fno-math-errno (else GCC keeps a scalar errno
// path around sqrtf: "control flow in loop"). No FMA contraction in this file: the avx2/avx512
// entries then round exactly as the baseline one and as torch's unfused single-tensor Adam, so
// every ISA path gives bitwise the same trajectory. No trapping math: the float compares of the
// amsgrad max and of the NaN checks in the 16-bit conversions may then become vector selects
// (nothing here reads floating-point exception flags).
#pragma GCC optimize("fp-contract=off", "no-trapping-math")

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "fastops/adam.h"
#include "fastops/math/adam.h"
#include "fastops/storage.h"
#include "isa.h"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace fastops {
namespace cpu {
namespace {

constexpr int64_t kChunk = 1 << 14;           // elements per work item (64 KiB of fp32 per array)
constexpr int64_t kParallelMinWork = 1 << 15;  // elements below which one thread is faster

// One work item: elements [begin, end) of tensor `t`.
struct Item {
  int64_t t;
  int64_t begin;
  int64_t end;
};

// 16-bit storage is read and written as uint16_t: GCC finds no vector type for loads of the
// one-member structs Half/BFloat16 and would leave those loops scalar.
template <typename T>
FASTOPS_FORCE_INLINE float load_f32(const T* p, int64_t i) {
  if constexpr (std::is_same_v<T, float>) {
    return p[i];
  } else {
    return to_float(T{reinterpret_cast<const uint16_t*>(p)[i]});
  }
}

template <typename T>
FASTOPS_FORCE_INLINE void store_f32(T* p, int64_t i, float x) {
  if constexpr (std::is_same_v<T, float>) {
    p[i] = x;
  } else {
    reinterpret_cast<uint16_t*>(p)[i] = from_float<T>(x).bits;
  }
}

// One element i: loads, the shared update, stores. k is a local copy, so the compiler knows no
// store can change it and if-converts its selects (otherwise: "control flow in loop").
template <typename T, bool kAmsgrad, bool kMaster, bool kScaled>
FASTOPS_FORCE_INLINE void update_one(T* __restrict__ p, T* __restrict__ g, float* __restrict__ m,
                                     float* __restrict__ v, float* __restrict__ vmax,
                                     float* __restrict__ master, int64_t i, const math::AdamScalars& k,
                                     float scale) {
  float gi = load_f32(g, i);
  if constexpr (kScaled) {
    gi = gi / scale;
    store_f32(g, i, gi);
  }
  float pi = kMaster ? master[i] : load_f32(p, i);
  float mi = m[i], vi = v[i], xi = 0.0f;
  if constexpr (kAmsgrad) xi = vmax[i];
  math::adam_update<kAmsgrad>(pi, gi, mi, vi, xi, k);
  m[i] = mi;
  v[i] = vi;
  if constexpr (kAmsgrad) vmax[i] = xi;
  if constexpr (kMaster) master[i] = pi;
  store_f32(p, i, pi);
}

// Elements [b, e) of one tensor, float32 storage: one vectorised loop.
template <bool kAmsgrad, bool kScaled>
FASTOPS_FORCE_INLINE void update_f32(float* __restrict__ p, float* __restrict__ g, float* __restrict__ m,
                                     float* __restrict__ v, float* __restrict__ vmax, int64_t b, int64_t e,
                                     const math::AdamScalars& k, float scale) {
#pragma omp simd
  for (int64_t i = b; i < e; ++i) update_one<float, kAmsgrad, false, kScaled>(p, g, m, v, vmax, nullptr, i, k, scale);
}

// 16-bit storage: tiles of kTile elements converted to float32 in L1-resident buffers, updated by
// the float32 loop, converted back (GCC does not vectorise a loop mixing the 16-bit conversions
// with the update). Still one pass over memory.
constexpr int64_t kTile = 512;

template <typename T, bool kAmsgrad, bool kMaster, bool kScaled>
FASTOPS_FORCE_INLINE void update_16(T* __restrict__ p, T* __restrict__ g, float* __restrict__ m,
                                    float* __restrict__ v, float* __restrict__ vmax, float* __restrict__ master,
                                    int64_t b, int64_t e, const math::AdamScalars& k, float scale) {
  alignas(64) float pb[kTile];
  alignas(64) float gb[kTile];
  for (int64_t t0 = b; t0 < e; t0 += kTile) {
    const int64_t n = std::min(kTile, e - t0);
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) gb[j] = load_f32(g, t0 + j);
    float* x = pb;
    if constexpr (kMaster) {
      x = master + t0;
    } else {
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) pb[j] = load_f32(p, t0 + j);
    }
    update_f32<kAmsgrad, kScaled>(x, gb, m + t0, v + t0, kAmsgrad ? vmax + t0 : nullptr, 0, n, k, scale);
    if constexpr (kScaled) {
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) store_f32(g, t0 + j, gb[j]);
    }
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) store_f32(p, t0 + j, x[j]);
  }
}

template <typename T, bool kAmsgrad, bool kMaster, bool kScaled>
FASTOPS_FORCE_INLINE void update_range_as(T* p, T* g, float* m, float* v, float* vmax, float* master, int64_t b,
                                          int64_t e, const math::AdamScalars& k, float scale) {
  if constexpr (std::is_same_v<T, float>) {
    update_f32<kAmsgrad, kScaled>(kMaster ? master : p, g, m, v, vmax, b, e, k, scale);
    if constexpr (kMaster) std::copy(master + b, master + e, p + b);  // float32 masters: unused in practice
  } else {
    update_16<T, kAmsgrad, kMaster, kScaled>(p, g, m, v, vmax, master, b, e, k, scale);
  }
}

// Elements [b, e) of one tensor. T is the parameter/gradient storage type.
template <typename T, bool kAmsgrad, bool kMaster>
FASTOPS_FORCE_INLINE void update_range(T* p, T* g, float* m, float* v, float* vmax, float* master, int64_t b,
                                       int64_t e, const math::AdamScalars& scalars, const float* grad_scale) {
  const math::AdamScalars k = scalars;  // a local copy: no store can alias it
  if (grad_scale != nullptr) {
    update_range_as<T, kAmsgrad, kMaster, true>(p, g, m, v, vmax, master, b, e, k, *grad_scale);
  } else {
    update_range_as<T, kAmsgrad, kMaster, false>(p, g, m, v, vmax, master, b, e, k, 1.0f);
  }
}

template <typename T, bool kAmsgrad, bool kMaster>
FASTOPS_FORCE_INLINE void update_items(const AdamParams& a, const Item* items, int64_t n,
                                       const math::AdamScalars* scalars) {
  for (int64_t j = 0; j < n; ++j) {
    const Item it = items[j];
    const int64_t t = it.t;
    update_range<T, kAmsgrad, kMaster>(static_cast<T*>(a.params[t]), static_cast<T*>(a.grads[t]),
                                       a.exp_avgs[t], a.exp_avg_sqs[t],
                                       kAmsgrad ? a.max_exp_avg_sqs[t] : nullptr,
                                       kMaster ? a.master_params[t] : nullptr, it.begin, it.end,
                                       scalars[t], a.grad_scale);
  }
}

using Entry = void (*)(const AdamParams&, const Item*, int64_t, const math::AdamScalars*);

template <typename T, bool kA, bool kM>
FASTOPS_TARGET_AVX512 void update_avx512(const AdamParams& a, const Item* it, int64_t n,
                                         const math::AdamScalars* s) {
  update_items<T, kA, kM>(a, it, n, s);
}
template <typename T, bool kA, bool kM>
FASTOPS_TARGET_AVX2 void update_avx2(const AdamParams& a, const Item* it, int64_t n,
                                     const math::AdamScalars* s) {
  update_items<T, kA, kM>(a, it, n, s);
}
template <typename T, bool kA, bool kM>
FASTOPS_TARGET_BASELINE void update_baseline(const AdamParams& a, const Item* it, int64_t n,
                                             const math::AdamScalars* s) {
  update_items<T, kA, kM>(a, it, n, s);
}

template <typename T, bool kA, bool kM>
Entry entry() {
  return select_isa<Entry>(update_baseline<T, kA, kM>, update_avx2<T, kA, kM>, update_avx512<T, kA, kM>);
}

// The entry for a storage type, amsgrad and master weights (runtime -> template, two levels).
template <typename T>
Entry entry_for(bool amsgrad, bool master) {
  if (amsgrad) return master ? entry<T, true, true>() : entry<T, true, false>();
  return master ? entry<T, false, true>() : entry<T, false, false>();
}

Entry pick_entry(const AdamParams& a) {
  const bool amsgrad = a.options.amsgrad, master = a.master_params != nullptr;
  switch (a.param_dtype) {
    case DType::kFloat16: return entry_for<Half>(amsgrad, master);
    case DType::kBFloat16: return entry_for<BFloat16>(amsgrad, master);
    default: return entry_for<float>(amsgrad, master);
  }
}

}  // namespace

void adam_step(const AdamParams& a) {
  if (a.num_tensors <= 0) return;
  if (a.found_inf != nullptr && *a.found_inf != 0.0f) return;
  std::vector<math::AdamScalars> scalars(a.num_tensors);
  std::vector<Item> items;
  int64_t total = 0;
  for (int64_t t = 0; t < a.num_tensors; ++t) {
    scalars[t] = math::adam_scalars(a.options, *a.steps[t]);
    for (int64_t b = 0; b < a.numel[t]; b += kChunk) items.push_back({t, b, std::min(a.numel[t], b + kChunk)});
    total += a.numel[t];
  }
  const Entry fn = pick_entry(a);
  const int64_t n = static_cast<int64_t>(items.size());
  if (total < kParallelMinWork || n == 1) {
    fn(a, items.data(), n, scalars.data());
    return;
  }
  // Contiguous runs of items per thread: neighbouring chunks of a tensor stay on one core.
#pragma omp parallel
  {
#if defined(_OPENMP)
    const int64_t nt = omp_get_num_threads(), tid = omp_get_thread_num();
#else
    const int64_t nt = 1, tid = 0;
#endif
    const int64_t per = (n + nt - 1) / nt;
    const int64_t begin = std::min(n, tid * per), end = std::min(n, begin + per);
    if (begin < end) fn(a, items.data() + begin, end - begin, scalars.data());
  }
}

}  // namespace cpu
}  // namespace fastops
