// CPU kernels of the general sampling ops: stn_ext::grid_sample (a dense grid of sample points)
// and stn_ext::affine_sample (2-D or 3-D affine maps), every mode, padding and fill value.
//
// One kernel serves both ops, built from three parts kept apart:
// - a coordinate source (DenseGrid, AffineMap) gives each output point's normalised source
//   coordinates and takes their gradient back (to the grid per point, to theta per image);
// - an interpolation policy (csrc/interpolation.h) gives each axis' taps and weights; Stencil
//   is their tensor product over the 2 or 3 axes;
// - padding: border and reflection inside the policy's coordinates, zeros (or the fill value)
//   for taps outside the image.
// The forward pass is parallel over output points; the backward pass over images (grad_input
// is scattered: one image per thread keeps it deterministic for any thread count).
// The 2-D affine bilinear/nearest op without fill (stn_ext::affine_grid_sample) has its own
// faster kernels (affine_grid_sample_cpu.cpp).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <array>
#include <limits>
#include <vector>

#include "../affine_grid_sample.h"
#include "../grid_sample.h"
#include "../interpolation.h"

namespace stn_ext {
namespace {

// Sizes and strides of the spatial axes of an (N, C, *spatial) tensor, stored x first (the
// order of grid coordinates): axis 0 is the last dimension.
template <int kDim>
struct Spatial {
  std::array<int64_t, kDim> size, stride;
  int64_t n_stride, c_stride, channels;

  explicit Spatial(const at::Tensor& t)
      : n_stride(t.stride(0)), c_stride(t.stride(1)), channels(t.size(1)) {
    for (int a = 0; a < kDim; ++a) {
      size[a] = t.size(t.dim() - 1 - a);
      stride[a] = t.stride(t.dim() - 1 - a);
    }
  }
  int64_t points() const {
    int64_t p = 1;
    for (int a = 0; a < kDim; ++a) p *= size[a];
    return p;
  }
  // Axis positions of point p (x fastest) and its element offset.
  std::array<int64_t, kDim> position(int64_t p) const {
    std::array<int64_t, kDim> pos;
    for (int a = 0; a < kDim; ++a) {
      pos[a] = p % size[a];
      p /= size[a];
    }
    return pos;
  }
  int64_t offset(const std::array<int64_t, kDim>& pos) const {
    int64_t o = 0;
    for (int a = 0; a < kDim; ++a) o += pos[a] * stride[a];
    return o;
  }
};

// Coordinate source: a dense grid (N, *out, kDim) of normalised (x, y[, z]) coordinates, any
// strides. Its gradient is per point: written to grad_grid.
template <int kDim, typename T, typename scalar_t>
struct DenseGrid {
  static constexpr bool kPerImageGradient = false;
  const scalar_t* data;
  int64_t n_stride, coord_stride;
  std::array<int64_t, kDim> stride;  // of the output axes, x first

  explicit DenseGrid(const at::Tensor& grid)
      : data(grid.const_data_ptr<scalar_t>()), n_stride(grid.stride(0)),
        coord_stride(grid.stride(kDim + 1)) {
    for (int a = 0; a < kDim; ++a) stride[a] = grid.stride(kDim - a);
  }

  // Per-image state: nothing to load for a dense grid.
  struct Image {
    const DenseGrid& source;
    const scalar_t* points;
    void coordinates(const std::array<int64_t, kDim>& pos, T* xyz) const {
      const scalar_t* p = points;
      for (int a = 0; a < kDim; ++a) p += pos[a] * source.stride[a];
      for (int a = 0; a < kDim; ++a) xyz[a] = T(p[a * source.coord_stride]);
    }
  };
  Image image(int64_t n) const { return {*this, data + n * n_stride}; }
};

// Where DenseGrid's gradient goes: grad_grid, contiguous (N, *out, kDim).
template <int kDim, typename scalar_t>
struct GridGradient {
  scalar_t* data;
  int64_t points;
  template <typename T>
  void set(int64_t n, int64_t p, const T* g) const {
    scalar_t* out = data + (n * points + p) * kDim;
    for (int a = 0; a < kDim; ++a) out[a] = static_cast<scalar_t>(g[a]);
  }
};

// Coordinate source: an affine map theta (N, kDim, kDim + 1) applied to the base grid of
// F.affine_grid (linspace(-1, 1) per output axis). Its gradient is reduced per image.
template <int kDim, typename T, typename scalar_t>
struct AffineMap {
  static constexpr bool kPerImageGradient = true;
  const scalar_t* data;
  int64_t n_stride, row_stride, col_stride;
  std::array<std::vector<T>, kDim> base;  // base coordinates of each output axis, x first

