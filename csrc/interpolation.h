// Interpolation policies of the general sampling ops (stn_ext::grid_sample, stn_ext::affine_sample):
// each mode as a separable stencil, one axis at a time. Along an axis a policy gives kTaps pixel
// indices, whether each lies in the image, its weight, and the weight's derivative with respect
// to the sample coordinate; an N-D stencil is the tensor product of its axes (see Stencil in
// csrc/cpu/grid_sample_cpu.cpp). Formulas and rounding follow ATen's GridSampler.h and
// UpSample.h. C10_HOST_DEVICE, so a CUDA kernel can share them as it shares sampling_math.h.
#pragma once

#include <c10/util/Exception.h>

#include <type_traits>

#include "sampling_math.h"

// Unrolls a loop over a stencil's taps completely, on each compiler these headers meet: the CPU
// kernels call a policy once per point in loops over points, which GCC vectorises only where
// the loops over taps inside are gone (with them, it leaves the loop over points scalar).
#if defined(__CUDACC__) || defined(__clang__)
#define STN_EXT_UNROLL_TAPS _Pragma("unroll")
#elif defined(__GNUC__)
#define STN_EXT_UNROLL_TAPS _Pragma("GCC unroll 16")
#else
#define STN_EXT_UNROLL_TAPS
#endif

namespace stn_ext {

// One axis of a stencil. index is only meaningful where inside. Index: int64_t, or int32_t where
// the caller bounds the axis size (32-bit loops vectorise on CPUs).
template <typename T, int kTaps, typename Index = int64_t>
struct AxisTaps {
  Index index[kTaps];
  int32_t inside[kTaps];  // 0 or 1: an int, not a bool, so that CPU loops over points vectorise
  T weight[kTaps];
  T d_weight[kTaps];  // d(weight) / d(coordinate), in pixels
};

// base^exponent: the taps of an N-D stencil are power(axis taps, N).
constexpr int power(int base, int exponent) {
  return exponent == 0 ? 1 : base * power(base, exponent - 1);
}

// Where a mode takes its coordinate: nearest and linear read the padded coordinate
// (source_index: border and reflection fold the point into the image), bicubic the unpadded one
// and pads each of its taps instead (ATen's get_value_bounded).
enum class CoordinateKind { Padded, Unpadded };

// The axis coordinate in pixels, and d(coordinate)/d(normalised coordinate).
template <CoordinateKind kKind, typename T>
C10_HOST_DEVICE C10_ALWAYS_INLINE T axis_coordinate(T coord, int64_t size, const SampleConfig& cfg,
                                                    T* d_coord) {
  if constexpr (kKind == CoordinateKind::Padded) {
    return source_index(coord, size, cfg, d_coord);
  } else {
    return unnormalize(coord, size, cfg.align_corners, d_coord);
  }
}

// Whether every tap of a stencil of kTaps taps around `coord` (floor(coord) - (kTaps/2 - 1) ..
// floor(coord) + kTaps/2) is certainly outside an axis of `size` pixels, or the coordinate is
// not finite. Checked in floating point before any integer conversion, so nothing overflows.
template <int kTaps, typename T>
C10_HOST_DEVICE C10_ALWAYS_INLINE bool axis_far_outside(T coord, int64_t size) {
  return !((coord > T(-kTaps - 1)) & (coord < T(size + kTaps)));
}

// Where a sample point stands, from its pixel coordinates (axis_coordinate). Ordered: a point's
// status is the worst (largest) of its axes' (axis_status).
enum PointStatus : int8_t {
  kHasTaps = 0,    // sampled from its taps
  kOutside = 1,    // every tap outside (zeros padding): reads the fill value or zero
  kUndefined = 2,  // a non-finite coordinate (see is_undefined): NaN
};

// The status of one axis coordinate of a stencil of kTaps taps per axis. Border and reflection
// keep every tap inside (nearest and linear fold the point, cubic folds its taps), so only zeros
// padding has points outside.
template <int kTaps, typename T>
C10_HOST_DEVICE C10_ALWAYS_INLINE int8_t axis_status(T coord, int64_t size, Padding padding) {
  const bool undefined = !(coord - coord == T(0));
  const bool far = padding == Padding::Zeros && axis_far_outside<kTaps>(coord, size);
  return undefined ? kUndefined : far ? kOutside : kHasTaps;
}

// The status an axis' taps give a point: kOutside where none of them lies inside (zeros padding,
// a point within a stencil's reach of the image but outside it), kHasTaps otherwise. Such a point
// reads the fill value exactly, as F.grid_sample(input - fill) + fill does, and not a weighted
// sum of it, which rounding can move off it; its coordinate gradient is zero.
template <typename T, int kTaps, typename Index>
C10_HOST_DEVICE C10_ALWAYS_INLINE int8_t taps_status(const AxisTaps<T, kTaps, Index>& t) {
  int32_t any_inside = 0;
  for (int k = 0; k < kTaps; ++k) any_inside |= t.inside[k];
  return any_inside ? kHasTaps : kOutside;
}

struct NearestPolicy {
  static constexpr Interpolation kMode = Interpolation::Nearest;
  static constexpr CoordinateKind kCoordinate = CoordinateKind::Padded;
  static constexpr int kTaps = 1;

