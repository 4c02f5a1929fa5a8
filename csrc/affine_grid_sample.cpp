// The checks and option parsing every device implementation of the stn_ext ops shares.
#include "affine_grid_sample.h"

#include "grid_sample.h"

namespace stn_ext {

SampleConfig parse_config(const std::string& mode, const std::string& padding_mode,
                          bool align_corners) {
  const SampleConfig cfg = parse_general_config(mode, padding_mode, align_corners);
  TORCH_CHECK_VALUE(cfg.mode != Interpolation::Bicubic,
                    "stn_ext: affine_grid_sample takes mode 'bilinear' or 'nearest' (bicubic is "
                    "stn_ext::affine_sample's), got '", mode, "'");
  return cfg;
}

void check_sample_args(const at::Tensor& input, const at::Tensor& theta, int64_t out_h,
                       int64_t out_w) {
  TORCH_CHECK_VALUE(input.dim() == 4, "stn_ext: input must be 4-D (N, C, H, W), got ",
                    input.dim(), "-D");
  check_sampled_input(input);
  check_theta(input, theta, {out_h, out_w});
}

void check_backward_args(const at::Tensor& grad_output, const at::Tensor& input,
                         const at::Tensor& theta) {
  TORCH_CHECK_VALUE(grad_output.dim() == 4,
                    "stn_ext: grad_output must have shape (N, C, Ho, Wo), got ", grad_output.sizes());
  check_sample_args(input, theta, grad_output.size(2), grad_output.size(3));
  TORCH_CHECK_VALUE(grad_output.size(0) == input.size(0) && grad_output.size(1) == input.size(1),
                    "stn_ext: grad_output must have shape (N, C, Ho, Wo) with the input's N and C, "
                    "got ", grad_output.sizes(), " for input ", input.sizes());
  TORCH_CHECK_TYPE(grad_output.scalar_type() == input.scalar_type(),
                   "stn_ext: grad_output must have the dtype of input");
  TORCH_CHECK_VALUE(grad_output.device() == input.device(),
                    "stn_ext: grad_output must be on the input's device");
}

at::MemoryFormat output_memory_format(const at::Tensor& input) {
  const at::MemoryFormat channels_last =
      input.dim() == 5 ? at::MemoryFormat::ChannelsLast3d : at::MemoryFormat::ChannelsLast;
  const bool keep = input.is_contiguous(channels_last) && !input.is_contiguous();
  return keep ? channels_last : at::MemoryFormat::Contiguous;
}

}  // namespace stn_ext
