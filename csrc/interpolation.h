// Interpolation policies of the general sampling ops (stn_ext::grid_sample, stn_ext::affine_sample):
// each mode as a separable stencil, one axis at a time. Along an axis a policy gives kTaps pixel
// indices, whether each lies in the image, its weight, and the weight's derivative with respect
// to the sample coordinate; an N-D stencil is the tensor product of its axes (see Stencil in
// csrc/cpu/grid_sample_cpu.cpp). Formulas and rounding follow ATen's GridSampler.h and
// UpSample.h. C10_HOST_DEVICE, so a CUDA kernel can share them as it shares sampling_math.h.
#pragma once

#include "sampling_math.h"

namespace stn_ext {

// One axis of a stencil. index is only meaningful where inside. Index: int64_t, or int32_t where
// the caller bounds the axis size (32-bit loops vectorise on CPUs).
template <typename T, int kTaps, typename Index = int64_t>
struct AxisTaps {
  Index index[kTaps];
  bool inside[kTaps];
  T weight[kTaps];
  T d_weight[kTaps];  // d(weight) / d(coordinate), in pixels
};

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

struct NearestPolicy {
  static constexpr Interpolation kMode = Interpolation::Nearest;
  static constexpr CoordinateKind kCoordinate = CoordinateKind::Padded;
  static constexpr int kTaps = 1;

  // coord: padded, and not far outside (axis_far_outside).
  template <typename Index = int64_t, typename T>
  C10_HOST_DEVICE static AxisTaps<T, 1, Index> taps(T coord, int64_t size, const SampleConfig&) {
    AxisTaps<T, 1, Index> a;
    a.index[0] = nearest_index<Index>(coord);
    a.inside[0] = (a.index[0] >= 0) & (a.index[0] < size);  // &, not &&: no branch
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
    for (int k = 0; k < 2; ++k) a.inside[k] = (a.index[k] >= 0) & (a.index[k] < size);
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

  // A tap's pixel coordinate (an integer, in floating point) after padding, and whether it is
  // in the image.
  template <typename T>
  C10_HOST_DEVICE static T padded_tap(T coord, int64_t size, const SampleConfig& cfg) {
    T unused;
    switch (cfg.padding) {
      case Padding::Zeros:
        return coord;
      case Padding::Border:
        return clip(coord, size, &unused);
      case Padding::Reflection:
        return clip(cfg.align_corners ? reflect(coord, 0, 2 * (size - 1), &unused)
                                      : reflect(coord, -1, 2 * size - 1, &unused),
                    size, &unused);
    }
    return coord;
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
    for (int k = 0; k < 4; ++k) {
      const T tap = padded_tap(first + T(k - 1), size, cfg);
      a.inside[k] = (tap >= T(0)) & (tap < T(size));
      a.index[k] = a.inside[k] ? static_cast<Index>(tap) : 0;
    }
    return a;
  }
};

}  // namespace stn_ext