  AffineMap(const at::Tensor& theta, const Spatial<kDim>& out, bool align_corners)
      : data(theta.const_data_ptr<scalar_t>()), n_stride(theta.stride(0)),
        row_stride(theta.stride(1)), col_stride(theta.stride(2)) {
    for (int a = 0; a < kDim; ++a) {
      base[a].resize(out.size[a]);
      for (int64_t i = 0; i < out.size[a]; ++i) {
        base[a][i] = base_coord<T>(i, out.size[a], align_corners);
      }
    }
  }

  struct Image {
    const AffineMap& source;
    T theta[kDim][kDim + 1];
    void coordinates(const std::array<int64_t, kDim>& pos, T* xyz) const {
      for (int r = 0; r < kDim; ++r) {
        // As F.affine_grid: base (x, y[, z], 1) times theta's row, summed in that order.
        T v = theta[r][0] * source.base[0][pos[0]];
        for (int c = 1; c < kDim; ++c) v += theta[r][c] * source.base[c][pos[c]];
        xyz[r] = v + theta[r][kDim];
      }
    }
    // Chain rule through the map: theta[r][c] takes g[r] times base coordinate c (1 for the
    // translation column).
    void add_gradient(const std::array<int64_t, kDim>& pos, const T* g, double* g_theta) const {
      for (int r = 0; r < kDim; ++r) {
        for (int c = 0; c < kDim; ++c) {
          g_theta[r * (kDim + 1) + c] += double(g[r]) * double(source.base[c][pos[c]]);
        }
        g_theta[r * (kDim + 1) + kDim] += double(g[r]);
      }
    }
  };
  Image image(int64_t n) const {
    Image im{*this, {}};
    const scalar_t* t = data + n * n_stride;
    for (int r = 0; r < kDim; ++r) {
      for (int c = 0; c <= kDim; ++c) im.theta[r][c] = T(t[r * row_stride + c * col_stride]);
    }
    return im;
  }
};

// The stencil of one sample point: the tensor product of its axes' taps (x fastest), with each
// tap's offset in an input plane, weight and whether it is inside the image, and for the
// backward pass each weight's derivative along every axis.
template <int kDim, typename Policy, typename T>
struct Stencil {
  static constexpr int kAxisTaps = Policy::kTaps;
  static constexpr int kTaps = kDim == 2 ? kAxisTaps * kAxisTaps : kAxisTaps * kAxisTaps * kAxisTaps;

  enum class Kind { Undefined, Outside, Taps };
  Kind kind;
  T d_coord[kDim];  // d(pixel coordinate) / d(normalised coordinate), per axis
  AxisTaps<T, kAxisTaps> axis[kDim];

  // The stencil of the point at normalised coordinates xyz in an input of geometry `in`.
  static Stencil at(const T* xyz, const Spatial<kDim>& in, const SampleConfig& cfg) {
    Stencil s;
    T coord[kDim];
    bool undefined = false, far = false;
    for (int a = 0; a < kDim; ++a) {
      coord[a] = axis_coordinate<Policy::kCoordinate>(xyz[a], in.size[a], cfg, &s.d_coord[a]);
      undefined |= coord[a] - coord[a] != T(0);  // not finite: see is_undefined
      far |= axis_far_outside<kAxisTaps>(coord[a], in.size[a]);
    }
    // Border and reflection keep every tap inside (nearest and linear fold the point; cubic
    // folds its taps), so only zeros padding has far points.
    s.kind = undefined ? Kind::Undefined
             : far && cfg.padding == Padding::Zeros ? Kind::Outside : Kind::Taps;
    if (s.kind != Kind::Taps) return s;
    for (int a = 0; a < kDim; ++a) s.axis[a] = Policy::taps(coord[a], in.size[a], cfg);
    return s;
  }

  // Tap k's axis indices (x fastest).
  static std::array<int, kDim> tap_axes(int k) {
    std::array<int, kDim> t;
    for (int a = 0; a < kDim; ++a) {
      t[a] = k % kAxisTaps;
      k /= kAxisTaps;
    }
    return t;
  }

