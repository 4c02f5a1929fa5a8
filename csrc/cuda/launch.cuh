// How the CUDA kernels are launched, and the device limits their launchers plan with.
//
// launch_kernel(kernel, grid, block, stream, args...) is kernel<<<grid, block, 0, stream>>>(args...)
// followed by the launch check. In the test-only emulation build (STN_EXT_CUDA_EMULATION, see
// csrc/testing/cuda_emulation.h) the same call runs the kernel on host threads, and the limits
// below come from the emulated device, so tests can reach the grid-stride loops and the 64-bit
// index path with small tensors.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <limits>

#include <ATen/core/Tensor.h>

#ifdef STN_EXT_CUDA_EMULATION
#include "../testing/cuda_emulation.h"
#else
#include <ATen/cuda/Atomic.cuh>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace stn_ext {

#ifndef STN_EXT_CUDA_EMULATION
template <typename... Params, typename... Args>
void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t stream,
                   Args&&... args) {
  kernel<<<grid, block, 0, stream>>>(std::forward<Args>(args)...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
#endif

// The largest gridDim.y a launch may use.
inline int64_t max_grid_dim_y() {
#ifdef STN_EXT_CUDA_EMULATION
  return emulation::settings().max_grid_y;
#else
  return 65535;
#endif
}

// Whether the kernels that stage a small image in shared memory take the calls that fit them
// (the emulation can send those calls to the large images' kernels, for their tests).
inline bool stage_small_images() {
#ifdef STN_EXT_CUDA_EMULATION
  return emulation::settings().stage_small_images;
#else
  return true;
#endif
}

// Whether the current stream is capturing a CUDA graph: then a launcher must not wait for the
// device (a copy to the host would end the capture with an error).
inline bool stream_is_capturing() {
#ifdef STN_EXT_CUDA_EMULATION
  return emulation::settings().capturing_graph;
#else
  return c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None;
#endif
}

// Whether every element offset of these tensors fits a 32-bit index (cheaper address math).
inline bool fits_int32(std::initializer_list<at::Tensor> tensors) {
#ifdef STN_EXT_CUDA_EMULATION
  if (emulation::settings().force_64bit_indexing) return false;
#endif
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
  for (const at::Tensor& t : tensors) {
    if (!t.defined() || t.numel() == 0) continue;
    int64_t max_offset = 0;
    for (int64_t d = 0; d < t.dim(); ++d) max_offset += (t.size(d) - 1) * t.stride(d);
    if (t.numel() > kMax || max_offset > kMax) return false;
  }
  return true;
}

}  // namespace stn_ext
