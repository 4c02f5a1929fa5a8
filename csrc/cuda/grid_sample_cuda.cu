// CUDA kernels of the general sampling ops: stn_ext::grid_sample (a dense grid of sample points)
// and stn_ext::affine_sample (2-D or 3-D affine maps), every mode, padding and fill value.
//
// The parts are those of the CPU kernels (csrc/cpu/grid_sample_cpu.cpp), one output point per
// thread, or, where channels are innermost in whole 16-byte vectors, one per (point, vector of
// channels) (sampling_common.cuh's ChannelSplit):
// - a coordinate source (DenseGridSource, AffineMapSource) gives the point's normalised source
//   coordinates and takes their gradient back: written per point to grad_grid, or reduced to
//   theta per block in a fixed order (block_sum), then over blocks by the host;
// - the mode's interpolation policy (csrc/interpolation.h, shared with the CPU kernels) gives
//   each axis' taps and weights; PointStencil is their tensor product over the 2 or 3 axes;
// - padding: border and reflection in the policy's coordinates, zeros (or the fill value) for
//   taps outside the image.
// grad_input comes from atomics, or, under torch.use_deterministic_algorithms(True), from tap
// records sorted by destination (sampling_common.cuh): bitwise reproducible for any grid.
// Mode and rank are template parameters (with_mode_and_rank); padding and align_corners are read
// at run time (they only select a few coordinate operations per point).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "../affine_grid_sample.h"
#include "../grid_sample.h"
#include "../interpolation.h"
#include "sampling_common.cuh"

namespace stn_ext {
namespace {

// The taps of one sample point: the tensor product of its axes' taps (x fastest), and where the
// point stands. The axes' taps are only set for a point with taps (status kHasTaps).
template <int kDim, typename Policy, typename T>
struct PointStencil {
  static constexpr int kAxisTaps = Policy::kTaps;
  static constexpr int kTaps = power(kAxisTaps, kDim);

  int8_t status;      // PointStatus
  T d_coord[kDim];    // d(pixel coordinate) / d(normalised coordinate), per axis
  AxisTaps<T, kAxisTaps> axis[kDim];

  // The stencil of the point at normalised coordinates xyz in an input of spatial sizes `size`.
  __device__ static PointStencil at(const T (&xyz)[kDim], const int64_t (&size)[kDim],
                                    const SampleConfig& cfg) {
    PointStencil s;
    T coord[kDim];
    s.status = kHasTaps;
#pragma unroll
    for (int a = 0; a < kDim; ++a) {
      coord[a] = axis_coordinate<Policy::kCoordinate>(xyz[a], size[a], cfg, &s.d_coord[a]);
      const int8_t axis = axis_status<kAxisTaps>(coord[a], size[a], cfg.padding);
      s.status = axis > s.status ? axis : s.status;
    }
    if (s.status != kHasTaps) return s;
#pragma unroll
    for (int a = 0; a < kDim; ++a) {
      s.axis[a] = Policy::taps(coord[a], size[a], cfg);
      const int8_t axis = taps_status(s.axis[a]);
      s.status = axis > s.status ? axis : s.status;
    }
    return s;
  }

