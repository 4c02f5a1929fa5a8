// The CPU row kernels of 2-D bilinear and nearest sampling without a fill value: those of
// stn_ext::affine_grid_sample, and (row_kernels.h) of the general ops' calls of that kind, from a
// coordinate source (AffineRows, GridRows). Every output row is done in two phases: its
// sample points are resolved into structure-of-arrays scratch (coordinates, taps, weights: loops
// the compiler vectorises), then each pixel's taps are gathered (forward) or scattered and
// reduced (backward) for a block of channels at a time. Parallel over output rows (forward) and
// over (image, channel group) work units (backward), deterministic for any thread count.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

// AVX2 and FMA (the x86-64-v3 builds of setup.py): bilinear float rows take 8 points at a time
// in the forward gather and the backward pass's coordinate gradient (lane groups, see
// LaneGroup).
#if defined(__AVX2__) && defined(__FMA__)
#define STN_EXT_LANE_GROUPS 1
#include <immintrin.h>
#endif

#include "../affine_grid_sample.h"
#include "huge_pages.h"
#include "row_kernels.h"

namespace stn_ext {
namespace {

// Geometry of one 4-D tensor: sizes and element strides.
struct Geometry {
  int64_t n, c, h, w;
  int64_t sn, sc, sh, sw;
  explicit Geometry(const at::Tensor& t)
      : n(t.size(0)), c(t.size(1)), h(t.size(2)), w(t.size(3)),
        sn(t.stride(0)), sc(t.stride(1)), sh(t.stride(2)), sw(t.stride(3)) {}
};

// The loops that resolve a row of sample points, one step each. Arrays are restrict
// parameters: GCC vectorises loops over several arrays only when it knows they are disjoint.

// Pixel coordinate along one axis of point w of a row, from its normalised coordinate
// grid_of(w), and its derivative if kCoordGrad (the backward pass).
template <SampleConfig cfg, bool kCoordGrad, typename T, typename GridOf>
inline void source_coords(int64_t width, GridOf grid_of, int64_t size, T* __restrict coord,
                          T* __restrict d_coord) {
  for (int64_t w = 0; w < width; ++w) {
    T derivative;
    coord[w] = source_index(grid_of(w), size, cfg, &derivative);
    if constexpr (kCoordGrad) d_coord[w] = derivative;
  }
}

// A point far outside (or not finite) moves to (-2, -2), where every tap is outside: the tap
// loops then need no special case, and no coordinate overflows an index.
template <typename T>
inline void move_far_points(int64_t width, int64_t in_h, int64_t in_w, T* __restrict ix,
                            T* __restrict iy) {
  for (int64_t w = 0; w < width; ++w) {
    const bool far = is_far_outside(SourcePoint<T>{ix[w], iy[w], T(0), T(0)}, in_h, in_w);
    ix[w] = far ? T(-2) : ix[w];
    iy[w] = far ? T(-2) : iy[w];
  }
}

// Marks the undefined points of a row (see is_undefined) in `undefined`, and returns whether it
// has any, so that the outputs and gradients they make NaN are patched after the main loops.
// Only for rows whose source may give undefined points (an affine map that may_be_undefined, any
// dense grid), and out of line: the common path stays as it was before undefined points existed.
template <typename T>
__attribute__((noinline)) bool mark_undefined(int64_t width, const T* __restrict ix,
                                              const T* __restrict iy,
                                              int32_t* __restrict undefined) {
  int32_t any_undefined = 0;
  for (int64_t w = 0; w < width; ++w) {
    undefined[w] = is_undefined(ix[w], iy[w]);
    any_undefined |= undefined[w];
  }
  return any_undefined != 0;
}

// Whether an image's affine map can give an undefined point in an input of geometry `in`:
// only a non-finite theta, or one so large that a coordinate could overflow. Base coordinates
// lie in [-1, 1], so |grid| <= |t0| + |t1| + |t2|, and unnormalize() makes that at most
// (|grid| + 1) * size + 1 pixels (bounded in double; the factor 4 covers rounding). Padding
// keeps finite coordinates finite.
template <typename T>
bool may_be_undefined(const Affine<T>& a, const Geometry& in) {
  const auto bound = [](T t0, T t1, T t2, int64_t size) {
    return (std::fabs(double(t0)) + std::fabs(double(t1)) + std::fabs(double(t2)) + 1.0) *
               double(size) + 1.0;
  };
  const double limit = 0.25 * double(std::numeric_limits<T>::max());
  // False for a NaN or infinite bound too.
  return !(bound(a.t00, a.t01, a.t02, in.w) < limit && bound(a.t10, a.t11, a.t12, in.h) < limit);
}

template <typename T>
inline void nearest_taps(int64_t width, int32_t in_h, int32_t in_w, const T* __restrict ix,
                         const T* __restrict iy, int32_t* __restrict x0, int32_t* __restrict y0,
                         int32_t* __restrict inside) {
  for (int64_t w = 0; w < width; ++w) {
    x0[w] = nearest_index<int32_t>(ix[w]);
    y0[w] = nearest_index<int32_t>(iy[w]);
    inside[w] = in_bounds(x0[w], y0[w], in_h, in_w);
  }
}

template <typename T>
inline void bilinear_taps(int64_t width, int32_t in_h, int32_t in_w, const T* __restrict ix,
                          const T* __restrict iy, int32_t* __restrict x0, int32_t* __restrict y0,
                          int32_t* __restrict inside, T* __restrict west, T* __restrict east,
                          T* __restrict north, T* __restrict south) {
  for (int64_t w = 0; w < width; ++w) {
    const Bilinear<T, int32_t> b = Bilinear<T, int32_t>::at(ix[w], iy[w]);
    x0[w] = b.x0;
    y0[w] = b.y0;
    west[w] = b.west;
    east[w] = b.east;
    north[w] = b.north;
    south[w] = b.south;
    inside[w] = int32_t(in_bounds(b.x0, b.y0, in_h, in_w)) |
                int32_t(in_bounds(b.x0 + 1, b.y0, in_h, in_w)) << 1 |
                int32_t(in_bounds(b.x0, b.y0 + 1, in_h, in_w)) << 2 |
                int32_t(in_bounds(b.x0 + 1, b.y0 + 1, in_h, in_w)) << 3;
  }
}

// The sample points of one output row, resolved in structure-of-arrays form so that the
// per-pixel coordinate and weight math runs as vectorised loops. Tap k of pixel w sits at
// (x0 + k % 2, y0 + k / 2), bit k of inside[w] says whether it lies in the image (taps outside
// read zero padding), and stencil(w) gives the weights; a nearest sample uses tap 0 only.
// An undefined point (undefined[w], see is_undefined) has no tap inside: the kernels patch its
// NaN output or theta gradient afterwards, when has_undefined says the row has one (undefined
// is only written for rows whose source may give undefined points: check_undefined).
template <typename T>
struct RowSamples {
  explicit RowSamples(int64_t width)
      : width(width), ix(width), iy(width), dix(width), diy(width), west(width), east(width),
        north(width), south(width), x0(width), y0(width), inside(width), undefined(width),
        origin(width) {}

  // Resolves the row whose points' normalised coordinates are grid_x(w), grid_y(w) (a
  // coordinate source's row), for an input of geometry `in`; origin[w] is tap 0's offset in an
  // input plane. check_undefined: whether the row may hold undefined points (the source's
  // may_be_undefined). kCoordGrad: also the coordinates' derivatives dix, diy.
  // (Inlined into the kernels, as the compiler chose before check_undefined existed.)
  template <Interpolation kMode, Padding kPadding, bool kCoordGrad, typename GridX, typename GridY>
  C10_ALWAYS_INLINE void resolve(GridX grid_x, GridY grid_y, const Geometry& in,
                                 bool align_corners, bool check_undefined) {
    // align_corners as a constant too: a branch inside the loops would keep them scalar.
    if (align_corners) {
      resolve<SampleConfig{kMode, kPadding, true}, kCoordGrad>(grid_x, grid_y, in,
                                                              check_undefined);
    } else {
      resolve<SampleConfig{kMode, kPadding, false}, kCoordGrad>(grid_x, grid_y, in,
                                                               check_undefined);
    }
  }