  // Offsets (in an input plane of strides `in`), weights and insideness of all taps.
  void flatten(const Spatial<kDim>& in, int64_t* offset, T* weight, bool* inside) const {
    for (int k = 0; k < kTaps; ++k) {
      const std::array<int, kDim> t = tap_axes(k);
      // Weights multiplied x, y, z in turn, as ATen's corner weights.
      T w = axis[0].weight[t[0]];
      bool in_image = axis[0].inside[t[0]];
      int64_t o = in_image ? axis[0].index[t[0]] * in.stride[0] : 0;
      for (int a = 1; a < kDim; ++a) {
        w *= axis[a].weight[t[a]];
        in_image &= axis[a].inside[t[a]];
        o += axis[a].inside[t[a]] ? axis[a].index[t[a]] * in.stride[a] : 0;
      }
      offset[k] = o;
      weight[k] = w;
      inside[k] = in_image;
    }
  }

  // d(weight of tap k) / d(pixel coordinate of axis a), for every tap and axis.
  void weight_derivatives(T (*d_weight)[kDim]) const {
    for (int k = 0; k < kTaps; ++k) {
      const std::array<int, kDim> t = tap_axes(k);
      for (int a = 0; a < kDim; ++a) {
        T d = T(1);
        for (int b = 0; b < kDim; ++b) {
          d *= b == a ? axis[b].d_weight[t[b]] : axis[b].weight[t[b]];
        }
        d_weight[k][a] = d;
      }
    }
  }
};

// Fill values as the kernels read them: one per channel in the compute type, or none (taps
// outside read zero).
template <typename T>
std::vector<T> fill_values(const c10::optional<at::Tensor>& fill) {
  std::vector<T> values;
  if (!fill.has_value()) return values;
  const at::Tensor f = fill->to(at::kDouble).contiguous();
  const double* p = f.const_data_ptr<double>();
  values.assign(p, p + f.numel());
  return values;
}

template <int kDim, typename Policy, Padding kPadding, typename scalar_t, typename Source>
void forward_kernel(const at::Tensor& input, const Source& source, const std::vector<at::opmath_type<scalar_t>>& fill,
                    at::Tensor& output, bool align_corners) {
  using T = at::opmath_type<scalar_t>;
  using S = Stencil<kDim, Policy, T>;
  const SampleConfig cfg{Policy::kMode, kPadding, align_corners};
  const Spatial<kDim> in(input), out(output);
  const int64_t points = out.points(), channels = in.channels;
  const scalar_t* in_ptr = input.const_data_ptr<scalar_t>();
  scalar_t* out_ptr = output.mutable_data_ptr<scalar_t>();
  const bool has_fill = !fill.empty();
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, channels * S::kTaps));
  at::parallel_for(0, output.size(0) * points, grain,
                   [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t n = i / points, p = i % points;
      const std::array<int64_t, kDim> pos = out.position(p);
      T xyz[kDim];
      source.image(n).coordinates(pos, xyz);
      const S s = S::at(xyz, in, cfg);
      scalar_t* o = out_ptr + n * out.n_stride + out.offset(pos);
      if (s.kind != S::Kind::Taps) {
        for (int64_t c = 0; c < channels; ++c) {
          o[c * out.c_stride] = static_cast<scalar_t>(
              s.kind == S::Kind::Undefined ? std::numeric_limits<T>::quiet_NaN()
              : has_fill                   ? fill[c] : T(0));
        }
        continue;
      }
      int64_t offset[S::kTaps];
      T weight[S::kTaps];
      bool inside[S::kTaps];
      s.flatten(in, offset, weight, inside);
      const scalar_t* image = in_ptr + n * in.n_stride;
      for (int64_t c = 0; c < channels; ++c) {
        const scalar_t* plane = image + c * in.c_stride;
        const T outside_value = has_fill ? fill[c] : T(0);
        T acc = T(0);
        for (int k = 0; k < S::kTaps; ++k) {
          if (inside[k]) {
            acc += weight[k] * T(plane[offset[k]]);
          } else if (has_fill) {
            acc += weight[k] * outside_value;
          }
        }
        o[c * out.c_stride] = static_cast<scalar_t>(acc);
      }
    }
  });
}

// grad_in_t is the opmath type (float for half and bfloat16: the caller casts back).
// per_image_gradient: 2-D or 3-D theta gradients, kDim * (kDim + 1) doubles per image
// (AffineMap); grid_gradient: grad_grid (DenseGrid).
template <int kDim, typename Policy, Padding kPadding, typename scalar_t, typename Source,
          typename grad_in_t>
