// CPU instruction-set paths: compile-time target attributes and the run-time choice.
//
// Each kernel family writes its loops once as FASTOPS_FORCE_INLINE templates and wraps them
// in one small entry function per ISA, marked FASTOPS_TARGET_<ISA>: `target` makes GCC emit
// that ISA for the entry, `flatten` inlines the loops (and the shared math) into it, so the
// same source vectorises to 512-, 256- or 128-bit registers. No -march flag is used, so the
// library runs on any x86-64 and picks the widest path the CPU supports at run time.
#pragma once

#include <cstdint>
#include <string>

#if defined(__x86_64__) && defined(__GNUC__)
#define FASTOPS_HAVE_X86_PATHS 1
#define FASTOPS_TARGET_AVX512 \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c"), flatten))
#define FASTOPS_TARGET_AVX2 __attribute__((target("avx2,fma,f16c"), flatten))
// The AVX-512 path plus `vdpbf16ps` (AVX512-BF16); entries with it run only where
// has_avx512_bf16() says so.
#define FASTOPS_TARGET_AVX512BF16 \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c"), flatten))
#else
#define FASTOPS_HAVE_X86_PATHS 0
#define FASTOPS_TARGET_AVX512 __attribute__((flatten))
#define FASTOPS_TARGET_AVX2 __attribute__((flatten))
#endif
#define FASTOPS_TARGET_BASELINE __attribute__((flatten))

namespace fastops {
namespace cpu {

enum class Isa : int { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

// The widest path this CPU supports, capped by FASTOPS_CPU_ISA=baseline|avx2|avx512 if set
// (avx512 also turns AMX off; amx, or no cap, leaves it on). Decided once per process.
Isa active_isa();
const char* isa_name(Isa isa);
// True when the active path is AVX-512 and the CPU has AVX512-BF16 (bfloat16 dot products).
bool has_avx512_bf16();
// True when bfloat16 GEMMs can run on AMX tiles: AVX512-BF16 in use, the CPU has AMX-TILE and
// AMX-BF16, FASTOPS_CPU_ISA is unset or "amx", and Linux gave this process the tile state
// (arch_prctl ARCH_REQ_XCOMP_PERM, asked once here).
bool has_amx_bf16();
// Bytes of the largest cache cpu0 has (its L3, shared by its core complex); 32 MiB if unknown.
int64_t last_level_cache_bytes();
// Names of the paths compiled into this build, e.g. "baseline,avx2,avx512".
std::string compiled_isas();

// Picks, out of the three entries compiled for each path, the one for the active ISA.
template <typename Fn>
inline Fn select_isa(Fn baseline, Fn avx2, Fn avx512) {
  switch (active_isa()) {
    case Isa::kAvx512: return avx512;
    case Isa::kAvx2: return avx2;
    default: return baseline;
  }
}

}  // namespace cpu
}  // namespace fastops
