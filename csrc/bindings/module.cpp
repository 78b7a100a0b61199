// The fastops._C module: build facts plus every family's bindings (csrc/bindings/<family>.cpp).
#include "bindings/common.h"
#include "cpu/isa.h"

#ifndef FASTOPS_TORCH_VERSION
#define FASTOPS_TORCH_VERSION "unknown"
#endif

namespace fastops {
namespace {

py::dict build_meta() {
  py::dict d;
  d["torch_version"] = FASTOPS_TORCH_VERSION;
  d["cuda_archs"] = std::string(FASTOPS_CUDA_ARCHS);
#ifdef FASTOPS_WITH_CUDA
  d["with_cuda"] = true;
#else
  d["with_cuda"] = false;
#endif
  d["cpu_isas_compiled"] = cpu::compiled_isas();
  d["cpu_isa"] = std::string(cpu::isa_name(cpu::active_isa()));
  d["cpu_amx_bf16"] = cpu::has_amx_bf16();
  d["cpu_last_level_cache_bytes"] = cpu::last_level_cache_bytes();
  return d;
}

}  // namespace
}  // namespace fastops

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastops compiled kernels (CPU always, CUDA when built with nvcc)";
  m.def("build_meta", &fastops::build_meta, "What this binary was built with and the CPU path in use");
  fastops::bind_softmax(m);
  fastops::bind_adam(m);
  fastops::bind_attention(m);
  fastops::bind_conv(m);
  fastops::bind_rnn(m);
  fastops::bind_matmul(m);
}
