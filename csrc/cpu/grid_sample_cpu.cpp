// CPU kernels of the general sampling ops: stn_ext::grid_sample (a dense grid of sample points)
// and stn_ext::affine_sample (2-D or 3-D affine maps), every mode, padding and fill value.
//
// One kernel serves both ops, built from three parts kept apart:
// - a coordinate source (DenseGrid, AffineMap) gives each output point's normalised source
//   coordinates, a row of points at a time, and takes their gradient back (to the grid per
//   point, to theta per image);
// - an interpolation policy (csrc/interpolation.h) gives each axis' taps and weights;
//   RowStencil is their tensor product over the 2 or 3 axes, for a row of points at once
//   (structure-of-arrays loops, as the fused kernels resolve rows);
// - padding: border and reflection inside the policy's coordinates, zeros (or the fill value)
//   for taps outside the image.
// The forward pass is parallel over output rows; the backward pass over images (grad_input is
// scattered: one image per thread keeps it deterministic for any thread count).
// 2-D bilinear and nearest sampling without a fill value, of either op, runs the faster row
// kernels of stn_ext::affine_grid_sample instead (row_kernels.h).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "../affine_grid_sample.h"
#include "../grid_sample.h"
#include "../interpolation.h"
#include "huge_pages.h"
#include "row_kernels.h"

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
  // Rows: the points of one image with the same position on every axis but x.
  int64_t rows() const { return points() / size[0]; }
  // Axis positions of the first point of row r of an image (x = 0).
  std::array<int64_t, kDim> row_position(int64_t r) const {
    std::array<int64_t, kDim> pos{};
    for (int a = 1; a < kDim; ++a) {
      pos[a] = r % size[a];
      r /= size[a];
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
// strides. Its gradient is per point: written to grad_grid (GridGradient).
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

  struct Image {
    const DenseGrid& source;
    const scalar_t* points;
    // The normalised coordinates of the `width` points of the row at `row`: xyz[a][w].
    void row_coordinates(const std::array<int64_t, kDim>& row, int64_t width,
                         T* const* xyz) const {
      const scalar_t* first = points;
      for (int a = 1; a < kDim; ++a) first += row[a] * source.stride[a];
      const int64_t step = source.stride[0];
      for (int a = 0; a < kDim; ++a) {
        const scalar_t* __restrict in = first + a * source.coord_stride;
        T* __restrict out = xyz[a];
        for (int64_t w = 0; w < width; ++w) out[w] = T(in[w * step]);
      }
    }
  };
  Image image(int64_t n) const { return {*this, data + n * n_stride}; }
};

// Where DenseGrid's gradient goes: grad_grid, contiguous (N, *out, kDim).
template <int kDim, typename scalar_t>
struct GridGradient {
  scalar_t* data;
  int64_t points;
  // The gradients g[a][w] of the row of points [first_point, first_point + width) of image n.
  template <typename T>
  void set_row(int64_t n, int64_t first_point, int64_t width, const T* const* g) const {
    scalar_t* out = data + (n * points + first_point) * kDim;
    for (int64_t w = 0; w < width; ++w) {
      for (int a = 0; a < kDim; ++a) out[w * kDim + a] = static_cast<scalar_t>(g[a][w]);
    }
  }
};

// Coordinate source: an affine map theta (N, kDim, kDim + 1) applied to the base grid of
// F.affine_grid (linspace(-1, 1) per output axis). Its gradient is reduced per image.
template <int kDim, typename T, typename scalar_t>
struct AffineMap {
  static constexpr bool kPerImageGradient = true;
  static constexpr int kThetaSize = kDim * (kDim + 1);
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

    void row_coordinates(const std::array<int64_t, kDim>& row, int64_t width,
                         T* const* xyz) const {
      const T* __restrict base_x = source.base[0].data();
      for (int r = 0; r < kDim; ++r) {
        // As F.affine_grid: base (x, y[, z], 1) times theta's row, summed in that order (the
        // products of the row's constant coordinates are the same for every point).
        T row_terms[kDim + 1];
        for (int c = 1; c < kDim; ++c) row_terms[c] = theta[r][c] * source.base[c][row[c]];
        row_terms[kDim] = theta[r][kDim];
        const T t0 = theta[r][0];
        T* __restrict out = xyz[r];
        for (int64_t w = 0; w < width; ++w) {
          T v = t0 * base_x[w];
          for (int c = 1; c <= kDim; ++c) v += row_terms[c];
          out[w] = v;
        }
      }
    }

    // Chain rule through the map: theta[r][c] takes g[r] times base coordinate c (1 for the
    // translation column), summed over the row in double.
    void add_row_gradient(const std::array<int64_t, kDim>& row, int64_t width, const T* const* g,
                          double* g_theta) const {
      const T* __restrict base_x = source.base[0].data();
      for (int r = 0; r < kDim; ++r) {
        const T* __restrict gr = g[r];
        double sum_x = 0, sum = 0;
        for (int64_t w = 0; w < width; ++w) {
          sum_x += double(gr[w]) * double(base_x[w]);
          sum += double(gr[w]);
        }
        g_theta[r * (kDim + 1)] += sum_x;
        for (int c = 1; c < kDim; ++c) {
          g_theta[r * (kDim + 1) + c] += sum * double(source.base[c][row[c]]);
        }
        g_theta[r * (kDim + 1) + kDim] += sum;
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


// The stencils of one row of sample points, in structure-of-arrays form so that the per-point
// coordinate and weight math runs in simple loops over the row: per axis, each axis tap's index,
// insideness, weight and weight derivative; then the tensor product over the axes (flatten):
// tap k (x fastest) of point w has offset[k][w] in an input plane, weight[k][w], and bit k of
// mask[w] says whether it is inside the image.
template <int kDim, typename Policy, typename T>
struct RowStencil {
  static constexpr int kAxisTaps = Policy::kTaps;
  static constexpr int kTaps = power(kAxisTaps, kDim);
  // Whether the kernels sum a point's taps separably, from the per-axis arrays (resolve_axes_and_
  // shares, separable_sum), or tap by tap (resolve). Bicubic's 16 taps are summed separably;
  // with 1 or 2 taps an axis, loading a point's axis arrays costs more than the weight products
  // it saves.
  static constexpr bool kSeparable = kAxisTaps > 2;
  static_assert(kTaps <= 31, "mask bits");
  static constexpr int32_t kAllInside = (1 << kTaps) - 1;

  explicit RowStencil(int64_t width)
      : width(width), coord(kDim * width), d_coord(kDim * width), status(width),
        axis_index(kDim * kAxisTaps * width), axis_offset(kDim * kAxisTaps * width),
        axis_inside(kDim * kAxisTaps * width), axis_weight(kDim * kAxisTaps * width),
        axis_d_weight(kDim * kAxisTaps * width), taps_inside(width), offset(kTaps * width),
        weight(kTaps * width), mask(width) {}

  // Where the coordinate source writes the row's normalised coordinates (axis a at [a]).
  std::array<T*, kDim> coordinates() {
    std::array<T*, kDim> xyz;
    for (int a = 0; a < kDim; ++a) xyz[a] = coord.data() + a * width;
    return xyz;
  }

  // The stencils of the row whose normalised coordinates are in coordinates(), in an input of
  // geometry `in`; offsets for planes of strides `in`.
  void resolve(const Spatial<kDim>& in, const SampleConfig& cfg) {
    resolve_axes(in, cfg);
    tap_weights_and_mask();
    flatten(in, offset.data());
  }

  // The part of resolve() a separable gather needs (see separable_sum): each axis tap's index,
  // insideness and weight, and its share of an offset in planes of strides `in` (axis_offset).
  void resolve_axes_and_shares(const Spatial<kDim>& in, const SampleConfig& cfg) {
    resolve_axes(in, cfg);
    axis_shares(in);
  }

  // The padding is a constant in the loops (no switch inside them); align_corners only scales.
  // (The forward pass has no use for the derivatives, but without their stores these loops
  // vectorised worse and ran slower.)
  void resolve_axes(const Spatial<kDim>& in, const SampleConfig& cfg) {
    switch (cfg.padding) {
      case Padding::Zeros:
        return resolve_axes<Padding::Zeros>(in, cfg.align_corners);
      case Padding::Border:
        return resolve_axes<Padding::Border>(in, cfg.align_corners);
      case Padding::Reflection:
        return resolve_axes<Padding::Reflection>(in, cfg.align_corners);
    }
  }

  // Few loops, each over the whole row: a row costs about a loop's overhead per loop, so the
  // per-axis work is done in one loop per axis and the per-tap work in one loop per tap.
  template <Padding kPadding>
  void resolve_axes(const Spatial<kDim>& in, bool align_corners) {
    const SampleConfig cfg{Policy::kMode, kPadding, align_corners};
    // Members as locals throughout: stores through the arrays could otherwise alias *this, which
    // makes the compiler reload every member in every iteration and keeps the loops scalar.
    const int64_t width = this->width;
    T* __restrict coords = coord.data();
    T* __restrict d_coords = d_coord.data();
    int32_t* __restrict st = status.data();
    // Pixel coordinates, and each point's status: the worst of its axes'.
    for (int a = 0; a < kDim; ++a) {
      T* __restrict c = coords + a * width;
      T* __restrict d = d_coords + a * width;
      const int64_t size = in.size[a];
      for (int64_t w = 0; w < width; ++w) {
        const T pixel = axis_coordinate<Policy::kCoordinate>(c[w], size, cfg, &d[w]);
        c[w] = pixel;
        const int32_t axis = axis_status<kAxisTaps>(pixel, size, kPadding);
        st[w] = a == 0 ? axis : std::max(st[w], axis);
      }
    }
    int32_t* __restrict any_inside = taps_inside.data();
    for (int a = 0; a < kDim; ++a) {
      T* __restrict c = coords + a * width;
      const int64_t size = in.size[a];
      // A point without taps takes its taps where they are harmless (outside, or clipped
      // inside), so the tap loops need no special case; its status only gets worse.
      for (int64_t w = 0; w < width; ++w) c[w] = st[w] != kHasTaps ? T(-kAxisTaps - 2) : c[w];
      // One loop per tap, each computing the point's whole stencil and keeping that tap (the
      // compiler drops the rest): with a loop over the taps inside the loop over points, GCC
      // leaves the stencil in memory and the loop scalar.
      [&]<int... kTap>(std::integer_sequence<int, kTap...>) {
        (axis_tap_loop<kTap>(a, c, size, cfg, any_inside), ...);
      }(std::make_integer_sequence<int, kAxisTaps>{});
      // The status the axis' taps give (taps_status): kOutside where none of them is inside.
      for (int64_t w = 0; w < width; ++w) {
        st[w] = std::max<int32_t>(st[w], int32_t(kOutside) - any_inside[w]);
      }
    }
  }

  // Tap kTap of axis a of every point (pixel coordinates c): its index (0 where outside),
  // insideness, weight and weight derivative; any_inside[w] ORs in its insideness.
  template <int kTap>
  void axis_tap_loop(int a, const T* __restrict c, int64_t size, const SampleConfig& cfg,
                     int32_t* __restrict any_inside) {
    const int64_t width = this->width;
    const int64_t first = (a * kAxisTaps + kTap) * width;
    int32_t* __restrict index = axis_index.data() + first;
    int32_t* __restrict inside = axis_inside.data() + first;
    T* __restrict weight = axis_weight.data() + first;
    T* __restrict d_weight = axis_d_weight.data() + first;
#pragma omp simd
    for (int64_t w = 0; w < width; ++w) {
      const AxisTaps<T, kAxisTaps, int32_t> t = Policy::template taps<int32_t>(c[w], size, cfg);
      index[w] = t.inside[kTap] ? t.index[kTap] : 0;
      inside[w] = t.inside[kTap];
      weight[w] = t.weight[kTap];
      d_weight[w] = t.d_weight[kTap];
      any_inside[w] = (kTap == 0 ? 0 : any_inside[w]) | t.inside[kTap];
    }
  }

  // Each tap's weight (the product of its axis weights, x, y, z in turn, as ATen's corner
  // weights) and mask bit.
  void tap_weights_and_mask() {
    const int64_t width = this->width;
    const int32_t* __restrict st = status.data();
    const int32_t* __restrict inside = axis_inside.data();
    const T* __restrict axis_w = axis_weight.data();
    T* __restrict tap_weight = weight.data();
    int32_t* __restrict m = mask.data();
    for (int k = 0; k < kTaps; ++k) {
      const std::array<int, kDim> t = tap_axes(k);
      const T* aw[kDim];
      const int32_t* ai[kDim];
      for (int a = 0; a < kDim; ++a) {
        aw[a] = axis_w + (a * kAxisTaps + t[a]) * width;
        ai[a] = inside + (a * kAxisTaps + t[a]) * width;
      }
      T* __restrict wk = tap_weight + k * width;
#pragma omp simd
      for (int64_t w = 0; w < width; ++w) {
        T product = aw[0][w];
        int32_t tap_inside = ai[0][w] & int32_t(st[w] == kHasTaps);
        for (int a = 1; a < kDim; ++a) {
          product *= aw[a][w];
          tap_inside &= ai[a][w];
        }
        wk[w] = product;
        m[w] = (k == 0 ? 0 : m[w]) | tap_inside << k;
      }
    }
  }

  // Tap k's axis taps (x fastest).
  static constexpr std::array<int, kDim> tap_axes(int k) {
    std::array<int, kDim> t{};
    for (int a = 0; a < kDim; ++a) {
      t[a] = k % kAxisTaps;
      k /= kAxisTaps;
    }
    return t;
  }

  // Offsets of every tap in planes of strides g (input and grad_input may differ): out[k][w].
  // Each axis tap's share (index times stride) is computed once, then summed per tap.
  void flatten(const Spatial<kDim>& g, int64_t* __restrict out) {
    axis_shares(g);
    const int64_t width = this->width;
    const int64_t* __restrict share = axis_offset.data();
    for (int k = 0; k < kTaps; ++k) {
      const std::array<int, kDim> t = tap_axes(k);
      const int64_t* axis_share[kDim];
      for (int a = 0; a < kDim; ++a) axis_share[a] = share + (a * kAxisTaps + t[a]) * width;
      int64_t* __restrict o = out + k * width;
#pragma omp simd
      for (int64_t w = 0; w < width; ++w) {
        int64_t sum = axis_share[0][w];
        for (int a = 1; a < kDim; ++a) sum += axis_share[a][w];
        o[w] = sum;
      }
    }
  }

  // Each axis tap's share of an offset in planes of strides g: axis_offset[a][k][w].
  void axis_shares(const Spatial<kDim>& g) {
    const int64_t width = this->width;
    const int32_t* __restrict index = axis_index.data();
    int64_t* __restrict share = axis_offset.data();
    for (int a = 0; a < kDim; ++a) {
      const int64_t stride = g.stride[a], begin = a * kAxisTaps * width, end = begin + kAxisTaps * width;
      if (stride >= 0 && stride <= std::numeric_limits<int32_t>::max() / std::max<int64_t>(g.size[a], 1)) {
        // Every index * stride fits in 32 bits (index < size): a 32-bit multiply, which CPUs
        // vectorise natively (64-bit ones are emulated).
        const int32_t stride32 = static_cast<int32_t>(stride);
        for (int64_t i = begin; i < end; ++i) share[i] = int64_t(index[i] * stride32);
      } else {
        for (int64_t i = begin; i < end; ++i) share[i] = int64_t(index[i]) * stride;
      }
    }
  }

  // d(weight of tap k) / d(pixel coordinate of axis a) of every point: out[(k * kDim + a)][w],
  // the product over the axes b of tap k's weight on b, with its derivative on a.
  void weight_derivatives(T* __restrict out) const {
    const int64_t width = this->width;
    for (int k = 0; k < kTaps; ++k) {
      const std::array<int, kDim> t = tap_axes(k);
      const T* aw[kDim];
      const T* adw[kDim];
      for (int b = 0; b < kDim; ++b) {
        aw[b] = axis_weight.data() + (b * kAxisTaps + t[b]) * width;
        adw[b] = axis_d_weight.data() + (b * kAxisTaps + t[b]) * width;
      }
      T* __restrict o = out + k * kDim * width;
#pragma omp simd
      for (int64_t w = 0; w < width; ++w) {
        for (int a = 0; a < kDim; ++a) {
          T product = a == 0 ? adw[0][w] : aw[0][w];
          for (int b = 1; b < kDim; ++b) product *= b == a ? adw[b][w] : aw[b][w];
          o[a * width + w] = product;
        }
      }
    }
  }

  int64_t width;
  std::vector<T> coord, d_coord;  // [a][w]: coordinates (normalised, then pixels) and d(pixel)/d(normalised)
  std::vector<int32_t> status;    // PointStatus
  std::vector<int32_t> axis_index;  // [a][k][w]
  std::vector<int64_t> axis_offset;  // [a][k][w]: axis_index times a stride (axis_shares)
  std::vector<int32_t> axis_inside;
  std::vector<T> axis_weight, axis_d_weight;
  std::vector<int32_t> taps_inside;  // [w]: scratch of resolve_axes
  std::vector<int64_t> offset;  // [k][w], in input planes
  std::vector<T> weight;        // [k][w]
  std::vector<int32_t> mask;    // [w]
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

// One point's axis taps as a separable gather reads them: per axis (x first), each tap's share
// of the offset, weight and insideness.
template <int kDim, int kAxisTaps, typename T>
struct PointAxes {
  int64_t share[kDim][kAxisTaps];
  T weight[kDim][kAxisTaps];
  int32_t inside[kDim][kAxisTaps];
};

// The weighted sum of a point's taps in one plane, axis by axis: over axis kAxis's taps t,
// weight[kAxis][t] times the tap's value (axis 0) or times the same sum over the axes below at
// that tap (so 2-D sums each row of taps, then the rows, as ATen's bicubic does; points whose
// rows are whole vectors take gather_axis_vectors instead). Fewer
// multiplies than a weight per tap, and short independent chains of additions. kMasked: a tap
// outside on any axis reads `outside` (inside_above: whether the taps above are all inside).
template <int kAxis, bool kMasked, int kDim, int kAxisTaps, typename T, typename scalar_t>
C10_ALWAYS_INLINE T separable_sum(const scalar_t* plane, const PointAxes<kDim, kAxisTaps, T>& p,
                                  int64_t base, int32_t inside_above, T outside) {
  T acc{};
  for (int t = 0; t < kAxisTaps; ++t) {
    T term;
    if constexpr (kAxis == 0) {
      const bool inside = !kMasked || (inside_above & p.inside[0][t]);
      term = inside ? T(plane[base + p.share[0][t]]) : outside;
    } else {
      term = separable_sum<kAxis - 1, kMasked>(plane, p, base + p.share[kAxis][t],
                                               inside_above & p.inside[kAxis][t], outside);
    }
    // The first tap's term starts the sum (no 0 + ...): nearest copies -0.0 exactly.
    acc = t == 0 ? p.weight[kAxis][t] * term : acc + p.weight[kAxis][t] * term;
  }
  return acc;
}

// A 2-D point's four x taps as one short vector (GCC/Clang vector extensions), where they are
// adjacent in memory: each row of its 16 bicubic taps is then one load, and the rows are summed
// as vectors, weighted by their y weights, before the x weights (a column at a time instead of
// ATen's row at a time: the same terms, summed in another order). For float and double planes.
template <int kDim, int kAxisTaps, typename T, typename scalar_t>
constexpr bool kHasAxisVectors = kDim == 2 && kAxisTaps == 4 && std::is_same_v<T, scalar_t>;

// (kLanes 2: a linear stencil's two x taps, see kHasTapPairs.)
template <typename T, int kLanes = 4>
struct AxisVector {
  typedef T Type __attribute__((vector_size(kLanes * sizeof(T))));
  // A Type as it lies in a plane: aligned as T only, and aliasing it.
  typedef T InPlane
      __attribute__((vector_size(kLanes * sizeof(T)), aligned(alignof(T)), may_alias));
};

// The kLanes adjacent taps at p as one vector, and back.
template <int kLanes = 4, typename T>
C10_ALWAYS_INLINE typename AxisVector<T, kLanes>::Type load_axis_vector(const T* p) {
  return *reinterpret_cast<const typename AxisVector<T, kLanes>::InPlane*>(p);
}
template <typename T>
C10_ALWAYS_INLINE void store_axis_vector(T* p, typename AxisVector<T>::Type v) {
  *reinterpret_cast<typename AxisVector<T>::InPlane*>(p) = v;
}

// Whether a backward kernel reads a point's taps in x-neighbour pairs where every tap is inside
// and the input's x stride is 1: a linear stencil (taps k and k + 1, k even, differ in x alone,
// x fastest), summed tap by tap, on float or double planes. Then one two-element load and one
// multiply-add serve two taps of the coordinate gradient's sums (the same terms).
template <int kAxisTaps, bool kSeparable, typename T, typename scalar_t>
constexpr bool kHasTapPairs = kAxisTaps == 2 && !kSeparable && std::is_same_v<T, scalar_t>;

// Whether point p's x taps are adjacent in memory (unit x stride; not clipped onto one another
// by border or reflection padding).
template <typename T>
C10_ALWAYS_INLINE bool x_taps_adjacent(const PointAxes<2, 4, T>& p) {
  return p.share[0][1] == p.share[0][0] + 1 && p.share[0][2] == p.share[0][0] + 2 &&
         p.share[0][3] == p.share[0][0] + 3;
}

// Point w's axis taps, from the row's per-axis arrays (resolve_axes_and_shares, or resolve).
template <int kDim, typename Policy, typename T>
C10_ALWAYS_INLINE PointAxes<kDim, Policy::kTaps, T> point_axes(
    const RowStencil<kDim, Policy, T>& row, int64_t w) {
  constexpr int kAxisTaps = Policy::kTaps;
  PointAxes<kDim, kAxisTaps, T> p;
  for (int a = 0; a < kDim; ++a) {
    for (int t = 0; t < kAxisTaps; ++t) {
      const int64_t j = (a * kAxisTaps + t) * row.width + w;
      p.share[a][t] = row.axis_offset[j];
      p.weight[a][t] = row.axis_weight[j];
      p.inside[a][t] = row.axis_inside[j];
    }
  }
  return p;
}

// gather_separable's sum for a point whose x taps are adjacent (x_taps_adjacent), every tap
// inside.
template <typename T>
C10_ALWAYS_INLINE void gather_axis_vectors(const PointAxes<2, 4, T>& p, const T* plane,
                                           int64_t plane_c_stride, int64_t channels, T* o,
                                           int64_t o_c_stride) {
  using Vector = typename AxisVector<T>::Type;
  const Vector x_weight = {p.weight[0][0], p.weight[0][1], p.weight[0][2], p.weight[0][3]};
  for (int64_t c = 0; c < channels; ++c, plane += plane_c_stride) {
    const T* row = plane + p.share[0][0];
    Vector columns = p.weight[1][0] * load_axis_vector(row + p.share[1][0]);
    for (int t = 1; t < 4; ++t) columns += p.weight[1][t] * load_axis_vector(row + p.share[1][t]);
    const Vector terms = columns * x_weight;
    o[c * o_c_stride] = (terms[0] + terms[1]) + (terms[2] + terms[3]);
  }
}

// backward_kernel's channel loop for a point whose x taps are adjacent (x_taps_adjacent), every
// tap inside, with grad_input's planes (if wanted) in the input's plane layout: a row of four
// taps at a time, the same terms as tap by tap. Adds g times each tap's weight into grad_plane
// (null: not wanted) and, where tap_sum is not null, g times each tap's value into tap_sum (x
// fastest).
template <typename T>
C10_ALWAYS_INLINE void scatter_axis_vectors(const PointAxes<2, 4, T>& p, const T* g,
                                            int64_t g_c_stride, const T* plane,
                                            int64_t plane_c_stride, T* grad_plane,
                                            int64_t grad_c_stride, int64_t channels,
                                            T* tap_sum) {
  using Vector = typename AxisVector<T>::Type;
  const Vector x_weight = {p.weight[0][0], p.weight[0][1], p.weight[0][2], p.weight[0][3]};
  Vector weight[4], sums[4] = {};
  for (int j = 0; j < 4; ++j) weight[j] = x_weight * p.weight[1][j];  // as tap_weights_and_mask
  for (int64_t c = 0; c < channels; ++c) {
    const T g_c = g[c * g_c_stride];
    for (int j = 0; j < 4; ++j) {
      const int64_t row = p.share[0][0] + p.share[1][j];
      if (grad_plane != nullptr) {
        T* taps = grad_plane + c * grad_c_stride + row;
        store_axis_vector(taps, load_axis_vector(taps) + weight[j] * g_c);
      }
      if (tap_sum != nullptr) sums[j] += g_c * load_axis_vector(plane + c * plane_c_stride + row);
    }
  }
  if (tap_sum != nullptr) std::memcpy(tap_sum, sums, sizeof(sums));
}

// The weighted sum of point w's taps (row.resolve_axes_and_shares()d) for each channel,
// separably, into o[c * o_c_stride]; taps outside read the channel's fill value, or zero.
template <int kDim, typename Policy, typename T, typename scalar_t>
C10_ALWAYS_INLINE void gather_separable(const RowStencil<kDim, Policy, T>& row, int64_t w,
                                        const scalar_t* plane, int64_t plane_c_stride,
                                        int64_t channels, const std::vector<T>& fill, scalar_t* o,
                                        int64_t o_c_stride) {
  constexpr int kAxisTaps = RowStencil<kDim, Policy, T>::kAxisTaps;
  const PointAxes<kDim, kAxisTaps, T> p = point_axes(row, w);
  int32_t all_inside = 1;
  for (int a = 0; a < kDim; ++a) {
    for (int t = 0; t < kAxisTaps; ++t) all_inside &= p.inside[a][t];
  }
  if (all_inside) {  // the common case: no tap in the padding
    if constexpr (kHasAxisVectors<kDim, kAxisTaps, T, scalar_t>) {
      if (x_taps_adjacent(p)) {
        gather_axis_vectors(p, plane, plane_c_stride, channels, o, o_c_stride);
        return;
      }
    }
    for (int64_t c = 0; c < channels; ++c, plane += plane_c_stride) {
      o[c * o_c_stride] =
          static_cast<scalar_t>(separable_sum<kDim - 1, false>(plane, p, 0, 1, T(0)));
    }
    return;
  }
  for (int64_t c = 0; c < channels; ++c, plane += plane_c_stride) {
    const T outside = fill.empty() ? T(0) : fill[c];
    o[c * o_c_stride] =
        static_cast<scalar_t>(separable_sum<kDim - 1, true>(plane, p, 0, 1, outside));
  }
}

// The weighted sum of point w's taps (row.resolve()d) for each channel, tap by tap, into
// o[c * o_c_stride]; taps outside read the channel's fill value, or zero without one.
template <typename Row, typename T, typename scalar_t>
C10_ALWAYS_INLINE void gather_taps(const Row& row, int64_t w, const scalar_t* plane,
                                   int64_t plane_c_stride, int64_t channels,
                                   const std::vector<T>& fill, scalar_t* o, int64_t o_c_stride) {
  const int64_t width = row.width;
  int64_t offset[Row::kTaps];
  T weight[Row::kTaps];
  for (int k = 0; k < Row::kTaps; ++k) {
    offset[k] = row.offset[k * width + w];
    weight[k] = row.weight[k * width + w];
  }
  const int32_t mask = row.mask[w];
  if (mask == Row::kAllInside) {  // the common case: no tap in the padding
    for (int64_t c = 0; c < channels; ++c, plane += plane_c_stride) {
      // The first tap's term starts the sum (no 0 + ...): nearest copies -0.0 exactly.
      T acc = weight[0] * T(plane[offset[0]]);
      for (int k = 1; k < Row::kTaps; ++k) acc += weight[k] * T(plane[offset[k]]);
      o[c * o_c_stride] = static_cast<scalar_t>(acc);
    }
    return;
  }
  for (int64_t c = 0; c < channels; ++c, plane += plane_c_stride) {
    const T outside_value = fill.empty() ? T(0) : fill[c];
    auto term = [&](int k) {
      return weight[k] * ((mask >> k) & 1 ? T(plane[offset[k]]) : outside_value);
    };
    T acc = term(0);
    for (int k = 1; k < Row::kTaps; ++k) acc += term(k);
    o[c * o_c_stride] = static_cast<scalar_t>(acc);
  }
}

// d(loss)/d(pixel x, y) of 2-D point w from tap_sum[k] (tap k's value times the incoming
// gradient, summed over the channels; x fastest): the product rule over the axis weights, each
// row of taps summed first, as separable_sum sums them (gather_axis_vectors sums the same terms
// in another order). Adds to g_pixel.
template <typename Row, typename T>
C10_ALWAYS_INLINE void separable_coordinate_gradient(const Row& row, int64_t w,
                                                     const T* tap_sum, T* g_pixel) {
  constexpr int kAxisTaps = Row::kAxisTaps;
  const int64_t width = row.width;
  auto axis_value = [&](const std::vector<T>& values, int axis, int t) {
    return values[(axis * kAxisTaps + t) * width + w];
  };
  for (int j = 0; j < kAxisTaps; ++j) {
    T row_sum{}, row_d_sum{};  // the row's taps weighted by x weights, and by their derivatives
    for (int i = 0; i < kAxisTaps; ++i) {
      const T value = tap_sum[j * kAxisTaps + i];
      row_sum += axis_value(row.axis_weight, 0, i) * value;
      row_d_sum += axis_value(row.axis_d_weight, 0, i) * value;
    }
    g_pixel[0] += axis_value(row.axis_weight, 1, j) * row_d_sum;
    g_pixel[1] += axis_value(row.axis_d_weight, 1, j) * row_sum;
  }
}

template <int kDim, typename Policy, typename scalar_t, typename Source>
void forward_kernel(const at::Tensor& input, const Source& source,
                    const std::vector<at::opmath_type<scalar_t>>& fill, at::Tensor& output,
                    const SampleConfig& cfg) {
  using T = at::opmath_type<scalar_t>;
  using Row = RowStencil<kDim, Policy, T>;
  const Spatial<kDim> in(input), out(output);
  const int64_t width = out.size[0], rows = out.rows(), channels = in.channels;
  const scalar_t* in_ptr = input.const_data_ptr<scalar_t>();
  scalar_t* out_ptr = output.mutable_data_ptr<scalar_t>();
  const bool has_fill = !fill.empty();
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, width * channels * Row::kTaps));
  at::parallel_for(0, output.size(0) * rows, grain, [&](int64_t begin, int64_t end) {
    Row row(width);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t n = i / rows;
      const std::array<int64_t, kDim> pos = out.row_position(i % rows);
      source.image(n).row_coordinates(pos, width, row.coordinates().data());
      if constexpr (Row::kSeparable) {
        row.resolve_axes_and_shares(in, cfg);
      } else {
        row.resolve(in, cfg);
      }
      const scalar_t* image = in_ptr + n * in.n_stride;
      scalar_t* out_row = out_ptr + n * out.n_stride + out.offset(pos);
      for (int64_t w = 0; w < width; ++w) {
        scalar_t* o = out_row + w * out.stride[0];
        const int32_t status = row.status[w];
        if (status != kHasTaps) {
          for (int64_t c = 0; c < channels; ++c) {
            o[c * out.c_stride] = static_cast<scalar_t>(
                status == kUndefined ? std::numeric_limits<T>::quiet_NaN()
                : has_fill           ? fill[c] : T(0));
          }
          continue;
        }
        if constexpr (Row::kSeparable) {
          gather_separable(row, w, image, in.c_stride, channels, fill, o, out.c_stride);
        } else {
          gather_taps(row, w, image, in.c_stride, channels, fill, o, out.c_stride);
        }
      }
    }
  });
}

// grad_in_t is the opmath type (float for half and bfloat16: the caller casts back).
// per_image_gradient: theta gradients, kDim * (kDim + 1) doubles per image (AffineMap);
// grid_gradient: grad_grid (DenseGrid).
template <int kDim, typename Policy, typename scalar_t, typename Source,
          typename grad_in_t>
void backward_kernel(const at::Tensor& grad_output, const at::Tensor& input, const Source& source,
                     const std::vector<at::opmath_type<scalar_t>>& fill, const SampleConfig& cfg,
                     grad_in_t* grad_in_ptr,
                     const Spatial<kDim>& gin, double* per_image_gradient,
                     const GridGradient<kDim, scalar_t>* grid_gradient) {
  using T = at::opmath_type<scalar_t>;
  using Row = RowStencil<kDim, Policy, T>;
  constexpr int kThetaSize = kDim * (kDim + 1);
  // The coordinate gradient of a separable stencil comes from the axis weights and their
  // derivatives, that of the others from a weight derivative per tap.
  constexpr bool kSeparable = Row::kSeparable;
  static_assert(!kSeparable || kDim == 2, "separable coordinate gradients are 2-D");
  const Spatial<kDim> in(input), gout(grad_output);
  const int64_t width = gout.size[0], rows = gout.rows(), channels = in.channels;
  const scalar_t* in_ptr = input.const_data_ptr<scalar_t>();
  const scalar_t* gout_ptr = grad_output.const_data_ptr<scalar_t>();
  const bool has_fill = !fill.empty();
  const bool want_coordinates = per_image_gradient != nullptr || grid_gradient != nullptr;
  // Nearest sampling is piecewise constant: its coordinate gradient is zero, nothing to compute.
  const bool coordinate_work = want_coordinates && Policy::kMode != Interpolation::Nearest;
  // Per-tap weight derivatives (weight_derivatives) serve the stencils that are not separable.
  const bool tap_derivatives = coordinate_work && !kSeparable;
  const bool same_layout = grad_in_ptr != nullptr && gin.stride == in.stride;
  // Whether points whose rows of taps are vectors in memory take scatter_axis_vectors.
  constexpr bool kAxisVectors =
      kHasAxisVectors<kDim, Row::kAxisTaps, T, scalar_t> && std::is_same_v<grad_in_t, T>;
  constexpr bool kTapPairs = kHasTapPairs<Row::kAxisTaps, kSeparable, T, scalar_t>;
  using TapPair = typename AxisVector<T, 2>::Type;

  at::parallel_for(0, input.size(0), 1, [&](int64_t begin, int64_t end) {
    Row row(width);
    std::vector<int64_t> gin_offset_storage(grad_in_ptr != nullptr && !same_layout ? Row::kTaps * width : 0);
    std::vector<T> d_weight(tap_derivatives ? Row::kTaps * kDim * width : 0);
    std::vector<T> g_coord_storage(kDim * width);
    std::array<T*, kDim> g_coord;
    for (int a = 0; a < kDim; ++a) g_coord[a] = g_coord_storage.data() + a * width;
    for (int64_t n = begin; n < end; ++n) {
      const auto image = source.image(n);
      double g_theta[kThetaSize] = {};
      bool image_undefined = false;
      for (int64_t r = 0; r < rows; ++r) {
        const std::array<int64_t, kDim> pos = gout.row_position(r);
        image.row_coordinates(pos, width, row.coordinates().data());
        row.resolve(in, cfg);
        const int64_t* gin_offset = row.offset.data();
        if (grad_in_ptr != nullptr && !same_layout) {
          row.flatten(gin, gin_offset_storage.data());
          gin_offset = gin_offset_storage.data();
        }
        if (tap_derivatives) row.weight_derivatives(d_weight.data());
        const scalar_t* g_row = gout_ptr + n * gout.n_stride + gout.offset(pos);
        const scalar_t* in_image = in_ptr + n * in.n_stride;
        grad_in_t* gin_image = grad_in_ptr != nullptr ? grad_in_ptr + n * gin.n_stride : nullptr;
        for (int64_t w = 0; w < width; ++w) {
          const int32_t status = row.status[w];
          T g_pixel[kDim] = {};
          if (status == kUndefined && coordinate_work) {
            for (int a = 0; a < kDim; ++a) g_pixel[a] = std::numeric_limits<T>::quiet_NaN();
            image_undefined = true;
          }
          if (status == kHasTaps) {
            const int32_t mask = row.mask[w];
            const scalar_t* g_ptr = g_row + w * gout.stride[0];
            // d(loss)/d(pixel coordinate a) = sum over taps k of d_w[k][a] * tap_sum[k], where
            // tap_sum[k] = sum over channels of g times tap k's value: kTaps independent sums
            // over the channels, then a short one per axis (one chain of kTaps * channels
            // multiply-adds per axis would wait on each add's latency).
            T tap_sum[Row::kTaps] = {};
            T d_w[Row::kTaps][kDim];
            bool as_vectors = false;
            if constexpr (kAxisVectors) {
              if (mask == Row::kAllInside && (gin_image == nullptr || same_layout)) {
                const auto p = point_axes(row, w);
                as_vectors = x_taps_adjacent(p);
                if (as_vectors) {
                  scatter_axis_vectors(p, g_ptr, gout.c_stride, in_image, in.c_stride, gin_image,
                                       gin.c_stride, channels,
                                       coordinate_work ? tap_sum : nullptr);
                }
              }
            }
            if (!as_vectors) {
              // The pixel's taps in registers for the channel loop.
              int64_t in_offset[Row::kTaps], grad_offset[Row::kTaps];
              T weight[Row::kTaps];
              for (int k = 0; k < Row::kTaps; ++k) {
                in_offset[k] = row.offset[k * width + w];
                grad_offset[k] = gin_offset[k * width + w];
                weight[k] = row.weight[k * width + w];
                for (int a = 0; a < kDim; ++a) {
                  d_w[k][a] = tap_derivatives ? d_weight[(k * kDim + a) * width + w] : T(0);
                }
              }
              const bool tap_pairs =
                  kTapPairs && coordinate_work && mask == Row::kAllInside && in.stride[0] == 1;
              TapPair pair_sum[kTapPairs ? Row::kTaps / 2 : 1] = {};
              for (int64_t c = 0; c < channels; ++c) {
                const T g = T(g_ptr[c * gout.c_stride]);
                if (gin_image != nullptr) {
                  grad_in_t* plane = gin_image + c * gin.c_stride;
                  if (mask == Row::kAllInside) {  // the common case: no tap in the padding
                    for (int k = 0; k < Row::kTaps; ++k) {
                      plane[grad_offset[k]] += static_cast<grad_in_t>(weight[k] * g);
                    }
                  } else {
                    for (int k = 0; k < Row::kTaps; ++k) {
                      if ((mask >> k) & 1) {
                        plane[grad_offset[k]] += static_cast<grad_in_t>(weight[k] * g);
                      }
                    }
                  }
                }
                if constexpr (kTapPairs) {
                  if (tap_pairs) {
                    const scalar_t* plane = in_image + c * in.c_stride;
                    for (int k = 0; k < Row::kTaps; k += 2) {
                      pair_sum[k / 2] += g * load_axis_vector<2>(plane + in_offset[k]);
                    }
                    continue;
                  }
                }
                if (coordinate_work) {
                  const scalar_t* plane = in_image + c * in.c_stride;
                  const T outside_value = has_fill ? fill[c] : T(0);
                  for (int k = 0; k < Row::kTaps; ++k) {
                    const bool inside = (mask >> k) & 1;
                    // (A tap outside has offset 0: the load is valid, its value unused.)
                    // Without a fill, taps outside read zero and add nothing, even where g is
                    // not finite (as ATen, which skips them).
                    const T value = inside ? T(plane[in_offset[k]]) : outside_value;
                    tap_sum[k] += inside || has_fill ? g * value : T(0);
                  }
                }
              }
              if (tap_pairs) std::memcpy(tap_sum, pair_sum, sizeof(tap_sum));
            }
            if (coordinate_work) {
              if constexpr (kSeparable) {
                separable_coordinate_gradient(row, w, tap_sum, g_pixel);
              } else {
                for (int k = 0; k < Row::kTaps; ++k) {
                  for (int a = 0; a < kDim; ++a) g_pixel[a] += d_w[k][a] * tap_sum[k];
                }
              }
            }
            for (int a = 0; a < kDim; ++a) g_pixel[a] *= row.d_coord[a * width + w];
          }
          for (int a = 0; a < kDim; ++a) g_coord[a][w] = g_pixel[a];
        }
        if constexpr (Source::kPerImageGradient) {
          if (per_image_gradient != nullptr) {
            image.add_row_gradient(pos, width, g_coord.data(), g_theta);
          }
        } else {
          if (grid_gradient != nullptr) grid_gradient->set_row(n, r * width, width, g_coord.data());
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

// The CPU backend of GeneralOps (grid_sample.h): sample, sample_backward and the two
// coordinate-source factories below take it as their first argument.
struct Cpu {};

// The dense-grid source of grid_sample (make_source: see sample).
struct DenseGridSource {
  const at::Tensor& grid;
  template <typename Dim, typename Scalar, typename Out>
  auto operator()(Dim, Scalar, const Out&) const {
    return DenseGrid<Dim::value, at::opmath_type<Scalar>, Scalar>(grid);
  }
};
DenseGridSource dense_grid_source(Cpu, const at::Tensor& grid) { return {grid}; }

// The affine-map source of affine_sample.
struct AffineMapSource {
  const at::Tensor& theta;
  bool align_corners;
  template <typename Dim, typename Scalar, typename Out>
  auto operator()(Dim, Scalar, const Out& out) const {
    return AffineMap<Dim::value, at::opmath_type<Scalar>, Scalar>(theta, out, align_corners);
  }
};
AffineMapSource affine_map_source(Cpu, const at::Tensor& theta, bool align_corners) {
  return {theta, align_corners};
}

template <typename MakeSource>
at::Tensor sample(Cpu, const at::Tensor& input, at::IntArrayRef out_size, const SampleConfig& cfg,
                  const c10::optional<at::Tensor>& fill, MakeSource make_source) {
  if (row_kernels_serve(input, cfg, fill)) {
    if constexpr (std::is_same_v<MakeSource, DenseGridSource>) {
      return grid_sample_rows_cpu(input, make_source.grid, cfg);
    } else {
      return affine_sample_rows_cpu(input, make_source.theta, out_size, cfg);
    }
  }
  check_cpu_axis_sizes(input);
  at::Tensor output = new_sampled_output(input, out_size);
  if (output.numel() == 0) return output;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "sample_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const std::vector<T> fill_of_channel = fill_values<T>(fill);
    with_mode_and_rank(input.dim() - 2, cfg.mode, [&](auto dim, auto policy) {
      constexpr int kDim = decltype(dim)::value;
      const auto source = make_source(dim, scalar_t{}, Spatial<kDim>(output));
      forward_kernel<kDim, decltype(policy), scalar_t>(input, source, fill_of_channel, output,
                                                       cfg);
    });
  });
  return output;
}

// The backward pass of either op: grad_input (if output_mask[0]) and the coordinate source's
// gradient (if output_mask[1]), shaped as `coordinates` (the grid or theta).
template <typename MakeSource>
std::tuple<at::Tensor, at::Tensor> sample_backward(
    Cpu, const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& coordinates,
    const SampleConfig& cfg, const c10::optional<at::Tensor>& fill,
    std::array<bool, 2> output_mask, bool per_image, MakeSource make_source) {
  if (row_kernels_serve(input, cfg, fill)) {
    if constexpr (std::is_same_v<MakeSource, DenseGridSource>) {
      return grid_sample_rows_backward_cpu(grad_output, input, coordinates, cfg, output_mask);
    } else {
      return affine_sample_rows_backward_cpu(grad_output, input, coordinates, cfg, output_mask);
    }
  }
  check_cpu_axis_sizes(input);
  at::Tensor grad_input_acc =
      output_mask[0]
          ? with_huge_page_advice(at::empty_like(
                input, input.options().dtype(at::toOpMathType(input.scalar_type())),
                output_memory_format(input))).zero_()
          : at::empty({0}, input.options());
  // Theta gradients are reduced in double, as the 2-D affine kernels do. The kernel writes every
  // element; without anything sampled (no image, channel or output point) they are zero.
  const bool sampled = grad_output.numel() != 0;
  const auto coordinate_options =
      per_image ? coordinates.options().dtype(at::kDouble) : coordinates.options();
  at::Tensor grad_coordinates =
      !output_mask[1] ? at::empty({0}, coordinates.options())
      : sampled       ? at::empty(coordinates.sizes(), coordinate_options)
                      : at::zeros(coordinates.sizes(), coordinate_options);
  if (sampled) {
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, input.scalar_type(), "sample_backward_cpu", [&] {
          using T = at::opmath_type<scalar_t>;
          const std::vector<T> fill_of_channel = fill_values<T>(fill);
          with_mode_and_rank(input.dim() - 2, cfg.mode, [&](auto dim, auto policy) {
            constexpr int kDim = decltype(dim)::value;
            const Spatial<kDim> gout(grad_output);
            const auto source = make_source(dim, scalar_t{}, gout);
            const Spatial<kDim> gin(output_mask[0] ? grad_input_acc : input);
            T* gin_ptr = output_mask[0] ? grad_input_acc.mutable_data_ptr<T>() : nullptr;
            const GridGradient<kDim, scalar_t> grid_gradient{
                output_mask[1] && !per_image ? grad_coordinates.mutable_data_ptr<scalar_t>() : nullptr,
                gout.points()};
            backward_kernel<kDim, decltype(policy), scalar_t>(
                grad_output, input, source, fill_of_channel, cfg, gin_ptr, gin,
                output_mask[1] && per_image ? grad_coordinates.mutable_data_ptr<double>() : nullptr,
                output_mask[1] && !per_image ? &grid_gradient : nullptr);
          });
        });
  }
  return {grad_input_acc.to(input.scalar_type()), grad_coordinates.to(coordinates.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(stn_ext, CPU, m) { GeneralOps<Cpu>::register_kernels(m); }

}  // namespace stn_ext