  // Which tap of axis a tap k takes.
  __device__ static int axis_tap(int k, int a) {
    for (int b = 0; b < a; ++b) k /= kAxisTaps;
    return k % kAxisTaps;
  }
  __device__ bool inside(int k) const {
    bool in = true;
#pragma unroll
    for (int a = 0; a < kDim; ++a) in &= axis[a].inside[axis_tap(k, a)];
    return in;
  }
  // Products x, y, z in turn, as ATen's corner weights.
  __device__ T weight(int k) const {
    T w = axis[0].weight[axis_tap(k, 0)];
#pragma unroll
    for (int a = 1; a < kDim; ++a) w *= axis[a].weight[axis_tap(k, a)];
    return w;
  }
  // d(weight of tap k) / d(pixel coordinate of axis a).
  __device__ T d_weight(int k, int a) const {
    T d = T(1);
#pragma unroll
    for (int b = 0; b < kDim; ++b) {
      const int t = axis_tap(k, b);
      d *= b == a ? axis[b].d_weight[t] : axis[b].weight[t];
    }
    return d;
  }
  // Element offset of tap k (inside the image) in a plane of strides `stride`.
  __device__ int64_t offset(int k, const int64_t (&stride)[kDim]) const {
    int64_t o = 0;
#pragma unroll
    for (int a = 0; a < kDim; ++a) o += axis[a].index[axis_tap(k, a)] * stride[a];
    return o;
  }
  // Index of tap k (inside the image) in a plane of sizes `size`, x fastest.
  __device__ int64_t pixel(int k, const int64_t (&size)[kDim]) const {
    int64_t p = 0;
#pragma unroll
    for (int a = kDim - 1; a >= 0; --a) p = p * size[a] + axis[a].index[axis_tap(k, a)];
    return p;
  }
};

// Coordinate source: a dense grid (N, *out, kDim) of normalised (x, y[, z]) coordinates, any
// strides. Its gradient is per point (grad_grid, contiguous).
template <int kDim, typename scalar_t>
struct DenseGridSource {
  static constexpr bool kPerImageGradient = false;
  const scalar_t* data;
  int64_t sn, coord_stride;
  int64_t stride[kDim];  // of the output axes, x first

  static DenseGridSource of(const at::Tensor& grid) {
    DenseGridSource s{grid.const_data_ptr<scalar_t>(), grid.stride(0), grid.stride(kDim + 1), {}};
    for (int a = 0; a < kDim; ++a) s.stride[a] = grid.stride(kDim - a);
    return s;
  }

  // The normalised coordinates of output point `point` (at axis positions pos) of image n.
  template <typename T>
  __device__ void coordinates(int64_t n, const int64_t (&pos)[kDim], T (&xyz)[kDim]) const {
    const scalar_t* p = data + n * sn;
#pragma unroll
    for (int a = 0; a < kDim; ++a) p += pos[a] * stride[a];
#pragma unroll
    for (int a = 0; a < kDim; ++a) xyz[a] = T(p[a * coord_stride]);
  }
};

// Coordinate source: an affine map theta (N, kDim, kDim + 1) applied to the base grid of
// F.affine_grid (linspace(-1, 1) per output axis). Its gradient is reduced per image.
template <int kDim, typename scalar_t>
struct AffineMapSource {
  static constexpr bool kPerImageGradient = true;
  static constexpr int kThetaSize = kDim * (kDim + 1);
  const scalar_t* data;
  int64_t sn, s_row, s_col;
  int64_t out_size[kDim];  // x first
  bool align_corners;

  static AffineMapSource of(const at::Tensor& theta, const PointGeometry<kDim>& out,
                            bool align_corners) {
    AffineMapSource s{theta.const_data_ptr<scalar_t>(), theta.stride(0), theta.stride(1),
                      theta.stride(2), {}, align_corners};
    for (int a = 0; a < kDim; ++a) s.out_size[a] = out.size[a];
    return s;
  }

  // The base grid coordinates (x, y[, z]) of the output point at axis positions pos.
  template <typename T>
  __device__ void base(const int64_t (&pos)[kDim], T (&b)[kDim]) const {
#pragma unroll
    for (int a = 0; a < kDim; ++a) b[a] = base_coord<T>(pos[a], out_size[a], align_corners);
  }

  // As F.affine_grid: base (x, y[, z], 1) times theta's row, summed in that order (as the CPU
  // kernel does).
  template <typename T>
  __device__ void coordinates(int64_t n, const int64_t (&pos)[kDim], T (&xyz)[kDim]) const {
    const scalar_t* t = data + n * sn;
    T b[kDim];
    base(pos, b);
#pragma unroll
    for (int r = 0; r < kDim; ++r) {
      T v = T(t[r * s_row]) * b[0];
#pragma unroll
      for (int c = 1; c < kDim; ++c) v += T(t[r * s_row + c * s_col]) * b[c];
      xyz[r] = v + T(t[r * s_row + kDim * s_col]);
    }
  }