  template <SampleConfig cfg, bool kCoordGrad, typename GridX, typename GridY>
  C10_ALWAYS_INLINE void resolve(GridX grid_x, GridY grid_y, const Geometry& in,
                                 bool check_undefined) {
    // source_point() split by axis and step into simple loops, which vectorise.
    source_coords<cfg, kCoordGrad>(width, grid_x, in.w, ix.data(), dix.data());
    source_coords<cfg, kCoordGrad>(width, grid_y, in.h, iy.data(), diy.data());
    has_undefined = check_undefined && mark_undefined(width, ix.data(), iy.data(), undefined.data());
    move_far_points(width, in.h, in.w, ix.data(), iy.data());
    const int32_t h = static_cast<int32_t>(in.h), w = static_cast<int32_t>(in.w);
    if constexpr (cfg.mode == Interpolation::Nearest) {
      nearest_taps(width, h, w, ix.data(), iy.data(), x0.data(), y0.data(), inside.data());
    } else {
      bilinear_taps(width, h, w, ix.data(), iy.data(), x0.data(), y0.data(), inside.data(),
                    west.data(), east.data(), north.data(), south.data());
    }
    set_origins(in, origin.data());
  }

  // Offsets of tap 0 in a plane of geometry g (input and grad_input may differ in strides).
  // (Strides as locals: out could alias g otherwise, which keeps the loop scalar.) In 32 bits
  // where every offset fits (x0 and y0 lie in [-2, size]): AVX2 has no 64-bit multiply.
  void set_origins(const Geometry& g, int64_t* __restrict out) const {
    if ((g.h + 2) * g.sh + (g.w + 2) * g.sw <= std::numeric_limits<int32_t>::max()) {
      const int32_t sh = static_cast<int32_t>(g.sh), sw = static_cast<int32_t>(g.sw);
      for (int64_t w = 0; w < width; ++w) out[w] = y0[w] * sh + x0[w] * sw;
    } else {
      const int64_t sh = g.sh, sw = g.sw;
      for (int64_t w = 0; w < width; ++w) out[w] = int64_t(y0[w]) * sh + int64_t(x0[w]) * sw;
    }
  }

  Bilinear<T, int32_t> stencil(int64_t w) const {
    return {x0[w], y0[w], west[w], east[w], north[w], south[w]};
  }

  int64_t width;
  std::vector<T> ix, iy, dix, diy;
  std::vector<T> west, east, north, south;
  std::vector<int32_t> x0, y0, inside, undefined;
  std::vector<int64_t> origin;
  bool has_undefined = false;
};

constexpr int32_t kAllTaps = 0xF;

// Plane offset of tap k relative to tap 0 (k % 2 columns and k / 2 rows on), from two strides:
// passed by value, so the loops keep them in registers.
struct TapDeltas {
  int64_t sh, sw;
  explicit TapDeltas(const Geometry& g) : sh(g.sh), sw(g.sw) {}
  int64_t operator[](int k) const { return (k / 2) * sh + (k % 2) * sw; }
};

template <typename T>
std::vector<T> base_coords(int64_t size, bool align_corners) {
  std::vector<T> coords(size);
  for (int64_t i = 0; i < size; ++i) coords[i] = base_coord<T>(i, size, align_corners);
  return coords;
}

template <typename T, typename scalar_t>
Affine<T> affine_of(const at::Tensor& theta, int64_t n) {
  return Affine<T>::load(theta.const_data_ptr<scalar_t>() + n * theta.stride(0), theta.stride(1),
                         theta.stride(2));
}

// Channels are taken in blocks of this many: each pixel's taps and weights are loaded once per
// block, and a block's planes are few enough to stay in cache together (all channels at once
// would sweep 2 rows of every plane per pixel). A channels_last input keeps a pixel's channels
// side by side: it takes them all at once.
constexpr int64_t kChannelBlock = 4;

template <int kChannels>
using Channels = std::integral_constant<int, kChannels>;

int64_t channel_block(const Geometry& g) {
  return g.sc < g.sw ? std::max<int64_t>(g.c, 1) : kChannelBlock;
}

// The four taps of a pixel as one short vector (GCC/Clang vector extensions), for rows whose
// x-neighbouring taps are adjacent in memory (input width stride 1, float or double): each tap
// row is then one two-element load, and a channel's share of a pixel is a few vector ops.
// (grad_input's taps stay scalar read-modify-writes: the next pixel's pair load would overlap
// this pixel's pair store by one element, which store-to-load forwarding cannot serve; measured
// 13% slower.)
template <typename T>
struct TapVectors {
  typedef T Row __attribute__((vector_size(2 * sizeof(T))));
  typedef T Quad __attribute__((vector_size(4 * sizeof(T))));
  // A Row as it lies in a plane: aligned as T only, and aliasing it.
  typedef T PlaneRow __attribute__((vector_size(2 * sizeof(T)), aligned(alignof(T)), may_alias));
};
template <typename T>
using TapRow = typename TapVectors<T>::Row;  // (west, east) of one row
template <typename T>
using Taps = typename TapVectors<T>::Quad;   // (north-west, north-east, south-west, south-east)

// (Through PlaneRow, not memcpy: GCC copies an 8-byte memcpy through a general register and
// the stack, and the reload then waits on store forwarding.)
template <typename T>
inline TapRow<T> load_tap_row(const T* p) {
  return *reinterpret_cast<const typename TapVectors<T>::PlaneRow*>(p);
}

// The tap differences of bilinear_coord_grad, (v01 - v00, v11 - v10, v10 - v00, v11 - v01),
// of the tap rows north = (v00, v01) and south = (v10, v11).
template <typename T>
inline Taps<T> tap_differences(TapRow<T> north, TapRow<T> south) {
#if defined(__clang__) || __GNUC__ >= 12
  const Taps<T> v = __builtin_shufflevector(north, south, 0, 1, 2, 3);
  return __builtin_shufflevector(v, v, 1, 3, 2, 3) - __builtin_shufflevector(v, v, 0, 2, 0, 1);
#else  // no __builtin_shufflevector before GCC 12: the same values, built lane by lane
  return Taps<T>{north[1] - north[0], south[1] - south[0], south[0] - north[0],
                 south[1] - north[1]};
#endif
}

// Whether a kernel sampling scalar_t with kTaps taps has tap-vector loops (the element type
// must be the compute type). A call takes them when its input rows are contiguous and, in the
// backward pass, grad_input (if wanted) has the input's strides.
template <int kTaps, typename scalar_t>
constexpr bool kHasTapVectors = kTaps == 4 && std::is_same_v<scalar_t, at::opmath_type<scalar_t>>;

// One output row of a block of channels: a weighted gather of each pixel's taps, pixel by
// pixel with the channels innermost; kTapVectors: see TapVectors.
// kChannels: the block's channel count as a constant (0: block_channels at run time).
template <int kTaps, bool kTapVectors, int kChannels, typename T, typename scalar_t>
void gather_row(const RowSamples<T>& r, int64_t block_channels, const scalar_t* __restrict src,
                int64_t src_sc, TapDeltas delta, scalar_t* __restrict dst, int64_t dst_sc,
                int64_t dst_sw) {
  const int64_t channels = kChannels > 0 ? kChannels : block_channels;
  for (int64_t w = 0; w < r.width; ++w) {
    const scalar_t* s = src + r.origin[w];
    scalar_t* d = dst + w * dst_sw;
    const int32_t inside = r.inside[w];
    if (kTaps == 1) {
      for (int64_t c = 0; c < channels; ++c) {
        d[c * dst_sc] = inside ? s[c * src_sc] : scalar_t(0);
      }
      continue;
    }
    const Bilinear<T, int32_t> stencil = r.stencil(w);
    if constexpr (kTapVectors) {
      if (inside == kAllTaps) {
        // Both columns blended across the rows at once, then the columns: no horizontal sum
        // of a 4-vector (measured 3-6% faster than the corner weights times all four taps).
        for (int64_t c = 0; c < channels; ++c) {
          const TapRow<T> columns = stencil.north * load_tap_row(s + c * src_sc) +
                                    stencil.south * load_tap_row(s + c * src_sc + delta.sh);
          d[c * dst_sc] = stencil.west * columns[0] + stencil.east * columns[1];
        }
        continue;
      }
    }
    const T w00 = stencil.w00(), w01 = stencil.w01(), w10 = stencil.w10(), w11 = stencil.w11();
    if (inside == kAllTaps) {  // the common case: no tap in the padding
      for (int64_t c = 0; c < channels; ++c) {
        const scalar_t* sc = s + c * src_sc;
        d[c * dst_sc] = static_cast<scalar_t>(w00 * T(sc[0]) + w01 * T(sc[delta[1]]) +
                                              w10 * T(sc[delta[2]]) + w11 * T(sc[delta[3]]));
      }
    } else {
      const T weight[4] = {w00, w01, w10, w11};
      for (int64_t c = 0; c < channels; ++c) {
        const scalar_t* sc = s + c * src_sc;
        T acc = T(0);
        for (int k = 0; k < 4; ++k) {
          if ((inside >> k) & 1) acc += weight[k] * T(sc[delta[k]]);
        }
        d[c * dst_sc] = static_cast<scalar_t>(acc);
      }
    }
  }
}

// gather_row with the common small channel counts (a gray or colour image) as constants: the
// channel loop then unrolls into the pixel loop, which keeps the row's arrays in registers.
template <int kTaps, bool kTapVectors, typename T, typename scalar_t>
void gather_row_block(const RowSamples<T>& r, int64_t channels, const scalar_t* src,
                      int64_t src_sc, TapDeltas delta, scalar_t* dst, int64_t dst_sc,
                      int64_t dst_sw) {
  switch (channels) {
    case 1:
      return gather_row<kTaps, kTapVectors, 1>(r, channels, src, src_sc, delta, dst, dst_sc, dst_sw);
    case 3:
      return gather_row<kTaps, kTapVectors, 3>(r, channels, src, src_sc, delta, dst, dst_sc, dst_sw);
    default:
      return gather_row<kTaps, kTapVectors, 0>(r, channels, src, src_sc, delta, dst, dst_sc, dst_sw);
  }
}

#ifdef STN_EXT_LANE_GROUPS
// Bilinear float rows with unit x stride, 8 neighbouring points of a row (a lane group) at a
// time in AVX2 vectors of 8 lanes: the forward gather (gather_row_lanes) and the backward
// pass's coordinate gradient (add_coordinate_gradient_lanes). In each plane a group's four taps
// are four vectors, zero where a tap is outside, from one of two sources:
// - windows (LaneWindows): where the group's x0 lie within 16 columns and its y0 within 2 rows
//   (most groups of an affine map or a smooth grid), each tap is a permutation of the lanes of
//   unaligned 8-column loads of the input rows;
// - gathers (LaneGathers): otherwise, one masked gather per tap.
// The arithmetic is the same for every lane whichever source served it, so a point's results
// never depend on its neighbours. (Gathers for every group would be no faster than the
// per-point loops of gather_row and backward_row: the windows are what gains.)

// Where lane groups may read in an input plane: tap offsets y * row_stride + x in 32 bits, and
// window loads inside [0, last] (so inside the tensor, whatever its strides).
struct LanePlanes {
  int32_t row_stride;
  int64_t last;  // offset of the plane's last element

