// Op-level helpers of the general sampling ops, stn_ext::grid_sample (dense grids) and
// stn_ext::affine_sample (2-D and 3-D affine maps): schemas, option parsing and argument checks.
// The Python API validates arguments with friendlier messages first; these checks keep direct
// torch.ops callers memory-safe.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

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

}  // namespace stn_ext
