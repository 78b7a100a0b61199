#include "isa.h"

#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>

namespace fastops {
namespace cpu {
namespace {

Isa detect() {
#if FASTOPS_HAVE_X86_PATHS
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
    return Isa::kAvx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
#endif
  return Isa::kBaseline;
}

Isa capped(Isa hw) {
  const char* cap = std::getenv("FASTOPS_CPU_ISA");
  if (cap == nullptr) return hw;
  Isa want = hw;
  if (std::strcmp(cap, "baseline") == 0) want = Isa::kBaseline;
  if (std::strcmp(cap, "avx2") == 0) want = Isa::kAvx2;
  if (std::strcmp(cap, "avx512") == 0) want = Isa::kAvx512;
  return static_cast<int>(want) < static_cast<int>(hw) ? want : hw;
}

}  // namespace

Isa active_isa() {
  static const Isa isa = capped(detect());
  return isa;
}

bool has_avx512_bf16() {
#if FASTOPS_HAVE_X86_PATHS
  static const bool has = [] {
    __builtin_cpu_init();
    return active_isa() == Isa::kAvx512 && __builtin_cpu_supports("avx512bf16");
  }();
  return has;
#else
  return false;
#endif
}

bool has_amx_bf16() {
#if FASTOPS_HAVE_X86_PATHS && defined(__linux__) && defined(SYS_arch_prctl)
  static const bool has = [] {
    constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;  // asm/prctl.h, the XSAVE component
    const char* cap = std::getenv("FASTOPS_CPU_ISA");
    if (!has_avx512_bf16() || (cap != nullptr && std::strcmp(cap, "amx") != 0)) return false;
    if (!__builtin_cpu_supports("amx-tile") || !__builtin_cpu_supports("amx-bf16")) return false;
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return has;
#else
  return false;
#endif
}

int64_t last_level_cache_bytes() {
  static const int64_t bytes = [] {
    // cpu0's caches in sysfs ("32768K"): the largest is the L3 its cores share. glibc's
    // sysconf(_SC_LEVEL3_CACHE_SIZE) can report the whole package instead (320 MB on the 2-core
    // EPYC VM where lscpu shows 32 MiB), so it is only the fallback.
    int64_t best = 0;
    for (int i = 0; i < 8; ++i) {
      std::ifstream f("/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(i) + "/size");
      std::string size;
      if (!(f >> size)) continue;
      int64_t v = std::atoll(size.c_str());
      if (size.back() == 'K') v <<= 10;
      if (size.back() == 'M') v <<= 20;
      best = std::max(best, v);
    }
#if defined(_SC_LEVEL3_CACHE_SIZE)
    if (best <= 0) best = sysconf(_SC_LEVEL3_CACHE_SIZE);
#endif
    return best > 0 ? best : int64_t(32) << 20;
  }();
  return bytes;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "baseline";
  }
}

std::string compiled_isas() {
#if FASTOPS_HAVE_X86_PATHS
  return "baseline,avx2,avx512";
#else
  return "baseline";
#endif
}

}  // namespace cpu
}  // namespace fastops