  // Whether lane groups serve an input of geometry `in`: unit x stride, rows in order (so the
  // windows' loads lie between the plane's first and last elements), and every tap offset of a
  // point not far outside (x0 and y0 in [-2, size], see move_far_points) fits in 32 bits.
  static std::optional<LanePlanes> of(const Geometry& in) {
    if (in.sw != 1 || in.sh < 0 ||
        (in.h + 2) * in.sh + in.w + 2 > std::numeric_limits<int32_t>::max()) {
      return std::nullopt;
    }
    return LanePlanes{static_cast<int32_t>(in.sh), (in.h - 1) * in.sh + in.w - 1};
  }
};

// The resolved points of the lane group at point w of a row; lanes past the row's end have no
// tap inside.
struct LaneGroup {
  int lanes;  // 8, or fewer at the row's end
  __m256i x0, y0;
  __m256 west, east, north, south;
  __m256 tap_inside[4];  // per tap (x fastest): all ones in the lanes where it is inside

  LaneGroup(const RowSamples<float>& r, int64_t w)
      : lanes(static_cast<int>(std::min<int64_t>(8, r.width - w))) {
    // A part group loads its lanes alone (masked loads: nothing read past the row's arrays).
    const __m256i in_row = _mm256_cmpgt_epi32(_mm256_set1_epi32(lanes),
                                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    const auto load_int = [&](const std::vector<int32_t>& v) {
      return lanes == 8 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(v.data() + w))
                        : _mm256_maskload_epi32(v.data() + w, in_row);
    };
    const auto load_float = [&](const std::vector<float>& v) {
      return lanes == 8 ? _mm256_loadu_ps(v.data() + w) : _mm256_maskload_ps(v.data() + w, in_row);
    };
    x0 = load_int(r.x0);
    y0 = load_int(r.y0);
    west = load_float(r.west);
    east = load_float(r.east);
    north = load_float(r.north);
    south = load_float(r.south);
    const __m256i inside = load_int(r.inside);
    for (int k = 0; k < 4; ++k) {
      const __m256i bit = _mm256_set1_epi32(1 << k);
      tap_inside[k] = _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(inside, bit), bit));
    }
  }

  // Each lane's bilinear sample from its taps (v00, v01, v10, v11): each tap column blended
  // across the rows, then the columns.
  __m256 blend(const __m256 v[4]) const {
    const __m256 west_column = _mm256_fmadd_ps(north, v[0], _mm256_mul_ps(south, v[2]));
    const __m256 east_column = _mm256_fmadd_ps(north, v[1], _mm256_mul_ps(south, v[3]));
    return _mm256_fmadd_ps(west, west_column, _mm256_mul_ps(east, east_column));
  }
};

// The windows source: a group's taps in the rows from its lowest y0 (the first row) and
// columns from its lowest x0 (the first column), 8 columns at a time (kWide: 16).
struct LaneWindows {
  bool serves;         // whether the group's points fit the windows (the rest is unset if not)
  bool wide;           // whether any lane's column is 8 or more
  int64_t first;       // plane offset of the first row and column
  int64_t third_row;   // offset of the row the second row's south taps read (the second row
                       // itself where no lane is in it: then nothing reads it)
  __m256i column;      // each lane's x0 - first column: its west tap's lane in a window
  __m256 second_row;   // all ones in the lanes whose y0 is the second row
  __m256 high;         // all ones in the lanes whose column is 8 or more

  LaneWindows(const LaneGroup& g, const LanePlanes& planes) : serves(false), wide(false) {
    if (g.lanes != 8) return;
    // The lowest x0 and y0: at one of the group's ends, where they are monotonic.
    alignas(32) int32_t x0[8], y0[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(x0), g.x0);
    _mm256_store_si256(reinterpret_cast<__m256i*>(y0), g.y0);
    const int32_t x_first = std::min(x0[0], x0[7]), y_first = std::min(y0[0], y0[7]);
    column = _mm256_sub_epi32(g.x0, _mm256_set1_epi32(x_first));
    const __m256i row = _mm256_sub_epi32(g.y0, _mm256_set1_epi32(y_first));
    // Columns in [0, 15], rows in [0, 1]: no bit beyond.
    const __m256i beyond = _mm256_or_si256(_mm256_andnot_si256(_mm256_set1_epi32(15), column),
                                           _mm256_andnot_si256(_mm256_set1_epi32(1), row));
    if (!_mm256_testz_si256(beyond, beyond)) return;
    wide = !_mm256_testz_si256(column, _mm256_set1_epi32(8));
    first = int64_t(y_first) * planes.row_stride + x_first;
    third_row = (_mm256_testz_si256(row, row) ? 1 : 2) * int64_t(planes.row_stride);
    // The last load's last column: the east taps' (one column on) in the last row read.
    const int64_t end = first + third_row + (wide ? 16 : 8);
    serves = first >= 0 && end <= planes.last;
    second_row = _mm256_castsi256_ps(_mm256_cmpgt_epi32(row, _mm256_setzero_si256()));
    high = _mm256_castsi256_ps(_mm256_cmpgt_epi32(column, _mm256_set1_epi32(7)));
  }

  // The group's taps in the plane at `plane` (row stride sh) to v.
  template <bool kWide>
  C10_ALWAYS_INLINE void taps(const LaneGroup& g, const float* plane, int64_t sh,
                              __m256 v[4]) const {
    const float* p = plane + first;
    // Each lane's tap in the row and column at offset `at` from its own (west taps at 0, east
    // taps at 1). vpermps reads an index's low 3 bits: column - 8 in the next 8 columns.
    const auto tap = [&](int64_t at) {
      const __m256 low = _mm256_permutevar8x32_ps(_mm256_loadu_ps(p + at), column);
      if constexpr (!kWide) return low;
      return _mm256_blendv_ps(low, _mm256_permutevar8x32_ps(_mm256_loadu_ps(p + at + 8), column),
                              high);
    };
    const __m256 second_west = tap(sh), second_east = tap(sh + 1);
    v[0] = _mm256_blendv_ps(tap(0), second_west, second_row);
    v[1] = _mm256_blendv_ps(tap(1), second_east, second_row);
    v[2] = _mm256_blendv_ps(second_west, tap(third_row), second_row);
    v[3] = _mm256_blendv_ps(second_east, tap(third_row + 1), second_row);
    for (int k = 0; k < 4; ++k) v[k] = _mm256_and_ps(v[k], g.tap_inside[k]);
  }
};

