// The checks and option parsing of the general sampling ops (see grid_sample.h).
#include "grid_sample.h"

#include "affine_grid_sample.h"
#include "cpu/huge_pages.h"

#include <ATen/ATen.h>

#include <algorithm>

#include <string>
#include <vector>

namespace stn_ext {

SampleConfig parse_general_config(c10::string_view mode_name, c10::string_view padding_name,
                                  bool align_corners) {
  const std::string mode(mode_name), padding_mode(padding_name);
  SampleConfig cfg{Interpolation::Bilinear, Padding::Zeros, align_corners};
  if (mode == "nearest") {
    cfg.mode = Interpolation::Nearest;
  } else if (mode == "bicubic") {
    cfg.mode = Interpolation::Bicubic;
  } else {
    TORCH_CHECK_VALUE(mode == "bilinear",
                      "stn_ext: mode must be 'bilinear', 'nearest' or 'bicubic', got '", mode, "'");
  }
  if (padding_mode == "border") {
    cfg.padding = Padding::Border;
  } else if (padding_mode == "reflection") {
    cfg.padding = Padding::Reflection;
  } else {
    TORCH_CHECK_VALUE(padding_mode == "zeros",
                      "stn_ext: padding_mode must be 'zeros', 'border' or 'reflection', got '",
                      padding_mode, "'");
  }
  return cfg;
}

void check_sampled_input(const at::Tensor& input) {
  TORCH_CHECK_VALUE(input.dim() == 4 || input.dim() == 5,
                    "stn_ext: input must be 4-D (N, C, H, W) or 5-D (N, C, D, H, W), got ",
                    input.dim(), "-D");
  for (int64_t d = 2; d < input.dim(); ++d) {
    TORCH_CHECK_VALUE(input.size(d) > 0,
                      "stn_ext: input must have non-empty spatial dimensions, got sizes ",
                      input.sizes());
  }
  TORCH_CHECK_TYPE(at::isFloatingType(input.scalar_type()),
                   "stn_ext: input must be a floating tensor, got ", input.scalar_type());
}

namespace {

void check_options(const at::Tensor& input, const SampleConfig& cfg,
                   const c10::optional<at::Tensor>& fill_value) {
  TORCH_CHECK_NOT_IMPLEMENTED(cfg.mode != Interpolation::Bicubic || input.dim() == 4,
                              "stn_ext: mode 'bicubic' takes 4-D input (as in PyTorch), got ",
                              input.dim(), "-D");
  if (!fill_value.has_value()) return;
  TORCH_CHECK_VALUE(cfg.padding == Padding::Zeros,
                    "stn_ext: fill_value needs padding_mode 'zeros' (border and reflection never "
                    "read outside the input)");
  TORCH_CHECK_VALUE(fill_value->dim() == 1 && fill_value->size(0) == input.size(1),
                    "stn_ext: fill_value must be 1-D with one value per channel (", input.size(1),
                    "), got shape ", fill_value->sizes());
  TORCH_CHECK_VALUE(fill_value->device() == input.device(), "stn_ext: fill_value is on ",
                    fill_value->device(), " but input is on ", input.device());
}

void check_coordinates(const char* name, const at::Tensor& coordinates, const at::Tensor& input) {
  TORCH_CHECK_VALUE(coordinates.size(0) == input.size(0), "stn_ext: ", name, " has batch ",
                    coordinates.size(0), " but input has batch ", input.size(0));
  TORCH_CHECK_TYPE(coordinates.scalar_type() == input.scalar_type(), "stn_ext: ", name,
                   " must have the dtype of input (", input.scalar_type(), "), got ",
                   coordinates.scalar_type());
  TORCH_CHECK_VALUE(coordinates.device() == input.device(), "stn_ext: ", name, " is on ",
                    coordinates.device(), " but input is on ", input.device());
}

}  // namespace

void check_grid_sample_args(const at::Tensor& input, const at::Tensor& grid,
                            const SampleConfig& cfg, const c10::optional<at::Tensor>& fill_value) {
  check_sampled_input(input);
  check_options(input, cfg, fill_value);
  const int64_t dims = input.dim() - 2;
  TORCH_CHECK_VALUE(grid.dim() == input.dim() && grid.size(-1) == dims, "stn_ext: grid must be (N, ",
                    dims == 2 ? "Ho, Wo, 2" : "Do, Ho, Wo, 3", ") for ", input.dim(),
                    "-D input, got shape ", grid.sizes());
  check_coordinates("grid", grid, input);
}

void check_theta(const at::Tensor& input, const at::Tensor& theta, at::IntArrayRef out_size) {
  const int64_t dims = input.dim() - 2;
  TORCH_CHECK_VALUE(theta.dim() == 3 && theta.size(1) == dims && theta.size(2) == dims + 1,
                    "stn_ext: theta must have shape (N, ", dims, ", ", dims + 1, ") for ",
                    input.dim(), "-D input, got ", theta.sizes());
  check_coordinates("theta", theta, input);
  TORCH_CHECK_VALUE(static_cast<int64_t>(out_size.size()) == dims,
                    "stn_ext: out_size must have ", dims, " entries, got ", out_size);
  for (const int64_t s : out_size) {
    TORCH_CHECK_VALUE(s >= 0, "stn_ext: out_size must be non-negative, got ", out_size);
  }
}

void check_affine_sample_args(const at::Tensor& input, const at::Tensor& theta,
                              at::IntArrayRef out_size, const SampleConfig& cfg,
                              const c10::optional<at::Tensor>& fill_value) {
  check_sampled_input(input);
  check_options(input, cfg, fill_value);
  check_theta(input, theta, out_size);
}

at::Tensor new_sampled_output(const at::Tensor& input, at::IntArrayRef out_size) {
  std::vector<int64_t> sizes = {input.size(0), input.size(1)};
  sizes.insert(sizes.end(), out_size.begin(), out_size.end());
  return with_huge_page_advice(
      at::empty(sizes, input.options().memory_format(output_memory_format(input))));
}

std::vector<int64_t> grid_points_size(const at::Tensor& grid) {
  return std::vector<int64_t>(grid.sizes().begin() + 1, grid.sizes().end() - 1);
}

std::vector<int64_t> spatial_size_of(const at::Tensor& t) {
  return std::vector<int64_t>(t.sizes().begin() + std::min<int64_t>(2, t.dim()), t.sizes().end());
}

void check_grad_output(const at::Tensor& grad_output, const at::Tensor& input,
                       at::IntArrayRef out_size) {
  std::vector<int64_t> expected = {input.size(0), input.size(1)};
  expected.insert(expected.end(), out_size.begin(), out_size.end());
  TORCH_CHECK_VALUE(grad_output.sizes() == at::IntArrayRef(expected),
                    "stn_ext: grad_output must have shape ", at::IntArrayRef(expected), ", got ",
                    grad_output.sizes());
  TORCH_CHECK_TYPE(grad_output.scalar_type() == input.scalar_type(),
                   "stn_ext: grad_output must have the dtype of input");
  TORCH_CHECK_VALUE(grad_output.device() == input.device(),
                    "stn_ext: grad_output must be on the input's device");
}

}  // namespace stn_ext