  // Chain rule through the map: theta[r][c] takes g[r] times base coordinate c (1 for the
  // translation column).
  template <typename T>
  __device__ void add_gradient(const int64_t (&pos)[kDim], const T (&g)[kDim],
                               T (&g_theta)[kThetaSize]) const {
    T b[kDim];
    base(pos, b);
#pragma unroll
    for (int r = 0; r < kDim; ++r) {
#pragma unroll
      for (int c = 0; c < kDim; ++c) g_theta[r * (kDim + 1) + c] += g[r] * b[c];
      g_theta[r * (kDim + 1) + kDim] += g[r];
    }
  }
};

// Axis positions (x first) of point `point` of an output of geometry g.
template <int kDim>
__device__ inline void position_of(int64_t point, const PointGeometry<kDim>& g,
                                   int64_t (&pos)[kDim]) {
#pragma unroll
  for (int a = 0; a < kDim; ++a) {
    pos[a] = point % g.size[a];
    point /= g.size[a];
  }
}

template <int kDim>
__device__ inline int64_t offset_at(const int64_t (&pos)[kDim], const int64_t (&stride)[kDim]) {
  int64_t o = 0;
#pragma unroll
  for (int a = 0; a < kDim; ++a) o += pos[a] * stride[a];
  return o;
}

// One thread per (output point, group of kVec channels) (ChannelSplit). fill: one value per
// channel in the compute type, or nullptr (taps outside read zero).
template <typename scalar_t, int kDim, typename Policy, typename Source, int kVec>
__global__ void __launch_bounds__(kThreads)
    sample_forward_kernel(const scalar_t* __restrict__ input, PointGeometry<kDim> in,
                          Source source, const at::opmath_type<scalar_t>* __restrict__ fill,
                          scalar_t* __restrict__ output, PointGeometry<kDim> out,
                          SampleConfig cfg) {
  using T = at::opmath_type<scalar_t>;
  using Stencil = PointStencil<kDim, Policy, T>;
  const ChannelSplit<kVec> split(in.c);
  const int64_t item = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (item >= split.items(out.points())) return;
  const ChannelWork<int64_t> work = split.work(item, in.c);
  int64_t pos[kDim];
  position_of(work.point, out, pos);
  const int64_t out_offset = offset_at(pos, out.stride);
  for (int64_t n = blockIdx.y; n < out.n; n += gridDim.y) {
    T xyz[kDim];
    source.coordinates(n, pos, xyz);
    const Stencil s = Stencil::at(xyz, in.size, cfg);
    scalar_t* dst = output + n * out.sn + out_offset;
    if (s.status != kHasTaps) {
      for (int64_t c = work.begin; c < work.end; c += kVec) {
        Pack<scalar_t, kVec> result;
#pragma unroll
        for (int j = 0; j < kVec; ++j) {
          result.v[j] = static_cast<scalar_t>(s.status == kUndefined ? quiet_nan<T>()
                                              : fill != nullptr      ? fill[c + j]
                                                                     : T(0));
        }
        store_pack<kVec>(dst + c * out.sc, result);
      }
      continue;
    }
    int64_t offset[Stencil::kTaps];
    T weight[Stencil::kTaps];
    bool inside[Stencil::kTaps];
#pragma unroll
    for (int k = 0; k < Stencil::kTaps; ++k) {
      inside[k] = s.inside(k);
      offset[k] = inside[k] ? s.offset(k, in.stride) : 0;
      weight[k] = s.weight(k);
    }
    const scalar_t* image = input + n * in.sn;
    for (int64_t c = work.begin; c < work.end; c += kVec) {
      T acc[kVec];
      // Taps outside read the fill value or zero. The first tap's term starts the sum (no
      // 0 + ...), so that nearest copies -0.0 exactly.
#pragma unroll
      for (int k = 0; k < Stencil::kTaps; ++k) {
        const Pack<scalar_t, kVec> tap = inside[k]
            ? load_pack<kVec>(image + c * in.sc + offset[k]) : Pack<scalar_t, kVec>{};
#pragma unroll
        for (int j = 0; j < kVec; ++j) {
          const T outside_value = fill != nullptr ? fill[c + j] : T(0);
          const T term = weight[k] * (inside[k] ? T(tap.v[j]) : outside_value);
          acc[j] = k == 0 ? term : acc[j] + term;
        }
      }
      Pack<scalar_t, kVec> result;
#pragma unroll
      for (int j = 0; j < kVec; ++j) result.v[j] = static_cast<scalar_t>(acc[j]);
      store_pack<kVec>(dst + c * out.sc, result);
    }
  }
}

// Where the backward kernel puts grad_input's contributions: added atomically into atomic_sum
// (opmath-typed, geometry gin), or written as tap records (sampling_common.cuh), kTaps per point.
template <typename T, int kDim>
struct InputGradSink {
  T* atomic_sum;
  PointGeometry<kDim> gin;
  int64_t* record_key;
  T* record_weight;
};

// What the backward kernel writes for the coordinate source: grad_grid (DenseGridSource,
// contiguous (N, *out, kDim)) or per-block theta partials (AffineMapSource, (N, blocks,
// kThetaSize)); nullptr where not wanted.
template <typename scalar_t>
struct CoordinateGradSink {
  scalar_t* grad_grid;
  at::opmath_type<scalar_t>* theta_partials;
};

// One thread per (output point, group of kVec channels) (ChannelSplit). With several groups
// per point (a power of two up to a warp: backward_channel_vector_width), a point's groups are
// consecutive lanes of one warp, and their shares of the coordinate gradient are summed by
// shuffles in a fixed order; the first group's thread writes it.
template <typename scalar_t, int kDim, typename Policy, typename Source, int kVec>
__global__ void __launch_bounds__(kThreads)
    sample_backward_kernel(const scalar_t* __restrict__ grad_output, PointGeometry<kDim> gout,
                           const scalar_t* __restrict__ input, PointGeometry<kDim> in,
                           Source source, const at::opmath_type<scalar_t>* __restrict__ fill,
                           InputGradSink<at::opmath_type<scalar_t>, kDim> input_sink,
                           CoordinateGradSink<scalar_t> coordinate_sink, SampleConfig cfg) {
  using T = at::opmath_type<scalar_t>;
  using Stencil = PointStencil<kDim, Policy, T>;
  constexpr int kTaps = Stencil::kTaps;
  constexpr int kSourceValues = Source::kPerImageGradient ? kDim * (kDim + 1) : 1;
  const ChannelSplit<kVec> split(in.c);
  const int64_t points = gout.points();
  const int64_t item = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  // Every thread takes part in the shuffles and block sums.
  const bool active = item < split.items(points);
  const ChannelWork<int64_t> work = split.work(active ? item : 0, in.c);
  const int64_t point = work.point;
  const bool first_group = active && work.begin == 0;  // writes the point's own results
  int64_t pos[kDim];
  position_of(point, gout, pos);
  const int64_t gout_offset = offset_at(pos, gout.stride);
  const int64_t plane = in.points();
  const bool want_coordinates =
      coordinate_sink.grad_grid != nullptr || coordinate_sink.theta_partials != nullptr;
  // Nearest sampling is piecewise constant: its coordinate gradient is zero.
  const bool coordinate_work = want_coordinates && Policy::kMode != Interpolation::Nearest;

  for (int64_t n = blockIdx.y; n < gout.n; n += gridDim.y) {
    T g_coord[kDim] = {};
    if (active) {
      T xyz[kDim];
      source.coordinates(n, pos, xyz);
      const Stencil s = Stencil::at(xyz, in.size, cfg);
      if (input_sink.record_key != nullptr && first_group) {
        const int64_t first = (n * points + point) * kTaps;
#pragma unroll
        for (int k = 0; k < kTaps; ++k) {
          const bool adds = s.status == kHasTaps && s.inside(k);
          input_sink.record_key[first + k] = adds ? n * plane + s.pixel(k, in.size) : gout.n * plane;
          input_sink.record_weight[first + k] = adds ? s.weight(k) : T(0);
        }
      }
      if (s.status == kUndefined && coordinate_work) {
#pragma unroll
        for (int a = 0; a < kDim; ++a) g_coord[a] = quiet_nan<T>();
      }
      if (s.status == kHasTaps) {
        const scalar_t* go = grad_output + n * gout.sn + gout_offset;
        const scalar_t* src = input + n * in.sn;
        T* dst = input_sink.atomic_sum != nullptr
            ? input_sink.atomic_sum + n * input_sink.gin.sn : nullptr;
        // The taps in registers for the channel loop (offsets in input and grad_input planes).
        bool inside[kTaps];
        T weight[kTaps];
        int64_t in_offset[kTaps], gin_offset[kTaps];
#pragma unroll
        for (int k = 0; k < kTaps; ++k) {
          inside[k] = s.inside(k);
          weight[k] = s.weight(k);
          in_offset[k] = inside[k] ? s.offset(k, in.stride) : 0;
          gin_offset[k] = inside[k] && dst != nullptr ? s.offset(k, input_sink.gin.stride) : 0;
        }
        for (int64_t c = work.begin; c < work.end; c += kVec) {
          const Pack<scalar_t, kVec> g = load_pack<kVec>(go + c * gout.sc);
#pragma unroll
          for (int k = 0; k < kTaps; ++k) {
            if (dst != nullptr && inside[k]) {
#pragma unroll
              for (int j = 0; j < kVec; ++j) {
                gpuAtomicAdd(dst + (c + j) * input_sink.gin.sc + gin_offset[k],
                             weight[k] * T(g.v[j]));
              }
            }
            // Without a fill, taps outside read zero and add nothing, even where g is not
            // finite (as ATen, which skips them).
            if (!coordinate_work || (!inside[k] && fill == nullptr)) continue;
            const Pack<scalar_t, kVec> tap = inside[k]
                ? load_pack<kVec>(src + c * in.sc + in_offset[k]) : Pack<scalar_t, kVec>{};
            T gv = T(0);  // the kVec channels' incoming gradients times the tap's values
#pragma unroll
            for (int j = 0; j < kVec; ++j) {
              const T term = T(g.v[j]) * (inside[k] ? T(tap.v[j]) : fill[c + j]);
              gv = j == 0 ? term : gv + term;
            }
#pragma unroll
            for (int a = 0; a < kDim; ++a) g_coord[a] += gv * s.d_weight(k, a);
          }
        }
#pragma unroll
        for (int a = 0; a < kDim; ++a) g_coord[a] *= s.d_coord[a];
      }
    }
    if constexpr (kVec > 1) {
      const int groups = static_cast<int>(split.groups);
      for (int delta = groups / 2; delta > 0; delta /= 2) {
#pragma unroll
        for (int a = 0; a < kDim; ++a) {
          g_coord[a] += __shfl_down_sync(0xffffffff, g_coord[a], delta, groups);
        }
      }
    }
    if (first_group) {
      if (coordinate_sink.grad_grid != nullptr) {
        scalar_t* gg = coordinate_sink.grad_grid + (n * points + point) * kDim;
#pragma unroll
        for (int a = 0; a < kDim; ++a) gg[a] = static_cast<scalar_t>(g_coord[a]);
      }
    }
    if constexpr (Source::kPerImageGradient) {
      if (coordinate_sink.theta_partials != nullptr) {
        T g_theta[kSourceValues] = {};
        if (first_group) source.add_gradient(pos, g_coord, g_theta);
        block_sum(g_theta);
        if (threadIdx.x == 0) {
          T* out = coordinate_sink.theta_partials + (n * gridDim.x + blockIdx.x) * kSourceValues;
#pragma unroll
          for (int k = 0; k < kSourceValues; ++k) out[k] = g_theta[k];
        }
      }
    }
  }
}

// The channel vector width of sample_backward_kernel: channel_vector_width's where a point's
// channel groups are a power of two up to a warp (their shuffles stay within one warp), else 1.
template <typename scalar_t>
int backward_channel_vector_width(const at::Tensor& grad_output, const at::Tensor& input) {
  const int width = channel_vector_width<scalar_t>({grad_output, input});
  const int64_t groups = input.size(1) / width;
  return width > 1 && groups <= 32 && (groups & (groups - 1)) == 0 ? width : 1;
}

// The fill values in the kernels' compute type (a device tensor), or an undefined tensor.
at::Tensor fill_values(const c10::optional<at::Tensor>& fill, const at::Tensor& input) {
  if (!fill.has_value()) return at::Tensor();
  return fill->to(input.options().dtype(at::toOpMathType(input.scalar_type()))).contiguous();
}

template <typename T>
const T* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}

// The CUDA backend of GeneralOps (grid_sample.h): sample, sample_backward and the two
// coordinate-source factories below take it as their first argument.
struct Cuda {};

// make_source(dim, scalar, output geometry) -> the op's coordinate source.
template <typename MakeSource>
at::Tensor sample(Cuda, const at::Tensor& input, at::IntArrayRef out_size, const SampleConfig& cfg,
                  const c10::optional<at::Tensor>& fill, MakeSource make_source) {
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor output = new_sampled_output(input, out_size);
  if (output.numel() == 0) return output;
  const at::Tensor fill_of_channel = fill_values(fill, input);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "sample_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    with_mode_and_rank(input.dim() - 2, cfg.mode, [&](auto dim, auto policy) {
      constexpr int kDim = decltype(dim)::value;
      const auto out = PointGeometry<kDim>::of(output);
      const auto source = make_source(dim, scalar_t{}, out);
      const int vector_width = channel_vector_width<scalar_t>({input, output});
      with_channel_vector<scalar_t>(vector_width, [&](auto vec) {
        constexpr int kVec = decltype(vec)::value;
        launch_kernel(
            sample_forward_kernel<scalar_t, kDim, decltype(policy), decltype(source), kVec>,
            grid_for_channels<kVec>(input.size(1), out.points(), out.n), kThreads, stream,
            input.const_data_ptr<scalar_t>(), PointGeometry<kDim>::of(input), source,
            data_or_null<T>(fill_of_channel), output.mutable_data_ptr<scalar_t>(), out, cfg);
      });
    });
  });
  return output;
}