// The gathers source: each tap's plane offset.
struct LaneGathers {
  __m256i offset[4];

  LaneGathers(const LaneGroup& g, const LanePlanes& planes) {
    const __m256i sh = _mm256_set1_epi32(planes.row_stride), one = _mm256_set1_epi32(1);
    offset[0] = _mm256_add_epi32(_mm256_mullo_epi32(g.y0, sh), g.x0);
    offset[1] = _mm256_add_epi32(offset[0], one);
    offset[2] = _mm256_add_epi32(offset[0], sh);
    offset[3] = _mm256_add_epi32(offset[2], one);
  }
  C10_ALWAYS_INLINE void taps(const LaneGroup& g, const float* plane, __m256 v[4]) const {
    for (int k = 0; k < 4; ++k) {
      v[k] = _mm256_mask_i32gather_ps(_mm256_setzero_ps(), plane, offset[k], g.tap_inside[k], 4);
    }
  }
};

// Calls body(w, group, taps) for each lane group of row r (from point w), where
// taps(plane, v) writes the group's four taps in an input plane to v: body is instantiated
// once per tap source, so that its channel loop has no branch on the source.
template <typename Body>
C10_ALWAYS_INLINE void for_each_lane_group(const RowSamples<float>& r, const LanePlanes& planes,
                                           Body body) {
  const int64_t sh = planes.row_stride;
  for (int64_t w = 0; w < r.width; w += 8) {
    const LaneGroup g(r, w);
    const LaneWindows windows(g, planes);
    if (windows.serves && windows.wide) {
      body(w, g, [&](const float* plane, __m256 v[4]) { windows.taps<true>(g, plane, sh, v); });
    } else if (windows.serves) {
      body(w, g, [&](const float* plane, __m256 v[4]) { windows.taps<false>(g, plane, sh, v); });
    } else {
      const LaneGathers gathers(g, planes);
      body(w, g, [&](const float* plane, __m256 v[4]) { gathers.taps(g, plane, v); });
    }
  }
}

// gather_row of bilinear float rows with unit x stride, by lane groups, into output rows
// with unit x stride: the samples of each channel of a block (planes src + c * src_sc) stored
// to dst + c * dst_sc.
void gather_row_lanes(const RowSamples<float>& r, const LanePlanes& planes, int64_t channels,
                      const float* src, int64_t src_sc, float* dst, int64_t dst_sc) {
  for_each_lane_group(r, planes, [&](int64_t w, const LaneGroup& g, auto taps) {
    for (int64_t c = 0; c < channels; ++c) {
      __m256 v[4];
      taps(src + c * src_sc, v);
      const __m256 out = g.blend(v);
      float* d = dst + c * dst_sc + w;
      if (g.lanes == 8) {
        _mm256_storeu_ps(d, out);
      } else {
        alignas(32) float lane[8];
        _mm256_store_ps(lane, out);
        std::copy(lane, lane + g.lanes, d);
      }
    }
  });
}

// The backward pass's coordinate gradient along a row for a block of channels (planes
// input + c * input_sc), by lane groups: adds to g_ix[w], g_iy[w] the sum over the channels of
// grad_output (grad_output + c * grad_output_sc + w * grad_output_sw) times d(sample)/d(ix, iy),
// as backward_row does. (A point with no tap inside adds zero, or NaN where grad_output is not
// finite: the coordinate sources' add_row_gradient ignore such points.)
void add_coordinate_gradient_lanes(const RowSamples<float>& r, const LanePlanes& planes,
                                   int64_t channels, const float* input, int64_t input_sc,
                                   const float* grad_output, int64_t grad_output_sc,
                                   int64_t grad_output_sw, float* g_ix, float* g_iy) {
  for_each_lane_group(r, planes, [&](int64_t w, const LaneGroup& g, auto taps) {
    const bool whole = g.lanes == 8 && grad_output_sw == 1;  // grad_output lanes as one load
    // Over the channels, grad_output times the tap differences of bilinear_coord_grad
    // (v01 - v00, v11 - v10, v10 - v00, v11 - v01), whose weights are the same for every
    // channel: applied once, after the loop.
    __m256 sum[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                     _mm256_setzero_ps()};
    const float* go = grad_output + w * grad_output_sw;
    for (int64_t c = 0; c < channels; ++c, go += grad_output_sc) {
      __m256 v[4];
      taps(input + c * input_sc, v);
      __m256 gc;
      if (whole) {
        gc = _mm256_loadu_ps(go);
      } else {
        alignas(32) float lane[8] = {};
        for (int l = 0; l < g.lanes; ++l) lane[l] = go[l * grad_output_sw];
        gc = _mm256_load_ps(lane);
      }
      sum[0] = _mm256_fmadd_ps(gc, _mm256_sub_ps(v[1], v[0]), sum[0]);
      sum[1] = _mm256_fmadd_ps(gc, _mm256_sub_ps(v[3], v[2]), sum[1]);
      sum[2] = _mm256_fmadd_ps(gc, _mm256_sub_ps(v[2], v[0]), sum[2]);
      sum[3] = _mm256_fmadd_ps(gc, _mm256_sub_ps(v[3], v[1]), sum[3]);
    }
    const __m256 d_ix = _mm256_fmadd_ps(g.north, sum[0], _mm256_mul_ps(g.south, sum[1]));
    const __m256 d_iy = _mm256_fmadd_ps(g.west, sum[2], _mm256_mul_ps(g.east, sum[3]));
    if (g.lanes == 8) {
      _mm256_storeu_ps(g_ix + w, _mm256_add_ps(_mm256_loadu_ps(g_ix + w), d_ix));
      _mm256_storeu_ps(g_iy + w, _mm256_add_ps(_mm256_loadu_ps(g_iy + w), d_iy));
    } else {
      alignas(32) float lane_ix[8], lane_iy[8];
      _mm256_store_ps(lane_ix, d_ix);
      _mm256_store_ps(lane_iy, d_iy);
      for (int l = 0; l < g.lanes; ++l) {
        g_ix[w + l] += lane_ix[l];
        g_iy[w + l] += lane_iy[l];
      }
    }
  });
}
#endif  // STN_EXT_LANE_GROUPS

// The row's theta gradient from its pixels' coordinate gradients (summed over the channels),
// added to tg. base_y is the same for the whole row, so the row needs four sums, not six; the
// simd reduction lets them vectorise (in a fixed order, so the result stays deterministic).
template <typename T>
void add_row_theta_grad(const RowSamples<T>& r, const T* __restrict g_ix_row,
                        const T* __restrict g_iy_row, const T* __restrict base_x, T base_y,
                        ThetaGrad<double>* tg) {
  const int32_t* __restrict inside = r.inside.data();
  const T* __restrict dix = r.dix.data();
  const T* __restrict diy = r.diy.data();
  double gx_bx = 0, gx_sum = 0, gy_bx = 0, gy_sum = 0;
#pragma omp simd reduction(+ : gx_bx, gx_sum, gy_bx, gy_sum)
  for (int64_t w = 0; w < r.width; ++w) {
    // A pixel with no tap in the image has no gradient (and maybe a NaN coordinate derivative),
    // even where grad_output is NaN or inf: ATen skips such taps. An undefined point's NaN is
    // applied to the whole image by AffineRows::Image::finish_unit.
    const double gx = inside[w] != 0 ? double(g_ix_row[w] * dix[w]) : 0.0;
    const double gy = inside[w] != 0 ? double(g_iy_row[w] * diy[w]) : 0.0;
    gx_bx += gx * double(base_x[w]);
    gx_sum += gx;
    gy_bx += gy * double(base_x[w]);
    gy_sum += gy;
  }
  tg->g[0] += gx_bx;
  tg->g[1] += gx_sum * double(base_y);
  tg->g[2] += gx_sum;
  tg->g[3] += gy_bx;
  tg->g[4] += gy_sum * double(base_y);
  tg->g[5] += gy_sum;
}

// The coordinate sources of the row kernels. Each gives, per image, the normalised grid
// coordinates of an output row's points (grid_x(h) and grid_y(h): functions of the point's
// column w), whether a row may hold undefined points (check_undefined), and takes the
// coordinates' gradient back in the backward pass: add_row_gradient for each output row of a work
// unit (image, channel group), then finish_unit. row_points: the points of one of the op's output
// rows (a kernel row may take several, see grid_sample_rows_cpu).