  // coord: padded, and not far outside (axis_far_outside).
  template <typename Index = int64_t, typename T>
  C10_HOST_DEVICE static AxisTaps<T, 1, Index> taps(T coord, int64_t size, const SampleConfig&) {
    AxisTaps<T, 1, Index> a;
    a.index[0] = nearest_index<Index>(coord);
    a.inside[0] = (a.index[0] >= 0) & (a.index[0] < Index(size));  // &, not &&: no branch
    a.weight[0] = T(1);
    a.d_weight[0] = T(0);
    return a;
  }
};

struct LinearPolicy {
  static constexpr Interpolation kMode = Interpolation::Bilinear;
  static constexpr CoordinateKind kCoordinate = CoordinateKind::Padded;
  static constexpr int kTaps = 2;

  template <typename Index = int64_t, typename T>
  C10_HOST_DEVICE static AxisTaps<T, 2, Index> taps(T coord, int64_t size, const SampleConfig&) {
    AxisTaps<T, 2, Index> a;
    const Index i0 = floor_in_range<Index>(coord);
    const T f0 = T(i0);
    a.index[0] = i0;
    a.index[1] = i0 + 1;
    a.weight[0] = f0 + T(1) - coord;  // ATen: (ix_se - ix)
    a.weight[1] = coord - f0;
    a.d_weight[0] = T(-1);
    a.d_weight[1] = T(1);
    // Compared as Index (the caller's size fits): 32-bit compares where the CPU asks for them.
    STN_EXT_UNROLL_TAPS
    for (int k = 0; k < 2; ++k) a.inside[k] = (a.index[k] >= 0) & (a.index[k] < Index(size));
    return a;
  }
};

// ATen's bicubic: Keys' cubic convolution with A = -0.75 over the 4 pixels around the point,
// each tap index padded on its own (border clips it, reflection folds it).
struct CubicPolicy {
  static constexpr Interpolation kMode = Interpolation::Bicubic;
  static constexpr CoordinateKind kCoordinate = CoordinateKind::Unpadded;
  static constexpr int kTaps = 4;

  template <typename T>
  C10_HOST_DEVICE static T convolution1(T x, T A) {  // |x| <= 1
    return ((A + T(2)) * x - (A + T(3))) * x * x + T(1);
  }
  template <typename T>
  C10_HOST_DEVICE static T convolution2(T x, T A) {  // 1 < |x| < 2
    return ((A * x - T(5) * A) * x + T(8) * A) * x - T(4) * A;
  }

  // coord: unpadded and finite; for zeros padding also not far outside.
  template <typename Index = int64_t, typename T>
  C10_HOST_DEVICE static AxisTaps<T, 4, Index> taps(T coord, int64_t size, const SampleConfig& cfg) {
    const T A = T(-0.75);
    AxisTaps<T, 4, Index> a;
    const T first = math::floor_(coord);
    const T t = coord - first;
    // UpSample.h's get_cubic_upsample_coefficients ...
    a.weight[0] = convolution2(t + T(1), A);
    a.weight[1] = convolution1(t, A);
    a.weight[2] = convolution1(T(1) - t, A);
    a.weight[3] = convolution2(T(2) - t, A);
    // ... and GridSampler.h's get_cubic_coefficients_grad, whose sign the backward flips.
    T x = T(-1) - t;
    a.d_weight[0] = -((T(-3) * A * x - T(10) * A) * x - T(8) * A);
    x = -t;
    a.d_weight[1] = -((T(-3) * (A + T(2)) * x - T(2) * (A + T(3))) * x);
    x = T(1) - t;
    a.d_weight[2] = -((T(3) * (A + T(2)) * x - T(2) * (A + T(3))) * x);
    x = T(2) - t;
    a.d_weight[3] = -((T(3) * A * x - T(10) * A) * x + T(8) * A);
    STN_EXT_UNROLL_TAPS
    for (int k = 0; k < 4; ++k) {
      T unused;
      const T tap = pad_coordinate(first + T(k - 1), size, cfg, &unused);
      a.inside[k] = (tap >= T(0)) & (tap < T(size));
      a.index[k] = a.inside[k] ? static_cast<Index>(tap) : 0;
    }
    return a;
  }
};

// Calls f(dim, policy) with the rank (2 or 3 spatial axes) and the mode's policy as compile-time
// constants: every combination the general ops take, on every backend. Bicubic is 2-D only (as
// in PyTorch).
template <typename F>
void with_mode_and_rank(int64_t dim, Interpolation mode, F&& f) {
  auto with_policy = [&](auto dim_c) {
    switch (mode) {
      case Interpolation::Nearest:
        f(dim_c, NearestPolicy{});
        return;
      case Interpolation::Bilinear:
        f(dim_c, LinearPolicy{});
        return;
      case Interpolation::Bicubic:
        if constexpr (decltype(dim_c)::value == 2) {
          f(dim_c, CubicPolicy{});
        } else {
          TORCH_CHECK_NOT_IMPLEMENTED(false, "stn_ext: mode 'bicubic' takes 4-D input (as in "
                                             "PyTorch), got ", decltype(dim_c)::value + 2, "-D");
        }
        return;
    }
    TORCH_CHECK(false, "stn_ext: unknown interpolation mode ", static_cast<int>(mode));
  };
  TORCH_CHECK_VALUE(dim == 2 || dim == 3, "stn_ext: the general ops take 2 or 3 spatial axes, got ",
                    dim);
  if (dim == 2) {
    with_policy(std::integral_constant<int, 2>{});
  } else {
    with_policy(std::integral_constant<int, 3>{});
  }
}

}  // namespace stn_ext
