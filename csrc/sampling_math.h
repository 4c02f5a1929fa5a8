// Coordinate, padding and interpolation-weight math of the fused affine-grid + sample op.
//
// Shared verbatim by the CPU and CUDA kernels (every function is C10_HOST_DEVICE), so the CPU
// tests exercise the formulas the GPU runs (nvcc may contract a * b + c into one fused
// multiply-add, so GPU results can differ from the CPU's in the last bits). The formulas follow PyTorch's
// F.affine_grid (linspace base grid times theta^T) and ATen's GridSampler.h, so results match
// F.grid_sample(F.affine_grid(...)) to rounding.
#pragma once

#include <c10/macros/Macros.h>
#include <cstdint>

#ifndef __CUDACC__
#include <cmath>
#endif

namespace stn_ext {

// Bilinear is trilinear on 3-D input (PyTorch's naming); Bicubic is 2-D only and taken by the
// general ops (csrc/grid_sample.h), not by affine_grid_sample.
enum class Interpolation : int { Bilinear, Nearest, Bicubic };
enum class Padding : int { Zeros, Border, Reflection };

// Everything a kernel needs to know about the sampling, fixed for one call.
struct SampleConfig {
  Interpolation mode;
  Padding padding;
  bool align_corners;
};

namespace math {

#ifdef __CUDACC__
template <typename T> C10_HOST_DEVICE C10_ALWAYS_INLINE T floor_(T x) { return ::floor(x); }
template <typename T> C10_HOST_DEVICE C10_ALWAYS_INLINE T fabs_(T x) { return ::fabs(x); }
template <typename T> C10_HOST_DEVICE C10_ALWAYS_INLINE T fmod_(T x, T y) { return ::fmod(x, y); }
#else
template <typename T> inline T floor_(T x) { return std::floor(x); }
template <typename T> inline T fabs_(T x) { return std::fabs(x); }
template <typename T> inline T fmod_(T x, T y) { return std::fmod(x, y); }
#endif

}  // namespace math

// Normalised base coordinate of pixel i of an axis with `size` pixels: element i of
// torch.linspace(-1, 1, size) (evaluated from the nearer end, as ATen does), scaled by
// (size - 1) / size when !align_corners. A 1-pixel axis sits at 0, as in F.affine_grid.
template <typename T>
C10_HOST_DEVICE C10_ALWAYS_INLINE T base_coord(int64_t i, int64_t size, bool align_corners) {
  if (size <= 1) return T(0);
  const T step = T(2) / T(size - 1);
  const T v = i < size / 2 ? T(-1) + step * T(i) : T(1) - step * T(size - 1 - i);
  return align_corners ? v : v * T(size - 1) / T(size);
}

// Normalised [-1, 1] coordinate -> pixel coordinate; *d_coord gets d(pixel)/d(normalised).
template <typename T>
C10_HOST_DEVICE C10_ALWAYS_INLINE T unnormalize(T coord, int64_t size, bool align_corners, T* d_coord) {
  if (align_corners) {
    *d_coord = T(size - 1) / T(2);
    return (coord + T(1)) / T(2) * T(size - 1);
  }
  *d_coord = T(size) / T(2);
  return ((coord + T(1)) * T(size) - T(1)) / T(2);
}

// Clamp to [0, size - 1]; the derivative is 0 where the clamp is active. Selects, not
// branches, so that CPU loops over many points vectorise.
template <typename T>
C10_HOST_DEVICE C10_ALWAYS_INLINE T clip(T coord, int64_t size, T* d_coord) {
  const T high = T(size - 1);
  const bool low_clamped = coord <= T(0), high_clamped = coord >= high;
  *d_coord = low_clamped | high_clamped ? T(0) : T(1);
  const T below_high = high_clamped ? high : coord;
  return low_clamped ? T(0) : below_high;
}

// Reflect into [twice_low / 2, twice_high / 2] (bounds given doubled so that the half-pixel
// bounds of !align_corners stay integers). The parity of the number of flips is taken in
// floating point, so huge coordinates cannot overflow an integer.
template <typename T>
C10_HOST_DEVICE C10_ALWAYS_INLINE T reflect(T coord, int64_t twice_low, int64_t twice_high, T* d_coord) {
  if (twice_low == twice_high) {
    *d_coord = T(0);
    return T(0);
  }
  const T low = T(twice_low) / T(2);
  const T span = T(twice_high - twice_low) / T(2);
  T offset = coord - low;
  T sign = T(1);
  if (offset < T(0)) {
    sign = T(-1);
    offset = -offset;
  }
  const T extra = math::fmod_(offset, span);
  const T flips = math::floor_(offset / span);
  if (math::fmod_(flips, T(2)) == T(0)) {
    *d_coord = sign;
    return extra + low;
  }
  *d_coord = -sign;
  return span - extra + low;
}

// Padding of a pixel coordinate along one axis, with its derivative: border clips it into the
// image, reflection folds it in (then clips, as ATen does for rounding); zeros leaves it.
template <typename T>
C10_HOST_DEVICE C10_ALWAYS_INLINE T pad_coordinate(T coord, int64_t size, const SampleConfig& cfg,
                                                   T* d_coord) {
  if (cfg.padding == Padding::Zeros) {
    *d_coord = T(1);
    return coord;
  }
  T d_reflect = T(1);
  if (cfg.padding == Padding::Reflection) {
    coord = cfg.align_corners ? reflect(coord, 0, 2 * (size - 1), &d_reflect)
                              : reflect(coord, -1, 2 * size - 1, &d_reflect);
  }
  T d_clip;
  coord = clip(coord, size, &d_clip);
  *d_coord = d_reflect * d_clip;
  return coord;
}

// Normalised coordinate -> padded pixel coordinate along one axis, with its derivative.
template <typename T>
C10_HOST_DEVICE C10_ALWAYS_INLINE T source_index(T coord, int64_t size, const SampleConfig& cfg, T* d_coord) {
  T d_unnorm, d_pad;
  coord = pad_coordinate(unnormalize(coord, size, cfg.align_corners, &d_unnorm), size, cfg, &d_pad);
  *d_coord = d_unnorm * d_pad;
  return coord;
}

// The 2x3 affine matrix of one batch element, in the kernels' compute precision.
template <typename T>
struct Affine {
  T t00, t01, t02, t10, t11, t12;