// The backward pass of either op: grad_input (if output_mask[0]) and the coordinate source's
// gradient (if output_mask[1]), shaped as `coordinates` (the grid, or theta if per_image).
template <typename MakeSource>
std::tuple<at::Tensor, at::Tensor> sample_backward(
    Cuda, const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& coordinates,
    const SampleConfig& cfg, const c10::optional<at::Tensor>& fill,
    std::array<bool, 2> output_mask, bool per_image, MakeSource make_source) {
  const c10::cuda::CUDAGuard guard(input.device());
  const at::ScalarType opmath = at::toOpMathType(input.scalar_type());
  const at::MemoryFormat layout = output_memory_format(input);
  const int64_t dims = input.dim() - 2;
  const int64_t batch = input.size(0);
  const at::Tensor empty_input_grad = at::empty({0}, input.options());
  const at::Tensor empty_coordinate_grad = at::empty({0}, coordinates.options());

  // Nothing sampled (no image, channel or output point): both gradients are zero.
  if (grad_output.numel() == 0) {
    return {output_mask[0] ? at::zeros_like(input, layout) : empty_input_grad,
            output_mask[1] ? at::zeros(coordinates.sizes(), coordinates.options())
                           : empty_coordinate_grad};
  }

  const int64_t points = grad_output.numel() / (batch * input.size(1));
  const bool deterministic = at::globalContext().deterministicAlgorithms();
  const bool atomic_input_grad = output_mask[0] && !deterministic;
  const bool recorded_input_grad = output_mask[0] && deterministic;
  at::Tensor atomic_sum = atomic_input_grad
      ? at::zeros_like(input, input.options().dtype(opmath), layout) : at::Tensor();
  at::Tensor record_key, record_weight;
  // Every element of these is written by the kernel.
  at::Tensor grad_grid = output_mask[1] && !per_image
      ? at::empty(coordinates.sizes(), coordinates.options()) : at::Tensor();
  at::Tensor theta_partials;  // (batch, blocks per image, theta size), once the grid is known
  const at::Tensor fill_of_channel = fill_values(fill, input);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  int taps_per_point = 0;

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "sample_backward_cuda", [&] {
        using T = at::opmath_type<scalar_t>;
        with_mode_and_rank(dims, cfg.mode, [&](auto dim, auto policy) {
          constexpr int kDim = decltype(dim)::value;
          using Policy = decltype(policy);
          taps_per_point = PointStencil<kDim, Policy, T>::kTaps;
          if (recorded_input_grad) {
            record_key = at::empty({batch * points * taps_per_point},
                                   input.options().dtype(at::kLong));
            record_weight = at::empty({batch * points * taps_per_point},
                                      input.options().dtype(opmath));
          }
          const auto gout = PointGeometry<kDim>::of(grad_output);
          const auto source = make_source(dim, scalar_t{}, gout);
          const InputGradSink<T, kDim> input_sink{
              atomic_input_grad ? atomic_sum.mutable_data_ptr<T>() : nullptr,
              PointGeometry<kDim>::of(atomic_input_grad ? atomic_sum : input),
              recorded_input_grad ? record_key.mutable_data_ptr<int64_t>() : nullptr,
              recorded_input_grad ? record_weight.mutable_data_ptr<T>() : nullptr};
          const int vector_width = backward_channel_vector_width<scalar_t>(grad_output, input);
          with_channel_vector<scalar_t>(vector_width, [&](auto vec) {
            constexpr int kVec = decltype(vec)::value;
            const dim3 grid = grid_for_channels<kVec>(input.size(1), points, batch);
            if (output_mask[1] && per_image) {
              theta_partials = at::empty({batch, static_cast<int64_t>(grid.x), dims * (dims + 1)},
                                         input.options().dtype(opmath));
            }
            const CoordinateGradSink<scalar_t> coordinate_sink{
                grad_grid.defined() ? grad_grid.mutable_data_ptr<scalar_t>() : nullptr,
                theta_partials.defined() ? theta_partials.mutable_data_ptr<T>() : nullptr};
            launch_kernel(
                sample_backward_kernel<scalar_t, kDim, Policy, decltype(source), kVec>, grid,
                kThreads, stream, grad_output.const_data_ptr<scalar_t>(), gout,
                input.const_data_ptr<scalar_t>(), PointGeometry<kDim>::of(input), source,
                data_or_null<T>(fill_of_channel), input_sink, coordinate_sink, cfg);
          });
        });
      });

  at::Tensor grad_input = empty_input_grad;
  if (atomic_input_grad) grad_input = atomic_sum.to(input.scalar_type());  // no copy if equal
  if (recorded_input_grad) {
    grad_input = dims == 2
        ? gather_input_grad<2>(grad_output, input, layout, record_key, record_weight, taps_per_point)
        : gather_input_grad<3>(grad_output, input, layout, record_key, record_weight, taps_per_point);
  }
  at::Tensor grad_coordinates = empty_coordinate_grad;
  if (grad_grid.defined()) grad_coordinates = grad_grid;
  if (theta_partials.defined()) {
    grad_coordinates = theta_partials.sum(1).view(coordinates.sizes()).to(coordinates.scalar_type());
  }
  return {grad_input, grad_coordinates};
}

// The dense-grid source of grid_sample.
auto dense_grid_source(Cuda, const at::Tensor& grid) {
  return [&grid](auto dim, auto scalar, const auto&) {
    return DenseGridSource<decltype(dim)::value, decltype(scalar)>::of(grid);
  };
}

auto affine_map_source(Cuda, const at::Tensor& theta, bool align_corners) {
  return [&theta, align_corners](auto dim, auto scalar, const auto& out) {
    return AffineMapSource<decltype(dim)::value, decltype(scalar)>::of(theta, out, align_corners);
  };
}

}  // namespace

#ifndef STN_EXT_CUDA_EMULATION  // the emulation library registers these kernels as its own ops
TORCH_LIBRARY_IMPL(stn_ext, CUDA, m) { GeneralOps<Cuda>::register_kernels(m); }
#endif

}  // namespace stn_ext