// F.affine_grid's points: theta (N, 2, 3) applied to the base grid (linspace(-1, 1) per axis).
// The gradient is reduced per work unit in double: theta_partials[unit * 6 + k].
template <typename T, typename scalar_t>
struct AffineRows {
  const at::Tensor& theta;
  std::vector<T> base_x;
  int64_t row_points, out_h;
  bool align_corners;
  Geometry in;
  double* theta_partials;  // backward pass only

  AffineRows(const at::Tensor& theta, int64_t out_w, int64_t out_h, bool align_corners,
             const Geometry& in, double* theta_partials = nullptr)
      : theta(theta), base_x(base_coords<T>(out_w, align_corners)), row_points(out_w),
        out_h(out_h), align_corners(align_corners), in(in), theta_partials(theta_partials) {}

  struct Image {
    const AffineRows* rows;
    Affine<T> a;
    bool check_undefined;
    double* partial;  // the work unit's 6 theta_partials
    ThetaGrad<double> tg{};
    bool has_undefined = false;  // an undefined point makes the image's theta gradient NaN

    T base_y(int64_t h) const { return base_coord<T>(h, rows->out_h, rows->align_corners); }
    auto grid_x(int64_t h) const {
      return [a = a, base_x = rows->base_x.data(), base_y = base_y(h)](int64_t w) {
        return a.grid_x(base_x[w], base_y);
      };
    }
    auto grid_y(int64_t h) const {
      return [a = a, base_x = rows->base_x.data(), base_y = base_y(h)](int64_t w) {
        return a.grid_y(base_x[w], base_y);
      };
    }
    void add_row_gradient(const RowSamples<T>& r, int64_t h, const T* g_ix, const T* g_iy) {
      has_undefined |= r.has_undefined;
      add_row_theta_grad(r, g_ix, g_iy, rows->base_x.data(), base_y(h), &tg);
    }
    void finish_unit() {
      if (has_undefined) std::fill(tg.g, tg.g + 6, std::numeric_limits<double>::quiet_NaN());
      std::copy(tg.g, tg.g + 6, partial);
    }
  };
  // unit: the backward pass's work unit (image n, channel group); unused by the forward pass.
  Image image(int64_t n, int64_t unit = 0) const {
    const Affine<T> a = affine_of<T, scalar_t>(theta, n);
    return Image{this, a, may_be_undefined(a, in),
                 theta_partials != nullptr ? theta_partials + unit * 6 : nullptr};
  }
};

// grid_sample's points: a dense grid (N, Ho, Wo, 2) of normalised (x, y), any strides. The
// gradient is written per point, d(loss)/d(grid) of a work unit's channels: grad_partials[unit]
// is (Ho, Wo, 2), contiguous.
template <typename T, typename scalar_t>
struct GridRows {
  const scalar_t* points;
  int64_t sn, sh, sw, s_coord;
  int64_t out_h, out_w, row_points;
  T* grad_partials;  // backward pass only

  GridRows(const at::Tensor& grid, int64_t row_points, T* grad_partials = nullptr)
      : points(grid.const_data_ptr<scalar_t>()), sn(grid.stride(0)), sh(grid.stride(1)),
        sw(grid.stride(2)), s_coord(grid.stride(3)), out_h(grid.size(1)), out_w(grid.size(2)),
        row_points(row_points), grad_partials(grad_partials) {}

  struct Image {
    const GridRows* rows;
    const scalar_t* points;
    T* grad;  // the work unit's grad_partials
    // Any point of a dense grid may be non-finite.
    static constexpr bool check_undefined = true;

    auto grid_x(int64_t h) const {
      return [p = points + h * rows->sh, sw = rows->sw](int64_t w) { return T(p[w * sw]); };
    }
    auto grid_y(int64_t h) const {
      return [p = points + h * rows->sh + rows->s_coord, sw = rows->sw](int64_t w) {
        return T(p[w * sw]);
      };
    }

    // A point with no tap in the image has a zero gradient (whatever grad_output holds), an
    // undefined point a NaN one.
    void add_row_gradient(const RowSamples<T>& r, int64_t h, const T* __restrict g_ix,
                          const T* __restrict g_iy) const {
      T* __restrict out = grad + h * rows->out_w * 2;
      const int32_t* __restrict inside = r.inside.data();
      const T* __restrict dix = r.dix.data();
      const T* __restrict diy = r.diy.data();
      for (int64_t w = 0; w < r.width; ++w) {
        out[2 * w] = inside[w] != 0 ? g_ix[w] * dix[w] : T(0);
        out[2 * w + 1] = inside[w] != 0 ? g_iy[w] * diy[w] : T(0);
      }
      if (!r.has_undefined) return;
      for (int64_t w = 0; w < r.width; ++w) {
        if (r.undefined[w]) out[2 * w] = out[2 * w + 1] = std::numeric_limits<T>::quiet_NaN();
      }
    }
    void finish_unit() const {}
  };
  // unit: the backward pass's work unit (image n, channel group); unused by the forward pass.
  Image image(int64_t n, int64_t unit = 0) const {
    return Image{this, points + n * sn,
                 grad_partials != nullptr ? grad_partials + unit * out_h * out_w * 2 : nullptr};
  }
};

// Templated on mode and padding (see with_static_config) so the per-pixel math is branch-free,
// and on the coordinate source (AffineRows, GridRows). Each task takes whole output rows: first
// the row's sample points, then the gather.
template <Interpolation kMode, Padding kPadding, typename scalar_t, typename Source>
void forward_kernel(const at::Tensor& input, const Source& source, const at::Tensor& output,
                    bool align_corners) {
  using T = at::opmath_type<scalar_t>;
  constexpr int kTaps = kMode == Interpolation::Bilinear ? 4 : 1;
  const Geometry in(input), out(output);
  const scalar_t* in_ptr = input.const_data_ptr<scalar_t>();
  scalar_t* out_ptr = output.mutable_data_ptr<scalar_t>();
  const TapDeltas delta(in);
#ifdef STN_EXT_LANE_GROUPS
  const std::optional<LanePlanes> lane_planes = LanePlanes::of(in);
#endif
  const int64_t block = channel_block(in);
  // Enough rows per task to amortise scheduling on small images.
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, out.w * out.c));

  at::parallel_for(0, out.n * out.h, grain, [&](int64_t begin, int64_t end) {
    RowSamples<T> row(out.w);
    std::optional<typename Source::Image> image;  // of image n
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / out.h, h = r % out.h;
      if (r == begin || h == 0) image.emplace(source.image(n));
      row.template resolve<kMode, kPadding, false>(image->grid_x(h), image->grid_y(h), in,
                                                   align_corners, image->check_undefined);
      for (int64_t c = 0; c < out.c; c += block) {
        const int64_t channels = std::min(block, out.c - c);
        const scalar_t* src = in_ptr + n * in.sn + c * in.sc;
        scalar_t* dst = out_ptr + n * out.sn + c * out.sc + h * out.sh;
        if constexpr (kHasTapVectors<kTaps, scalar_t>) {
#ifdef STN_EXT_LANE_GROUPS
          if constexpr (std::is_same_v<scalar_t, float>) {
            if (lane_planes && out.sw == 1) {
              gather_row_lanes(row, *lane_planes, channels, src, in.sc, dst, out.sc);
              continue;
            }
          }
#endif
          if (in.sw == 1) {
            gather_row_block<kTaps, true>(row, channels, src, in.sc, delta, dst, out.sc, out.sw);
            continue;
          }
        }
        gather_row_block<kTaps, false>(row, channels, src, in.sc, delta, dst, out.sc, out.sw);
      }
      if (row.has_undefined) {  // rare: patched here, not tested in the gather loops
        scalar_t* dst = out_ptr + n * out.sn + h * out.sh;
        for (int64_t w = 0; w < out.w; ++w) {
          if (!row.undefined[w]) continue;
          for (int64_t c = 0; c < out.c; ++c) {
            dst[c * out.sc + w * out.sw] = std::numeric_limits<scalar_t>::quiet_NaN();
          }
        }
      }
    }
  });
}

// Work units of the backward pass are (image, channel group): each writes only its own slice
// of grad_input and its own partial of the coordinate gradient, and the partials are summed in a
// fixed order.
// The split depends on the shape alone, so results do not depend on the thread count.
int64_t channel_groups(int64_t batch, int64_t channels) {
  constexpr int64_t kMinUnits = 8;
  return batch >= kMinUnits ? 1 : std::max<int64_t>(1, std::min(channels, kMinUnits));
}

