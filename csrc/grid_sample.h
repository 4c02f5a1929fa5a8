// Op-level helpers of the general sampling ops, stn_ext::grid_sample (dense grids) and
// stn_ext::affine_sample (2-D and 3-D affine maps): schemas, option parsing and argument checks.
// The Python API validates arguments with friendlier messages first; these checks keep direct
// torch.ops callers memory-safe.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>
#include <torch/library.h>

#include <array>
#include <tuple>
#include <vector>

#include "sampling_math.h"

namespace stn_ext {

// fill_value: None, or one value per channel (1-D, C elements, on the input's device) that taps
// outside the image read instead of zero; only with zeros padding.
inline constexpr const char* kGridSampleSchema =
    "grid_sample(Tensor input, Tensor grid, str mode, str padding_mode, bool align_corners, "
    "Tensor? fill_value) -> Tensor";
// output_mask says which of (grad_input, grad_grid) to compute; one not asked for comes back as
// an empty tensor.
inline constexpr const char* kGridSampleBackwardSchema =
    "grid_sample_backward(Tensor grad_output, Tensor input, Tensor grid, str mode, "
    "str padding_mode, bool align_corners, Tensor? fill_value, bool[2] output_mask) "
    "-> (Tensor, Tensor)";
// out_size: the output's spatial size, (Ho, Wo) for 4-D input and theta (N, 2, 3), (Do, Ho, Wo)
// for 5-D input and theta (N, 3, 4).
inline constexpr const char* kAffineSampleSchema =
    "affine_sample(Tensor input, Tensor theta, SymInt[] out_size, str mode, str padding_mode, "
    "bool align_corners, Tensor? fill_value) -> Tensor";
inline constexpr const char* kAffineSampleBackwardSchema =
    "affine_sample_backward(Tensor grad_output, Tensor input, Tensor theta, str mode, "
    "str padding_mode, bool align_corners, Tensor? fill_value, bool[2] output_mask) "
    "-> (Tensor, Tensor)";

// Every mode and padding by name ("nearest", "bilinear", "bicubic"; "zeros", "border",
// "reflection").
SampleConfig parse_general_config(c10::string_view mode, c10::string_view padding_mode,
                                  bool align_corners);

// input must be (N, C, *spatial), 2 or 3 non-empty spatial axes, floating.
void check_sampled_input(const at::Tensor& input);

// theta must be (N, dims, dims + 1) for input of `dims` spatial axes, of its batch, dtype and
// device; out_size `dims` non-negative entries. (input: check_sampled_input)
void check_theta(const at::Tensor& input, const at::Tensor& theta, at::IntArrayRef out_size);

void check_grid_sample_args(const at::Tensor& input, const at::Tensor& grid,
                            const SampleConfig& cfg, const c10::optional<at::Tensor>& fill_value);

void check_affine_sample_args(const at::Tensor& input, const at::Tensor& theta,
                              at::IntArrayRef out_size, const SampleConfig& cfg,
                              const c10::optional<at::Tensor>& fill_value);

// The output of sampling `input` at out_size points per image: (N, C, *out_size), in the layout
// every backend writes (output_memory_format).
at::Tensor new_sampled_output(const at::Tensor& input, at::IntArrayRef out_size);

// The spatial size of a grid's points (N, *out_size, dims): grid_sample's out_size.
std::vector<int64_t> grid_points_size(const at::Tensor& grid);

// The spatial size of an (N, C, *spatial) tensor (of any rank: the checks report a wrong one).
std::vector<int64_t> spatial_size_of(const at::Tensor& t);

// grad_output must be (N, C, *out_size) of the input's N, C, dtype and device.
void check_grad_output(const at::Tensor& grad_output, const at::Tensor& input,
                       at::IntArrayRef out_size);

// The general ops' four kernels of one backend (CPU, CUDA), from what the backend implements;
// the option parsing and the checks, the same everywhere, are written here once. Backend is a
// tag type whose namespace declares (found by argument-dependent lookup):
//   at::Tensor sample(Backend, input, out_size, cfg, fill_value, make_source);
//   std::tuple<at::Tensor, at::Tensor> sample_backward(Backend, grad_output, input,
//       coordinates, cfg, fill_value, output_mask, per_image, make_source);
//   dense_grid_source(Backend, grid), affine_map_source(Backend, theta, align_corners): the
//       make_source of each op (make_source(dim, scalar, output geometry) -> its source).
template <typename Backend>
struct GeneralOps {
  static at::Tensor grid_sample(const at::Tensor& input, const at::Tensor& grid,
                                c10::string_view mode, c10::string_view padding_mode,
                                bool align_corners, const c10::optional<at::Tensor>& fill_value) {
    const SampleConfig cfg = parse_general_config(mode, padding_mode, align_corners);
    check_grid_sample_args(input, grid, cfg, fill_value);
    return sample(Backend{}, input, grid_points_size(grid), cfg, fill_value,
                  dense_grid_source(Backend{}, grid));
  }

  static std::tuple<at::Tensor, at::Tensor> grid_sample_backward(
      const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& grid,
      c10::string_view mode, c10::string_view padding_mode, bool align_corners,
      const c10::optional<at::Tensor>& fill_value, std::array<bool, 2> output_mask) {
    const SampleConfig cfg = parse_general_config(mode, padding_mode, align_corners);
    check_grid_sample_args(input, grid, cfg, fill_value);
    check_grad_output(grad_output, input, grid_points_size(grid));
    return sample_backward(Backend{}, grad_output, input, grid, cfg, fill_value, output_mask,
                           /*per_image=*/false, dense_grid_source(Backend{}, grid));
  }

  static at::Tensor affine_sample(const at::Tensor& input, const at::Tensor& theta,
                                  at::IntArrayRef out_size, c10::string_view mode,
                                  c10::string_view padding_mode, bool align_corners,
                                  const c10::optional<at::Tensor>& fill_value) {
    const SampleConfig cfg = parse_general_config(mode, padding_mode, align_corners);
    check_affine_sample_args(input, theta, out_size, cfg, fill_value);
    return sample(Backend{}, input, out_size, cfg, fill_value,
                  affine_map_source(Backend{}, theta, align_corners));
  }

  static std::tuple<at::Tensor, at::Tensor> affine_sample_backward(
      const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& theta,
      c10::string_view mode, c10::string_view padding_mode, bool align_corners,
      const c10::optional<at::Tensor>& fill_value, std::array<bool, 2> output_mask) {
    const SampleConfig cfg = parse_general_config(mode, padding_mode, align_corners);
    const std::vector<int64_t> size = spatial_size_of(grad_output);
    check_affine_sample_args(input, theta, size, cfg, fill_value);
    check_grad_output(grad_output, input, size);
    return sample_backward(Backend{}, grad_output, input, theta, cfg, fill_value, output_mask,
                           /*per_image=*/true, affine_map_source(Backend{}, theta, align_corners));
  }

  // Registers the four with a library's dispatch key (m: TORCH_LIBRARY_IMPL's).
  static void register_kernels(torch::Library& m) {
    m.impl("grid_sample", &grid_sample);
    m.impl("grid_sample_backward", &grid_sample_backward);
    m.impl("affine_sample", &affine_sample);
    m.impl("affine_sample_backward", &affine_sample_backward);
  }
};

}  // namespace stn_ext
