// The CPU row kernels of 2-D bilinear and nearest sampling without a fill value
// (affine_grid_sample_cpu.cpp): stn_ext::affine_grid_sample's, and by way of these entry points
// the general ops' (grid_sample_cpu.cpp) for the same cases, where they are faster than the
// general kernels (channel blocks, tap vectors, align_corners as a constant).
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <cstdint>
#include <limits>
#include <tuple>

#include "../sampling_math.h"

namespace stn_ext {

// Pixel indices along an axis are int32 in the CPU kernels' row loops (an index plus a
// stencil's reach, and the far-outside bound past it, must fit): every CPU kernel refuses an
// input with a longer spatial axis, before it runs.
constexpr int64_t kMaxCpuAxisSize = std::numeric_limits<int32_t>::max() - 8;

inline void check_cpu_axis_sizes(const at::Tensor& input) {
  for (int64_t d = 2; d < input.dim(); ++d) {
    TORCH_CHECK_VALUE(input.size(d) <= kMaxCpuAxisSize, "stn_ext: the CPU kernels take input "
                      "spatial sizes up to ", kMaxCpuAxisSize, ", got input of sizes ",
                      input.sizes());
  }
}

// Whether the row kernels serve a general op's call on `input` (N, C, *spatial).
inline bool row_kernels_serve(const at::Tensor& input, const SampleConfig& cfg,
                              const c10::optional<at::Tensor>& fill_value) {
  if (input.dim() != 4 || fill_value.has_value()) return false;
  switch (cfg.mode) {
    case Interpolation::Nearest:
    case Interpolation::Bilinear:
      return true;
    case Interpolation::Bicubic:
      return false;
  }
  return false;
}

// grid_sample of 4-D input at grid (N, Ho, Wo, 2); arguments already checked.
at::Tensor grid_sample_rows_cpu(const at::Tensor& input, const at::Tensor& grid,
                                const SampleConfig& cfg);

// Its backward pass: (grad_input, grad_grid), each empty where output_mask leaves it out.
std::tuple<at::Tensor, at::Tensor> grid_sample_rows_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& grid,
    const SampleConfig& cfg, std::array<bool, 2> output_mask);

// affine_sample of 4-D input with theta (N, 2, 3) at an (Ho, Wo) output; arguments checked.
at::Tensor affine_sample_rows_cpu(const at::Tensor& input, const at::Tensor& theta,
                                  at::IntArrayRef out_size, const SampleConfig& cfg);

// Its backward pass: (grad_input, grad_theta), each empty where output_mask leaves it out.
std::tuple<at::Tensor, at::Tensor> affine_sample_rows_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& theta,
    const SampleConfig& cfg, std::array<bool, 2> output_mask);

}  // namespace stn_ext