  template <typename scalar_t>
  C10_HOST_DEVICE static Affine load(const scalar_t* theta, int64_t s_row, int64_t s_col) {
    return {T(theta[0]), T(theta[s_col]), T(theta[2 * s_col]),
            T(theta[s_row]), T(theta[s_row + s_col]), T(theta[s_row + 2 * s_col])};
  }

  // The grid point (normalised input coordinates) of the base point (base_x, base_y).
  C10_HOST_DEVICE C10_ALWAYS_INLINE T grid_x(T base_x, T base_y) const {
    return t00 * base_x + t01 * base_y + t02;
  }
  C10_HOST_DEVICE C10_ALWAYS_INLINE T grid_y(T base_x, T base_y) const {
    return t10 * base_x + t11 * base_y + t12;
  }
};

// Where one output pixel samples the input: pixel coordinates (ix, iy) after padding, and
// d(ix)/d(grid_x), d(iy)/d(grid_y) for the backward pass.
template <typename T>
struct SourcePoint {
  T ix, iy;
  T dix, diy;
};

// Output pixel (w, h) of a (out_h, out_w) output -> its source point in an (in_h, in_w) input.
template <typename T>
C10_HOST_DEVICE C10_ALWAYS_INLINE SourcePoint<T> source_point(const Affine<T>& a, T base_x, T base_y,
                                                   int64_t in_h, int64_t in_w,
                                                   const SampleConfig& cfg) {
  SourcePoint<T> p;
  p.ix = source_index(a.grid_x(base_x, base_y), in_w, cfg, &p.dix);
  p.iy = source_index(a.grid_y(base_x, base_y), in_h, cfg, &p.diy);
  return p;
}

// A source point with a non-finite padded coordinate (NaN, or an infinity that padding did not
// clip) is undefined: its output is NaN in every channel, it adds nothing to the input's
// gradient and NaN to theta's (PyTorch's bilinear zeros-padding semantics, for every mode and
// padding). x - x is 0 for finite x and NaN otherwise: a select-friendly isfinite.
template <typename T>
C10_HOST_DEVICE C10_ALWAYS_INLINE bool is_undefined(T ix, T iy) {
  return !((ix - ix == T(0)) & (iy - iy == T(0)));
}

// A source point far outside (or non-finite) reads only zero padding. Checked in floating point
// before any conversion to integers, so no coordinate can overflow an index.
template <typename T>
C10_HOST_DEVICE C10_ALWAYS_INLINE bool is_far_outside(const SourcePoint<T>& p, int64_t in_h, int64_t in_w) {
  // & rather than &&: no branches, so that CPU loops over many points vectorise.
  return !((p.ix > T(-2)) & (p.ix < T(in_w + 1)) & (p.iy > T(-2)) & (p.iy < T(in_h + 1)));
}

// floor() of a coordinate already known to be in a small range (not far outside, see above):
// a cast and a compare, where std::floor is a library call on baseline x86-64. The CPU kernels
// ask for 32-bit indices, which vectorise.
template <typename Index = int64_t, typename T>
C10_HOST_DEVICE C10_ALWAYS_INLINE Index floor_in_range(T x) {
  const Index i = static_cast<Index>(x);
  return i - static_cast<Index>(T(i) > x);
}

// The 2x2 neighbourhood of a bilinear sample: top-left corner (x0, y0) and the weights of the
// west/east columns and north/south rows. Corner weights are products, as in ATen. Only for
// points that are not far outside.
template <typename T, typename Index = int64_t>
struct Bilinear {
  Index x0, y0;
  T west, east, north, south;

