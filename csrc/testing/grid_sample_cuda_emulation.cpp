// The general ops' CUDA kernels (csrc/cuda/grid_sample_cuda.cu) in the test-only emulation
// library (see cuda_emulation.cpp, which declares the library's ops): a translation unit of its
// own, so that both .cu sources keep their internal names, and the two build in parallel.
#include "../cuda/grid_sample_cuda.cu"

namespace stn_ext {

TORCH_LIBRARY_IMPL(stn_ext_cuda_emulation, CPU, m) { GeneralOps<Cuda>::register_kernels(m); }

}  // namespace stn_ext