// Where one backward call of backward_row reads and writes: a block of channels of input,
// grad_output and grad_input, with their channel strides.
template <typename scalar_t, typename grad_in_t>
struct BlockPlanes {
  int64_t channels;
  const scalar_t* input;
  int64_t input_sc;
  const scalar_t* grad_output_row;  // the current output row of the first channel
  int64_t grad_output_sc, grad_output_sw;
  grad_in_t* grad_input;
  int64_t grad_input_sc;
};

// The east tap column of a pixel's grad_input contributions, one value per tap row and channel
// of a block of kChannels, held in registers until the next pixel (see backward_row).
template <int kChannels, typename T>
struct CarriedColumn {
  T north[kChannels] = {}, south[kChannels] = {};
  int64_t at = -1;  // the column's north tap in the block's first grad_input plane; -1: none

  // Adds the column to grad_input (the block's first plane, channel stride sc, row stride sh)
  // and empties it.
  template <typename grad_in_t>
  void flush(grad_in_t* grad_input, int64_t sc, int64_t sh) {
    if (at < 0) return;
    grad_in_t* d = grad_input + at;
    for (int c = 0; c < kChannels; ++c, d += sc) {
      d[0] += north[c];
      d[sh] += south[c];
      north[c] = south[c] = T(0);
    }
    at = -1;
  }
};

// The backward pass along one output row for a block of channels, pixel by pixel with the
// channels innermost: scatters the tap weights times grad_output into grad_input, and adds the
// block's d(loss)/d(ix, iy) to g_ix[w], g_iy[w] (summed in registers over the block, in channel
// order). Templated on which gradients are wanted so the loops have no loop-invariant branches,
// and on whether grad_input's planes have input's strides (kSameLayout, the usual case): then
// one set of tap offsets serves both, which frees the registers the channel loop needs.
// kTapVectors (see TapVectors) takes the input taps of a pixel with no tap in the padding as
// one vector. kChannels: the block's channel count as a constant (0: planes.channels at run
// time).
//
// With tap vectors and a constant block, a pixel with no tap in the padding keeps its east
// column of grad_input contributions in registers (CarriedColumn): when the next pixel's west
// column is the same (x0 one further on the same rows, as for most neighbours of an affine map
// or a smooth grid) it adds them to its own, so each tap column is read and written once, not
// twice, and neighbours do not wait on each other's stores. A column is carried only within one
// output row of row_points points (a kernel row may hold several, grid_sample_rows_cpu), so the
// sums, and every bit of grad_input, do not depend on how rows are merged.
template <bool kGradInput, bool kGradCoordinates, int kTaps, bool kSameLayout, bool kTapVectors,
          int kChannels = 0, typename T, typename scalar_t, typename grad_in_t>
void backward_row(const RowSamples<T>& r, const BlockPlanes<scalar_t, grad_in_t>& planes,
                  const int64_t* __restrict gin_origin, TapDeltas in_delta,
                  TapDeltas gin_own_delta, int64_t row_points, T* __restrict g_ix_row,
                  T* __restrict g_iy_row) {
  const int64_t channels = kChannels > 0 ? kChannels : planes.channels;
  const TapDeltas gin_delta = kSameLayout ? in_delta : gin_own_delta;
  const int64_t grad_input_sc = kSameLayout ? planes.input_sc : planes.grad_input_sc;
  constexpr bool kCarry = kGradInput && kTapVectors && kChannels > 0;
  CarriedColumn<kCarry ? kChannels : 1, T> carried;
  const auto flush = [&] {
    if constexpr (kCarry) carried.flush(planes.grad_input, grad_input_sc, gin_delta.sh);
  };
  int64_t row_end = row_points;
  for (int64_t w = 0; w < r.width; ++w) {
    if (kCarry && w == row_end) {
      flush();
      row_end += row_points;
    }
    const int32_t inside = r.inside[w];
    if (inside == 0) continue;  // nothing to scatter, no gradient (whatever grad_output holds)
    const bool all_inside = kTaps == 4 && inside == kAllTaps;  // the common case
    const Bilinear<T, int32_t> stencil = r.stencil(w);
    const T weight[4] = {stencil.w00(), stencil.w01(), stencil.w10(), stencil.w11()};
    // Walked channel by channel: pointer bumps keep the loop's registers free.
    const scalar_t* go = planes.grad_output_row + w * planes.grad_output_sw;
    const scalar_t* s = planes.input + r.origin[w];
    grad_in_t* d =
        kGradInput ? planes.grad_input + (kSameLayout ? r.origin[w] : gin_origin[w]) : nullptr;
    if constexpr (kTapVectors) {
      if (all_inside) {
        // Sum over the channels of g times the tap differences, whose weights in
        // bilinear_coord_grad are the same for every channel: applied once, after the loop.
        Taps<T> diffs = {};
        if (kCarry && r.origin[w] != carried.at) flush();  // its west column is another
        for (int64_t c = 0; c < channels; ++c, go += planes.grad_output_sc,
                     s += planes.input_sc, d += kGradInput ? grad_input_sc : 0) {
          const T g = T(*go);
          if constexpr (kGradCoordinates) {
            diffs += g * tap_differences<T>(load_tap_row(s), load_tap_row(s + in_delta.sh));
          }
          if constexpr (kCarry) {
            d[0] += carried.north[c] + weight[0] * g;
            d[gin_delta.sh] += carried.south[c] + weight[2] * g;
            carried.north[c] = weight[1] * g;
            carried.south[c] = weight[3] * g;
          } else if constexpr (kGradInput) {
            for (int k = 0; k < 4; ++k) d[gin_delta[k]] += static_cast<grad_in_t>(weight[k] * g);
          }
        }
        if constexpr (kCarry) carried.at = r.origin[w] + gin_delta.sw;
        if constexpr (kGradCoordinates) {
          g_ix_row[w] += stencil.north * diffs[0] + stencil.south * diffs[1];
          g_iy_row[w] += stencil.west * diffs[2] + stencil.east * diffs[3];
        }
        continue;
      }
    }
    flush();  // this pixel may write the carried column
    T g_ix = g_ix_row[w], g_iy = g_iy_row[w];
    for (int64_t c = 0; c < channels; ++c, go += planes.grad_output_sc,
                 s += planes.input_sc, d += kGradInput ? grad_input_sc : 0) {
      const T g = T(*go);
      if constexpr (kGradInput) {
        if (kTaps == 1) {
          d[0] += static_cast<grad_in_t>(g);
        } else if (all_inside) {
          for (int k = 0; k < 4; ++k) d[gin_delta[k]] += static_cast<grad_in_t>(weight[k] * g);
        } else {
          for (int k = 0; k < 4; ++k) {
            if ((inside >> k) & 1) d[gin_delta[k]] += static_cast<grad_in_t>(weight[k] * g);
          }
        }
      }
      if constexpr (kGradCoordinates) {
        T v[4];
        if (all_inside) {
          for (int k = 0; k < 4; ++k) v[k] = T(s[in_delta[k]]);
        } else {
          for (int k = 0; k < 4; ++k) v[k] = (inside >> k) & 1 ? T(s[in_delta[k]]) : T(0);
        }
        T d_ix, d_iy;
        bilinear_coord_grad(stencil, v[0], v[1], v[2], v[3], &d_ix, &d_iy);
        g_ix += g * d_ix;
        g_iy += g * d_iy;
      }
    }
    if constexpr (kGradCoordinates) {
      g_ix_row[w] = g_ix;
      g_iy_row[w] = g_iy;
    }
  }
  flush();
}

// Zeroes channels [c_begin, c_end) of one image of grad_input before the unit accumulates
// into them: in parallel, and into the cache the scatter then uses (a separate zero fill would
// be one more serial pass over memory).
template <typename grad_in_t>
void zero_channels(grad_in_t* image, const Geometry& g, int64_t c_begin, int64_t c_end) {
  if (g.sw == 1 && g.sh == g.w && g.sc == g.h * g.w) {  // NCHW: the planes are one block
    std::fill(image + c_begin * g.sc, image + c_end * g.sc, grad_in_t(0));
    return;
  }
  for (int64_t h = 0; h < g.h; ++h) {
    for (int64_t w = 0; w < g.w; ++w) {
      grad_in_t* pixel = image + h * g.sh + w * g.sw;
      for (int64_t c = c_begin; c < c_end; ++c) pixel[c * g.sc] = grad_in_t(0);
    }
  }
}