void backward_kernel(const at::Tensor& grad_output, const at::Tensor& input, const Source& source,
                     const std::vector<at::opmath_type<scalar_t>>& fill, bool align_corners,
                     grad_in_t* grad_in_ptr, const Spatial<kDim>* grad_in_geometry,
                     double* per_image_gradient,
                     const GridGradient<kDim, scalar_t>* grid_gradient) {
  using T = at::opmath_type<scalar_t>;
  using S = Stencil<kDim, Policy, T>;
  constexpr int kThetaSize = kDim * (kDim + 1);
  const SampleConfig cfg{Policy::kMode, kPadding, align_corners};
  const Spatial<kDim> in(input), gout(grad_output);
  const int64_t points = gout.points(), channels = in.channels;
  const scalar_t* in_ptr = input.const_data_ptr<scalar_t>();
  const scalar_t* gout_ptr = grad_output.const_data_ptr<scalar_t>();
  const bool has_fill = !fill.empty();
  const bool want_coordinates = per_image_gradient != nullptr || grid_gradient != nullptr;
  // Nearest sampling is piecewise constant: its coordinate gradient is zero, nothing to compute.
  const bool coordinate_work = want_coordinates && Policy::kMode != Interpolation::Nearest;

  at::parallel_for(0, input.size(0), 1, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const auto image = source.image(n);
      double g_theta[kThetaSize] = {};
      bool image_undefined = false;
      for (int64_t p = 0; p < points; ++p) {
        const std::array<int64_t, kDim> pos = gout.position(p);
        T xyz[kDim];
        image.coordinates(pos, xyz);
        const S s = S::at(xyz, in, cfg);
        T g_coord[kDim] = {};
        if (s.kind == S::Kind::Undefined && coordinate_work) {
          for (int a = 0; a < kDim; ++a) g_coord[a] = std::numeric_limits<T>::quiet_NaN();
          image_undefined = true;
        }
        if (s.kind == S::Kind::Taps) {
          int64_t offset[S::kTaps], gin_offset[S::kTaps];
          T weight[S::kTaps];
          bool inside[S::kTaps];
          T d_weight[S::kTaps][kDim];
          s.flatten(in, offset, weight, inside);
          if (grad_in_ptr != nullptr) s.flatten(*grad_in_geometry, gin_offset, weight, inside);
          if (coordinate_work) s.weight_derivatives(d_weight);
          const scalar_t* g_ptr = gout_ptr + n * gout.n_stride + gout.offset(pos);
          const scalar_t* in_image = in_ptr + n * in.n_stride;
          T g_pixel[kDim] = {};
          for (int64_t c = 0; c < channels; ++c) {
            const T g = T(g_ptr[c * gout.c_stride]);
            if (grad_in_ptr != nullptr) {
              grad_in_t* plane = grad_in_ptr + n * grad_in_geometry->n_stride +
                                 c * grad_in_geometry->c_stride;
              for (int k = 0; k < S::kTaps; ++k) {
                if (inside[k]) plane[gin_offset[k]] += static_cast<grad_in_t>(weight[k] * g);
              }
            }
            if (coordinate_work) {
              const scalar_t* plane = in_image + c * in.c_stride;
              for (int k = 0; k < S::kTaps; ++k) {
                // Without a fill, taps outside read zero and add nothing, even where g is not
                // finite (as ATen, which skips them).
                if (!inside[k] && !has_fill) continue;
                const T v = inside[k] ? T(plane[offset[k]]) : fill[c];
                for (int a = 0; a < kDim; ++a) g_pixel[a] += g * v * d_weight[k][a];
              }
            }
          }
          for (int a = 0; a < kDim; ++a) g_coord[a] = g_pixel[a] * s.d_coord[a];
        }
        if constexpr (Source::kPerImageGradient) {
          if (per_image_gradient != nullptr) image.add_gradient(pos, g_coord, g_theta);
        } else {
          if (grid_gradient != nullptr) grid_gradient->set(n, p, g_coord);
        }
      }
      if (per_image_gradient != nullptr) {
        for (int k = 0; k < kThetaSize; ++k) {
          per_image_gradient[n * kThetaSize + k] =
              image_undefined ? std::numeric_limits<double>::quiet_NaN() : g_theta[k];
        }
      }
    }
  });
}

