// Op-level helpers shared by the CPU and CUDA implementations of stn_ext::affine_grid_sample:
// argument checks, mode parsing and output layout. The Python API validates arguments with
// friendlier messages first; these checks keep direct torch.ops callers memory-safe.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <type_traits>

#include "sampling_math.h"

namespace stn_ext {

// The ops' schemas, defined by the stn_ext library (csrc/library.cpp) and, with the same
// signatures, by the test-only CUDA emulation library (csrc/testing/cuda_emulation.cpp).
inline constexpr const char* kAffineGridSampleSchema =
    "affine_grid_sample(Tensor input, Tensor theta, SymInt out_h, SymInt out_w, str mode, "
    "str padding_mode, bool align_corners) -> Tensor";
// output_mask says which of (grad_input, grad_theta) to compute; one not asked for comes back
// as an empty tensor.
inline constexpr const char* kAffineGridSampleBackwardSchema =
    "affine_grid_sample_backward(Tensor grad_output, Tensor input, Tensor theta, str mode, "
    "str padding_mode, bool align_corners, bool[2] output_mask) -> (Tensor, Tensor)";

SampleConfig parse_config(const std::string& mode, const std::string& padding_mode,
                          bool align_corners);

void check_sample_args(const at::Tensor& input, const at::Tensor& theta, int64_t out_h,
                       int64_t out_w);

// The backward op's arguments: check_sample_args plus grad_output's shape, dtype and device.
void check_backward_args(const at::Tensor& grad_output, const at::Tensor& input,
                         const at::Tensor& theta);

// Calls f(mode, padding) with both as std::integral_constant, so that a kernel templated on
// them compiles each combination with its branches folded away. Only the modes of
// affine_grid_sample (parse_config refuses bicubic).
template <typename F>
void with_static_config(const SampleConfig& cfg, F&& f) {
  using Bilinear_ = std::integral_constant<Interpolation, Interpolation::Bilinear>;
  using Nearest_ = std::integral_constant<Interpolation, Interpolation::Nearest>;
  auto with_padding = [&](auto mode) {
    switch (cfg.padding) {
      case Padding::Zeros: return f(mode, std::integral_constant<Padding, Padding::Zeros>{});
      case Padding::Border: return f(mode, std::integral_constant<Padding, Padding::Border>{});
      case Padding::Reflection:
        return f(mode, std::integral_constant<Padding, Padding::Reflection>{});
    }
  };
  switch (cfg.mode) {
    case Interpolation::Bilinear:
      return with_padding(Bilinear_{});
    case Interpolation::Nearest:
      return with_padding(Nearest_{});
    case Interpolation::Bicubic:
      TORCH_CHECK_NOT_IMPLEMENTED(false, "stn_ext: affine_grid_sample has no bicubic kernel");
  }
}

// Outputs and input gradients keep channels_last (channels_last_3d for 5-D) when the input has
// it (and is not also plain contiguous, as with 1x1 images); everything else gets contiguous.
at::MemoryFormat output_memory_format(const at::Tensor& input);

}  // namespace stn_ext
