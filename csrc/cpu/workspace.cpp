// The per-thread block cache of fastops/workspace.h.
#include "fastops/workspace.h"

#include <algorithm>
#include <new>
#include <utility>
#include <vector>

namespace fastops {
namespace cpu {

namespace {
// The per-thread cache: a few blocks, at most kKeepBytes in all, each reused for a request it can
// hold (the smallest that fits).
constexpr size_t kKeepBytes = size_t(64) << 20;
constexpr size_t kAlign = 64;
struct WorkspaceCache {
  std::vector<std::pair<void*, size_t>> blocks;
  size_t bytes = 0;
  ~WorkspaceCache() {
    for (auto& b : blocks) ::operator delete(b.first, std::align_val_t(kAlign));
  }
};
thread_local WorkspaceCache workspace_cache;
}  // namespace

void* workspace_take(size_t bytes, size_t* capacity) {
  WorkspaceCache& c = workspace_cache;
  size_t best = c.blocks.size();
  for (size_t i = 0; i < c.blocks.size(); ++i)
    if (c.blocks[i].second >= bytes && (best == c.blocks.size() || c.blocks[i].second < c.blocks[best].second)) best = i;
  if (best < c.blocks.size()) {
    void* p = c.blocks[best].first;
    *capacity = c.blocks[best].second;
    c.bytes -= *capacity;
    c.blocks.erase(c.blocks.begin() + static_cast<std::ptrdiff_t>(best));
    return p;
  }
  *capacity = bytes;
  return ::operator new(bytes, std::align_val_t(kAlign));
}

void workspace_give(void* block, size_t capacity) {
  WorkspaceCache& c = workspace_cache;
  if (capacity > kKeepBytes) {
    ::operator delete(block, std::align_val_t(kAlign));
    return;
  }
  c.blocks.emplace_back(block, capacity);
  c.bytes += capacity;
  while (c.bytes > kKeepBytes) {  // drop the largest blocks first
    auto largest = std::max_element(c.blocks.begin(), c.blocks.end(),
                                    [](const auto& a, const auto& b) { return a.second < b.second; });
    ::operator delete(largest->first, std::align_val_t(kAlign));
    c.bytes -= largest->second;
    c.blocks.erase(largest);
  }
}

}  // namespace cpu
}  // namespace fastops
