// Op-level helpers shared by the CPU and CUDA implementations of stn_ext::affine_grid_sample:
// argument checks, mode parsing and output layout. The Python API validates arguments with
// friendlier messages first; these checks keep direct torch.ops callers memory-safe.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>

#include "sampling_math.h"

namespace stn_ext {

SampleConfig parse_config(const std::string& mode, const std::string& padding_mode,
                          bool align_corners);

void check_sample_args(const at::Tensor& input, const at::Tensor& theta, int64_t out_h,
                       int64_t out_w);

void check_grad_output(const at::Tensor& grad_output, const at::Tensor& input);

// Outputs and input gradients keep channels_last when the input is channels_last (and not also
// plain contiguous, as with 1x1 images); everything else gets contiguous NCHW.
at::MemoryFormat output_memory_format(const at::Tensor& input);

}  // namespace stn_ext
