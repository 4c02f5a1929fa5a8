// The general ops' CUDA kernels (csrc/cuda/grid_sample_cuda.cu) in the test-only emulation
// library (see cuda_emulation.cpp, which declares the library's ops): a translation unit of its
// own, so that both .cu sources keep their internal names, and the two build in parallel.
#include "../cuda/grid_sample_cuda.cu"

namespace stn_ext {

TORCH_LIBRARY_IMPL(stn_ext_cuda_emulation, CPU, m) {
  m.impl("grid_sample", &grid_sample_cuda);
  m.impl("grid_sample_backward", &grid_sample_backward_cuda);
  m.impl("affine_sample", &affine_sample_cuda);
  m.impl("affine_sample_backward", &affine_sample_backward_cuda);
}

}  // namespace stn_ext
