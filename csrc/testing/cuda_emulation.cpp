// The test-only CUDA emulation library: csrc/cuda/'s kernels and launchers compiled as host C++
// (see cuda_emulation.h), registered for CPU tensors as the ops of stn_ext_cuda_emulation, with
// the schemas of the stn_ext ops, plus the emulated device's settings and launch counters. This
// file declares the ops and registers the fused op's kernels; grid_sample_cuda_emulation.cpp
// registers the general ops' kernels. Built by stn_ext/testing/cuda_emulation.py; not part of
// the installed package.
#include "../cuda/affine_grid_sample_cuda.cu"
#include "../grid_sample.h"

namespace stn_ext {
namespace {

void set_device_limits(int64_t max_grid_y, bool force_64bit_indexing, int64_t block_order_seed,
                       bool stage_small_images, bool capturing_graph) {
  TORCH_CHECK_VALUE(max_grid_y >= 1 && max_grid_y <= 65535,
                    "max_grid_y must be in [1, 65535], got ", max_grid_y);
  emulation::Settings& s = emulation::settings();
  s.max_grid_y = max_grid_y;
  s.force_64bit_indexing = force_64bit_indexing;
  s.block_order_seed = static_cast<uint64_t>(block_order_seed);
  s.stage_small_images = stage_small_images;
  s.capturing_graph = capturing_graph;
}

int64_t launch_count() { return emulation::launch_count().load(); }
int64_t launched_threads() { return emulation::launched_threads().load(); }
int64_t atomic_adds() { return emulation::atomic_adds().load(); }

}  // namespace

TORCH_LIBRARY(stn_ext_cuda_emulation, m) {
  m.def(kAffineGridSampleSchema);
  m.def(kAffineGridSampleBackwardSchema);
  m.def(kGridSampleSchema);
  m.def(kGridSampleBackwardSchema);
  m.def(kAffineSampleSchema);
  m.def(kAffineSampleBackwardSchema);
  m.def("set_device_limits(int max_grid_y, bool force_64bit_indexing, int block_order_seed, "
        "bool stage_small_images, bool capturing_graph) -> ()",
        &set_device_limits);
  m.def("launch_count() -> int", &launch_count);
  m.def("launched_threads() -> int", &launched_threads);
  m.def("atomic_adds() -> int", &atomic_adds);
}

TORCH_LIBRARY_IMPL(stn_ext_cuda_emulation, CPU, m) {
  m.impl("affine_grid_sample", &affine_grid_sample_cuda);
  m.impl("affine_grid_sample_backward", &affine_grid_sample_backward_cuda);
}

}  // namespace stn_ext