// grad_in_t is the opmath type: float for float and reduced-precision inputs (accumulating in
// half would lose gradient mass; the caller casts back), double for double.
// kGradCoordinates: whether the coordinate source's gradient is wanted (it takes it back per work
// unit, see AffineRows and GridRows).
template <Interpolation kMode, Padding kPadding, bool kGradInput, bool kGradCoordinates,
          typename scalar_t, typename grad_in_t, typename Source>
void backward_kernel(const at::Tensor& grad_output, const at::Tensor& input, const Source& source,
                     bool align_corners, grad_in_t* grad_in_ptr, const Geometry& gin,
                     int64_t groups) {
  using T = at::opmath_type<scalar_t>;
  constexpr int kTaps = kMode == Interpolation::Bilinear ? 4 : 1;
  const Geometry in(input), gout(grad_output);
  const scalar_t* in_ptr = input.const_data_ptr<scalar_t>();
  const scalar_t* gout_ptr = grad_output.const_data_ptr<scalar_t>();
  const TapDeltas in_delta(in), gin_delta(gin);
  const int64_t block = channel_block(in);
  // grad_input takes input's memory format, so this holds unless input has unusual strides.
  const bool same_layout = kGradInput && gin.sc == in.sc && gin.sh == in.sh && gin.sw == in.sw;
  const bool tap_vectors = in.sw == 1 && (same_layout || !kGradInput);
#ifdef STN_EXT_LANE_GROUPS
  const std::optional<LanePlanes> lane_planes = LanePlanes::of(in);
#endif

  at::parallel_for(0, in.n * groups, 1, [&](int64_t begin, int64_t end) {
    RowSamples<T> row(gout.w);
    // Tap 0 in grad_input planes; with the same layout, the row's input origins serve.
    std::vector<int64_t> gin_origin(kGradInput && !same_layout ? gout.w : 0);
    std::vector<T> g_ix(gout.w), g_iy(gout.w);  // per pixel, summed over the unit's channels
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t n = unit / groups;
      // The channels split evenly: no group is empty (groups <= channels).
      const int64_t c_begin = (unit % groups) * in.c / groups;
      const int64_t c_end = (unit % groups + 1) * in.c / groups;
      auto image = source.image(n, unit);
      if constexpr (kGradInput) zero_channels(grad_in_ptr + n * gin.sn, gin, c_begin, c_end);
      for (int64_t h = 0; h < gout.h; ++h) {
        row.template resolve<kMode, kPadding, kGradCoordinates>(
            image.grid_x(h), image.grid_y(h), in, align_corners, image.check_undefined);
        if (kGradInput && !same_layout) row.set_origins(gin, gin_origin.data());
        std::fill(g_ix.begin(), g_ix.end(), T(0));
        std::fill(g_iy.begin(), g_iy.end(), T(0));
        for (int64_t c = c_begin; c < c_end; c += block) {
          const BlockPlanes<scalar_t, grad_in_t> planes{
              std::min(block, c_end - c), in_ptr + n * in.sn + c * in.sc, in.sc,
              gout_ptr + n * gout.sn + c * gout.sc + h * gout.sh, gout.sc, gout.sw,
              kGradInput ? grad_in_ptr + n * gin.sn + c * gin.sc : nullptr, gin.sc};
          // coordinates: whether backward_row adds the coordinate gradient (kGradCoordinates,
          // unless lane groups do).
          const auto run = [&](auto same_layout, auto tap_vectors, auto channels,
                               auto coordinates) {
            backward_row<kGradInput, decltype(coordinates)::value, kTaps,
                         decltype(same_layout)::value, decltype(tap_vectors)::value,
                         decltype(channels)::value>(row, planes, gin_origin.data(), in_delta,
                                                    gin_delta, source.row_points, g_ix.data(),
                                                    g_iy.data());
          };
          using Yes = std::true_type;
          using No = std::false_type;
          using Coordinates = std::integral_constant<bool, kGradCoordinates>;
          if constexpr (kHasTapVectors<kTaps, scalar_t>) {
            if (tap_vectors) {
              // The channel blocks of planar input (kChannelBlock) as constants.
              static_assert(kChannelBlock == 4);
              const auto run_block = [&](auto coordinates) {
                switch (planes.channels) {
                  case 1: return run(Yes{}, Yes{}, Channels<1>{}, coordinates);
                  case 2: return run(Yes{}, Yes{}, Channels<2>{}, coordinates);
                  case 3: return run(Yes{}, Yes{}, Channels<3>{}, coordinates);
                  case 4: return run(Yes{}, Yes{}, Channels<4>{}, coordinates);
                  default: return run(Yes{}, Yes{}, Channels<0>{}, coordinates);
                }
              };
#ifdef STN_EXT_LANE_GROUPS
              if constexpr (kGradCoordinates && std::is_same_v<scalar_t, float>) {
                if (lane_planes) {
                  if constexpr (kGradInput) run_block(No{});
                  add_coordinate_gradient_lanes(row, *lane_planes, planes.channels, planes.input,
                                                planes.input_sc, planes.grad_output_row,
                                                planes.grad_output_sc, planes.grad_output_sw,
                                                g_ix.data(), g_iy.data());
                  continue;
                }
              }
#endif
              run_block(Coordinates{});
              continue;
            }
          }
          if (same_layout) {
            run(Yes{}, No{}, Channels<0>{}, Coordinates{});
          } else {
            run(No{}, No{}, Channels<0>{}, Coordinates{});
          }
        }
        if constexpr (kGradCoordinates) image.add_row_gradient(row, h, g_ix.data(), g_iy.data());
      }
      if constexpr (kGradCoordinates) image.finish_unit();
    }
  });
}

// Whether the backward pass computes a coordinate gradient: not for nearest sampling (piecewise
// constant: zero), nor where nothing is sampled (zero too).
bool computes_coordinate_gradient(const at::Tensor& grad_output, const at::Tensor& input,
                                  const SampleConfig& cfg) {
  return cfg.mode == Interpolation::Bilinear && grad_output.numel() != 0 && input.size(1) != 0;
}

// The forward pass at the points of make_source(scalar_t{}) (a coordinate source), into a new
// (N, C, out_h, out_w) output.
template <typename MakeSource>
at::Tensor sample_rows(const at::Tensor& input, int64_t out_h, int64_t out_w,
                       const SampleConfig& cfg, MakeSource make_source) {
  check_cpu_axis_sizes(input);
  at::Tensor output = with_huge_page_advice(
      at::empty({input.size(0), input.size(1), out_h, out_w},
                input.options().memory_format(output_memory_format(input))));
  if (output.numel() == 0) return output;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "sample_rows", [&] {
        const auto source = make_source(scalar_t{});
        with_static_config(cfg, [&](auto mode, auto padding) {
          forward_kernel<decltype(mode)::value, decltype(padding)::value, scalar_t>(
              input, source, output, cfg.align_corners);
        });
      });
  return output;
}

// The backward pass in work units of (image, channel group) (channel_groups): returns grad_input
// if output_mask[0]; if output_mask[1], make_source(scalar_t{})'s source takes the coordinate
// gradient of every unit (the caller sums a unit's partials over the groups) where
// computes_coordinate_gradient; elsewhere the caller's partials are left as they are (zero).
template <typename MakeSource>
at::Tensor sample_rows_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                const SampleConfig& cfg, std::array<bool, 2> output_mask,
                                int64_t groups, MakeSource make_source) {
  check_cpu_axis_sizes(input);
  // Accumulated in the opmath type (float for half and bfloat16), cast back at the end; the
  // kernel zeroes it unit by unit.
  at::Tensor grad_input_acc = output_mask[0]
      ? with_huge_page_advice(at::empty_like(
            input, input.options().dtype(at::toOpMathType(input.scalar_type())),
            output_memory_format(input)))
      : at::empty({0}, input.options());
  if (grad_output.numel() == 0 || input.size(1) == 0) {
    return grad_input_acc.zero_().to(input.scalar_type());  // nothing samples the input
  }
  const Geometry gin = output_mask[0] ? Geometry(grad_input_acc) : Geometry(input);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "sample_rows_backward", [&] {
        using grad_in_t = at::opmath_type<scalar_t>;
        grad_in_t* grad_in = output_mask[0] ? grad_input_acc.mutable_data_ptr<grad_in_t>() : nullptr;
        const bool coordinate_work =
            output_mask[1] && computes_coordinate_gradient(grad_output, input, cfg);
        const auto source = make_source(scalar_t{});
        with_static_config(cfg, [&](auto mode, auto padding) {
          constexpr Interpolation kMode = decltype(mode)::value;
          constexpr Padding kPadding = decltype(padding)::value;
          auto run = [&](auto grad_input_wanted, auto coordinates_wanted) {
            backward_kernel<kMode, kPadding, decltype(grad_input_wanted)::value,
                            decltype(coordinates_wanted)::value, scalar_t, grad_in_t>(
                grad_output, input, source, cfg.align_corners, grad_in, gin, groups);
          };
          using Yes = std::true_type;
          using No = std::false_type;
          if (grad_in != nullptr && coordinate_work) run(Yes{}, Yes{});
          else if (grad_in != nullptr) run(Yes{}, No{});
          else if (coordinate_work) run(No{}, Yes{});
        });
      });
  return grad_input_acc.to(input.scalar_type());  // no copy when already so
}

}  // namespace

