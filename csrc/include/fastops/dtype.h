// Element types the kernels accept, as a torch-free tag.
#pragma once

namespace fastops {

// Storage type of a tensor's elements. Kernels compute in float32 whatever the storage type.
enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

}  // namespace fastops