// Calls f(dim, policy, padding) with each as a compile-time constant: every combination the
// general ops take. Bicubic is 2-D only (as in PyTorch).
template <typename F>
void with_static_config(int64_t dim, const SampleConfig& cfg, F&& f) {
  auto with_padding = [&](auto dim_c, auto policy) {
    switch (cfg.padding) {
      case Padding::Zeros:
        return f(dim_c, policy, std::integral_constant<Padding, Padding::Zeros>{});
      case Padding::Border:
        return f(dim_c, policy, std::integral_constant<Padding, Padding::Border>{});
      case Padding::Reflection:
        return f(dim_c, policy, std::integral_constant<Padding, Padding::Reflection>{});
    }
  };
  auto with_policy = [&](auto dim_c) {
    switch (cfg.mode) {
      case Interpolation::Nearest:
        return with_padding(dim_c, NearestPolicy{});
      case Interpolation::Bilinear:
        return with_padding(dim_c, LinearPolicy{});
      case Interpolation::Bicubic:
        if constexpr (decltype(dim_c)::value == 2) {
          return with_padding(dim_c, CubicPolicy{});
        } else {
          TORCH_CHECK_NOT_IMPLEMENTED(false, "stn_ext: mode 'bicubic' takes 4-D input (as in "
                                             "PyTorch), got ", decltype(dim_c)::value + 2, "-D");
        }
    }
  };
  if (dim == 2) {
    with_policy(std::integral_constant<int, 2>{});
  } else {
    with_policy(std::integral_constant<int, 3>{});
  }
}

at::Tensor new_output(const at::Tensor& input, at::IntArrayRef out_size) {
  std::vector<int64_t> sizes = {input.size(0), input.size(1)};
  sizes.insert(sizes.end(), out_size.begin(), out_size.end());
  return at::empty(sizes, input.options().memory_format(output_memory_format(input)));
}

template <typename MakeSource>
at::Tensor sample_cpu(const at::Tensor& input, at::IntArrayRef out_size, const SampleConfig& cfg,
                      const c10::optional<at::Tensor>& fill, MakeSource make_source) {
  at::Tensor output = new_output(input, out_size);
  if (output.numel() == 0) return output;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "sample_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const std::vector<T> fill_of_channel = fill_values<T>(fill);
    with_static_config(input.dim() - 2, cfg, [&](auto dim, auto policy, auto padding) {
      constexpr int kDim = decltype(dim)::value;
      const auto source = make_source(dim, scalar_t{}, Spatial<kDim>(output));
      forward_kernel<kDim, decltype(policy), decltype(padding)::value, scalar_t>(
          input, source, fill_of_channel, output, cfg.align_corners);
    });
  });
  return output;
}

// The backward pass of either op: grad_input (if output_mask[0]) and the coordinate source's
// gradient (if output_mask[1]), shaped as `coordinates` (the grid or theta).
template <typename MakeSource>
std::tuple<at::Tensor, at::Tensor> sample_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& coordinates,
    const SampleConfig& cfg, const c10::optional<at::Tensor>& fill,
    std::array<bool, 2> output_mask, bool per_image, MakeSource make_source) {
  at::Tensor grad_input_acc =
      output_mask[0] ? at::zeros_like(input, input.options().dtype(at::toOpMathType(input.scalar_type())),
                                      output_memory_format(input))
                     : at::empty({0}, input.options());
  // Theta gradients are reduced in double, as the 2-D affine kernels do.
  at::Tensor grad_coordinates =
      !output_mask[1] ? at::empty({0}, coordinates.options())
      : per_image     ? at::zeros(coordinates.sizes(), coordinates.options().dtype(at::kDouble))
                      : at::zeros(coordinates.sizes(), coordinates.options());
  if (grad_output.numel() != 0 && input.size(1) != 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, input.scalar_type(), "sample_backward_cpu", [&] {
          using T = at::opmath_type<scalar_t>;
          const std::vector<T> fill_of_channel = fill_values<T>(fill);
          with_static_config(input.dim() - 2, cfg, [&](auto dim, auto policy, auto padding) {
            constexpr int kDim = decltype(dim)::value;
            const Spatial<kDim> gout(grad_output);
            const auto source = make_source(dim, scalar_t{}, gout);
            const Spatial<kDim> gin(output_mask[0] ? grad_input_acc : input);
            T* gin_ptr = output_mask[0] ? grad_input_acc.mutable_data_ptr<T>() : nullptr;
            const GridGradient<kDim, scalar_t> grid_gradient{
                output_mask[1] && !per_image ? grad_coordinates.mutable_data_ptr<scalar_t>() : nullptr,
                gout.points()};
            backward_kernel<kDim, decltype(policy), decltype(padding)::value, scalar_t>(
                grad_output, input, source, fill_of_channel, cfg.align_corners, gin_ptr, &gin,
                output_mask[1] && per_image ? grad_coordinates.mutable_data_ptr<double>() : nullptr,
                output_mask[1] && !per_image ? &grid_gradient : nullptr);
          });
        });
  }
  return {grad_input_acc.to(input.scalar_type()), grad_coordinates.to(coordinates.scalar_type())};
}

