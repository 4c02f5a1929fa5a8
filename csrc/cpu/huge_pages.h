// Transparent huge pages for the large buffers the CPU kernels allocate (outputs, grad_input).
// A fresh buffer of several MB is first touched by the kernel, page by page: with 4 KB pages
// that is one page fault per 4 KB, and a rotated sample reads a new page on every input row it
// crosses, which the TLB cannot cover. Advising Linux before the first write (madvise
// MADV_HUGEPAGE, as NumPy does for every array of 4 MB or more) backs the buffer with 2 MB
// pages where the system allows it (transparent_hugepage "madvise" or "always"); elsewhere the
// advice is ignored and nothing changes.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstddef>
#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace stn_ext {

// NumPy's threshold: smaller buffers are served from malloc's heap, already faulted in.
constexpr size_t kHugePageAdviceMinBytes = size_t(1) << 22;

// Advises huge pages for a fresh CPU tensor's memory, before anything writes it; returns it.
// (Only a hint: a failed madvise, another device or a small tensor change nothing.)
inline at::Tensor with_huge_page_advice(at::Tensor fresh) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const size_t bytes = fresh.storage().nbytes();
  if (fresh.is_cpu() && bytes >= kHugePageAdviceMinBytes) {
    const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
    const uintptr_t data = reinterpret_cast<uintptr_t>(fresh.storage().data());
    const uintptr_t begin = (data + page - 1) / page * page;  // madvise takes whole pages
    const uintptr_t end = (data + bytes) / page * page;
    if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
  }
#endif
  return fresh;
}

}  // namespace stn_ext