at::Tensor affine_sample_rows_cpu(const at::Tensor& input, const at::Tensor& theta,
                                  at::IntArrayRef out_size, const SampleConfig& cfg) {
  const Geometry in(input);
  return sample_rows(input, out_size[0], out_size[1], cfg, [&](auto scalar) {
    using scalar_t = decltype(scalar);
    return AffineRows<at::opmath_type<scalar_t>, scalar_t>(theta, out_size[1], out_size[0],
                                                            cfg.align_corners, in);
  });
}

std::tuple<at::Tensor, at::Tensor> affine_sample_rows_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& theta,
    const SampleConfig& cfg, std::array<bool, 2> output_mask) {
  const int64_t groups = channel_groups(input.size(0), input.size(1));
  std::vector<double> partials(output_mask[1] ? input.size(0) * groups * 6 : 0, 0.0);
  const Geometry in(input);
  at::Tensor grad_input = sample_rows_backward(
      grad_output, input, cfg, output_mask, groups, [&](auto scalar) {
        using scalar_t = decltype(scalar);
        return AffineRows<at::opmath_type<scalar_t>, scalar_t>(
            theta, grad_output.size(3), grad_output.size(2), cfg.align_corners, in,
            partials.data());
      });
  at::Tensor grad_theta = at::empty({0}, theta.options());
  if (output_mask[1]) {
    at::Tensor sums = at::zeros({input.size(0), 2, 3}, theta.options().dtype(at::kDouble));
    double* s = sums.mutable_data_ptr<double>();
    for (int64_t n = 0; n < input.size(0); ++n) {
      for (int64_t g = 0; g < groups; ++g) {
        for (int k = 0; k < 6; ++k) s[n * 6 + k] += partials[(n * groups + g) * 6 + k];
      }
    }
    grad_theta = sums.to(theta.scalar_type());
  }
  return {grad_input, grad_theta};
}

namespace {

// grid_sample's points are independent of one another, so the kernels may take an (Ho, Wo) grid
// as (Ho / k, k * Wo): each kernel row k output rows. A kernel row costs a few vector loops'
// set-up besides its points, as much as the points themselves at the STN's 32-point rows; rows
// are merged up to this many points (a bound: a row's arrays, ~70 bytes a point, stay in L2,
// and large outputs keep many rows to share among threads).
constexpr int64_t kMergedRowPoints = 1024;

// How many output rows one kernel row takes: the largest divisor k of out_h with
// k * out_w <= kMergedRowPoints (1 if none).
int64_t rows_per_kernel_row(int64_t out_h, int64_t out_w) {
  int64_t rows = 1;
  for (int64_t k = 2; k <= out_h && k * out_w <= kMergedRowPoints; ++k) {
    if (out_h % k == 0) rows = k;
  }
  return rows;
}

// Whether dimensions d and d + 1 of t can be viewed as one (d + 1's rows lie back to back).
bool rows_back_to_back(const at::Tensor& t, int64_t d) {
  return t.size(d) <= 1 || t.stride(d) == t.size(d + 1) * t.stride(d + 1);
}

// t with dimensions (d, d + 1) = (Ho, Wo) viewed as (Ho / rows, rows * Wo).
at::Tensor merge_rows(const at::Tensor& t, int64_t d, int64_t rows) {
  std::vector<int64_t> sizes = t.sizes().vec();
  sizes[d] /= rows;
  sizes[d + 1] *= rows;
  return t.view(sizes);
}

}  // namespace

at::Tensor grid_sample_rows_cpu(const at::Tensor& input, const at::Tensor& grid,
                                const SampleConfig& cfg) {
  const int64_t out_h = grid.size(1), out_w = grid.size(2);
  const int64_t rows = rows_back_to_back(grid, 1) ? rows_per_kernel_row(out_h, out_w) : 1;
  const at::Tensor merged_grid = merge_rows(grid, 1, rows);
  const at::Tensor output =
      sample_rows(input, out_h / rows, out_w * rows, cfg, [&](auto scalar) {
        using scalar_t = decltype(scalar);
        return GridRows<at::opmath_type<scalar_t>, scalar_t>(merged_grid, out_w);
      });
  return output.view({input.size(0), input.size(1), out_h, out_w});
}

std::tuple<at::Tensor, at::Tensor> grid_sample_rows_backward_cpu(
    const at::Tensor& grad_output_rows, const at::Tensor& input, const at::Tensor& grid_rows,
    const SampleConfig& cfg, std::array<bool, 2> output_mask) {
  // Kernel rows of several output rows, as the forward pass takes them.
  const int64_t rows = rows_back_to_back(grid_rows, 1) && rows_back_to_back(grad_output_rows, 2)
      ? rows_per_kernel_row(grid_rows.size(1), grid_rows.size(2)) : 1;
  const at::Tensor grid = merge_rows(grid_rows, 1, rows);
  const at::Tensor grad_output = merge_rows(grad_output_rows, 2, rows);
  const int64_t batch = input.size(0), out_h = grid.size(1), out_w = grid.size(2);
  const int64_t groups = channel_groups(batch, input.size(1));
  // Each work unit's gradient (N, groups, Ho, Wo, 2), in the opmath type; zero where none is
  // computed.
  const auto options = grid.options().dtype(at::toOpMathType(grid.scalar_type()));
  const std::vector<int64_t> partials_size{batch, groups, out_h, out_w, 2};
  at::Tensor partials = !output_mask[1] ? at::empty({0}, options)
      : computes_coordinate_gradient(grad_output, input, cfg) ? at::empty(partials_size, options)
                                                               : at::zeros(partials_size, options);
  at::Tensor grad_input = sample_rows_backward(
      grad_output, input, cfg, output_mask, groups, [&](auto scalar) {
        using scalar_t = decltype(scalar);
        using T = at::opmath_type<scalar_t>;
        return GridRows<T, scalar_t>(grid, grid_rows.size(2),
                                     output_mask[1] ? partials.mutable_data_ptr<T>() : nullptr);
      });
  at::Tensor grad_grid = at::empty({0}, grid.options());
  if (output_mask[1]) {
    // The groups' partials summed in group order: the same result for any thread count.
    at::Tensor sum = partials.select(1, 0);
    if (groups > 1) {
      sum = sum.clone();
      for (int64_t g = 1; g < groups; ++g) sum.add_(partials.select(1, g));
    }
    grad_grid = sum.to(grid.scalar_type()).view(grid_rows.sizes());
  }
  return {grad_input, grad_grid};
}

namespace {

at::Tensor affine_grid_sample_cpu(const at::Tensor& input, const at::Tensor& theta, int64_t out_h,
                                  int64_t out_w, c10::string_view mode,
                                  c10::string_view padding_mode, bool align_corners) {
  check_sample_args(input, theta, out_h, out_w);
  const SampleConfig cfg = parse_config(std::string(mode), std::string(padding_mode), align_corners);
  return affine_sample_rows_cpu(input, theta, {out_h, out_w}, cfg);
}

std::tuple<at::Tensor, at::Tensor> affine_grid_sample_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& theta,
    c10::string_view mode, c10::string_view padding_mode, bool align_corners,
    std::array<bool, 2> output_mask) {
  check_backward_args(grad_output, input, theta);
  const SampleConfig cfg = parse_config(std::string(mode), std::string(padding_mode), align_corners);
  return affine_sample_rows_backward_cpu(grad_output, input, theta, cfg, output_mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(stn_ext, CPU, m) {
  m.impl("affine_grid_sample", &affine_grid_sample_cpu);
  m.impl("affine_grid_sample_backward", &affine_grid_sample_backward_cpu);
}

}  // namespace stn_ext