// The dense-grid source of grid_sample; contiguous so that grad_grid can be written per point.
auto dense_grid_source(const at::Tensor& grid) {
  return [&grid](auto dim, auto scalar, const auto&) {
    return DenseGrid<decltype(dim)::value, at::opmath_type<decltype(scalar)>, decltype(scalar)>(grid);
  };
}

auto affine_map_source(const at::Tensor& theta, bool align_corners) {
  return [&theta, align_corners](auto dim, auto scalar, const auto& out) {
    return AffineMap<decltype(dim)::value, at::opmath_type<decltype(scalar)>, decltype(scalar)>(
        theta, out, align_corners);
  };
}

std::vector<int64_t> grid_points_size(const at::Tensor& grid) {
  return std::vector<int64_t>(grid.sizes().begin() + 1, grid.sizes().end() - 1);
}

at::Tensor grid_sample_cpu(const at::Tensor& input, const at::Tensor& grid, c10::string_view mode,
                           c10::string_view padding_mode, bool align_corners,
                           const c10::optional<at::Tensor>& fill_value) {
  const SampleConfig cfg = parse_general_config(mode, padding_mode, align_corners);
  check_grid_sample_args(input, grid, cfg, fill_value);
  return sample_cpu(input, grid_points_size(grid), cfg, fill_value, dense_grid_source(grid));
}

std::tuple<at::Tensor, at::Tensor> grid_sample_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& grid,
    c10::string_view mode, c10::string_view padding_mode, bool align_corners,
    const c10::optional<at::Tensor>& fill_value, std::array<bool, 2> output_mask) {
  const SampleConfig cfg = parse_general_config(mode, padding_mode, align_corners);
  check_grid_sample_args(input, grid, cfg, fill_value);
  check_grad_output(grad_output, input, grid_points_size(grid));
  return sample_backward_cpu(grad_output, input, grid, cfg, fill_value, output_mask,
                             /*per_image=*/false, dense_grid_source(grid));
}

at::Tensor affine_sample_cpu(const at::Tensor& input, const at::Tensor& theta,
                             at::IntArrayRef out_size, c10::string_view mode,
                             c10::string_view padding_mode, bool align_corners,
                             const c10::optional<at::Tensor>& fill_value) {
  const SampleConfig cfg = parse_general_config(mode, padding_mode, align_corners);
  check_affine_sample_args(input, theta, out_size, cfg, fill_value);
  return sample_cpu(input, out_size, cfg, fill_value, affine_map_source(theta, align_corners));
}

std::tuple<at::Tensor, at::Tensor> affine_sample_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& theta,
    c10::string_view mode, c10::string_view padding_mode, bool align_corners,
    const c10::optional<at::Tensor>& fill_value, std::array<bool, 2> output_mask) {
  const SampleConfig cfg = parse_general_config(mode, padding_mode, align_corners);
  const std::vector<int64_t> size(grad_output.sizes().begin() + std::min<int64_t>(2, grad_output.dim()),
                                  grad_output.sizes().end());
  check_affine_sample_args(input, theta, size, cfg, fill_value);
  check_grad_output(grad_output, input, size);
  return sample_backward_cpu(grad_output, input, theta, cfg, fill_value, output_mask,
                             /*per_image=*/true, affine_map_source(theta, align_corners));
}

}  // namespace

TORCH_LIBRARY_IMPL(stn_ext, CPU, m) {
  m.impl("grid_sample", &grid_sample_cpu);
  m.impl("grid_sample_backward", &grid_sample_backward_cpu);
  m.impl("affine_sample", &affine_sample_cpu);
  m.impl("affine_sample_backward", &affine_sample_backward_cpu);
}

}  // namespace stn_ext
