// Reusable CPU workspaces for buffers whose every element is written before it is read.
// The blocks come from a small per-thread cache that keeps up to 64 MiB between calls: a layer's
// or a convolution's temporaries (several MB each) are large enough that the allocator returns them
// to the OS on free, and faulting them in again on the next call costs 5-10 % of the call.
#pragma once

#include <cstddef>

namespace fastops {
namespace cpu {

// A block of at least `bytes` (64-byte aligned, uninitialised); *capacity gets its real size,
// which workspace_give needs back. Either may run on any thread.
void* workspace_take(size_t bytes, size_t* capacity);
void workspace_give(void* block, size_t capacity);

// n elements of T from the cache, for the scope of the object.
template <typename T>
class Workspace {
 public:
  explicit Workspace(size_t n) : n_(n) {
    if (n) ptr_ = static_cast<T*>(workspace_take(n * sizeof(T), &capacity_));
  }
  ~Workspace() {
    if (ptr_) workspace_give(ptr_, capacity_);
  }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  T* data() const { return ptr_; }
  size_t size() const { return n_; }

 private:
  T* ptr_ = nullptr;
  size_t n_ = 0, capacity_ = 0;
};

}  // namespace cpu
}  // namespace fastops