  C10_HOST_DEVICE C10_ALWAYS_INLINE static Bilinear at(T ix, T iy) {
    const Index x0 = floor_in_range<Index>(ix), y0 = floor_in_range<Index>(iy);
    const T fx = T(x0), fy = T(y0);
    return {x0, y0, fx + T(1) - ix, ix - fx, fy + T(1) - iy, iy - fy};
  }
  C10_HOST_DEVICE C10_ALWAYS_INLINE T w00() const { return west * north; }
  C10_HOST_DEVICE C10_ALWAYS_INLINE T w01() const { return east * north; }
  C10_HOST_DEVICE C10_ALWAYS_INLINE T w10() const { return west * south; }
  C10_HOST_DEVICE C10_ALWAYS_INLINE T w11() const { return east * south; }
};

// Nearest pixel of a point that is not far outside, rounding half to even as ATen's
// std::nearbyint does (x - floor(x) is exact here, so the tie test is exact).
template <typename Index = int64_t, typename T>
C10_HOST_DEVICE C10_ALWAYS_INLINE Index nearest_index(T coord) {
  const Index f = floor_in_range<Index>(coord);
  const T frac = coord - T(f);
  const Index up = frac > T(0.5) || (frac == T(0.5) && (f & 1));
  return f + up;
}

template <typename Index>
C10_HOST_DEVICE C10_ALWAYS_INLINE bool in_bounds(Index x, Index y, Index in_h, Index in_w) {
  return x >= 0 && x < in_w && y >= 0 && y < in_h;
}

// Gradient of a bilinear sample with respect to (ix, iy) given the four corner values.
template <typename T, typename Index>
C10_HOST_DEVICE C10_ALWAYS_INLINE void bilinear_coord_grad(const Bilinear<T, Index>& b, T v00, T v01, T v10, T v11,
                                                T* d_ix, T* d_iy) {
  *d_ix = (v01 - v00) * b.north + (v11 - v10) * b.south;
  *d_iy = (v10 - v00) * b.west + (v11 - v01) * b.east;
}

// Chain rule through the affine map: a gradient (g_gx, g_gy) on the grid point of base
// coordinates (bx, by) adds g_gx * (bx, by, 1) to theta's first row and g_gy * (...) to its second.
template <typename T>
struct ThetaGrad {
  T g[6];

  C10_HOST_DEVICE void add(T g_gx, T g_gy, T base_x, T base_y) {
    g[0] += g_gx * base_x;
    g[1] += g_gx * base_y;
    g[2] += g_gx;
    g[3] += g_gy * base_x;
    g[4] += g_gy * base_y;
    g[5] += g_gy;
  }
};

}  // namespace stn_ext
