// CUDA kernels of stn_ext::affine_grid_sample: one thread per output pixel, looping channels,
// or, where channels are innermost in whole 16-byte vectors (channels_last), one per (pixel,
// vector of channels) (sampling_common.cuh's ChannelSplit).
// The forward pass is a pure gather. The backward pass reduces grad_theta per block into
// fixed-order partials (deterministic), and gets grad_input one of two ways: atomics (fast, not
// deterministic), or, under torch.use_deterministic_algorithms(True), tap records sorted by
// destination (sampling_common.cuh).
// Kernels are launched through launch_kernel (launch.cuh), which the test-only emulation build
// runs on the host.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <limits>
#include <tuple>

#include "../affine_grid_sample.h"
#include "sampling_common.cuh"

namespace stn_ext {
namespace {

constexpr int kMaxTaps = 4;

// Sizes and element strides of a 4-D tensor, in the kernel's index type.
template <typename index_t>
struct Geometry {
  index_t n, c, h, w;
  index_t sn, sc, sh, sw;
};

template <typename index_t>
Geometry<index_t> geometry_of(const at::Tensor& t) {
  return {static_cast<index_t>(t.size(0)),   static_cast<index_t>(t.size(1)),
          static_cast<index_t>(t.size(2)),   static_cast<index_t>(t.size(3)),
          static_cast<index_t>(t.stride(0)), static_cast<index_t>(t.stride(1)),
          static_cast<index_t>(t.stride(2)), static_cast<index_t>(t.stride(3))};
}

struct ThetaStrides {
  int64_t n, row, col;
};

// The taps of one sample: `count` (1 for nearest, 4 for bilinear) (offset into the image,
// weight) pairs, those outside the image marked invalid, the tap's pixel index y * W + x within
// its plane, and the bilinear neighbourhood (for the theta gradient). An undefined sample (a
// non-finite coordinate, see is_undefined) has no valid tap.
template <typename T, typename index_t>
struct DeviceTaps {
  int count;
  bool undefined;
  index_t offset[kMaxTaps];
  int64_t pixel[kMaxTaps];
  T weight[kMaxTaps];
  bool valid[kMaxTaps];
  Bilinear<T> stencil;

  __device__ bool any_valid() const {
    bool any = false;
#pragma unroll
    for (int k = 0; k < kMaxTaps; ++k) any |= valid[k];
    return any;
  }
};

template <typename T, typename index_t>
__device__ inline DeviceTaps<T, index_t> taps_of(const SourcePoint<T>& p, const SampleConfig& cfg,
                                                 const Geometry<index_t>& g) {
  DeviceTaps<T, index_t> t;
  t.count = cfg.mode == Interpolation::Nearest ? 1 : 4;
  t.undefined = is_undefined(p.ix, p.iy);
#pragma unroll
  for (int k = 0; k < kMaxTaps; ++k) {
    t.valid[k] = false;
    t.offset[k] = 0;
    t.pixel[k] = 0;
    t.weight[k] = T(0);
  }
  t.stencil = {0, 0, T(0), T(0), T(0), T(0)};
  if (t.undefined || is_far_outside(p, g.h, g.w)) return t;
  auto set_tap = [&](int k, int64_t x, int64_t y, T weight) {
    t.valid[k] = in_bounds<int64_t>(x, y, g.h, g.w);
    t.offset[k] = t.valid[k] ? static_cast<index_t>(y * g.sh + x * g.sw) : 0;
    t.pixel[k] = t.valid[k] ? y * g.w + x : 0;
    t.weight[k] = weight;
  };
  switch (cfg.mode) {
    case Interpolation::Nearest:
      set_tap(0, nearest_index(p.ix), nearest_index(p.iy), T(1));
      return t;
    case Interpolation::Bilinear: {
      t.stencil = Bilinear<T>::at(p.ix, p.iy);
      const Bilinear<T>& b = t.stencil;
      const T ws[4] = {b.w00(), b.w01(), b.w10(), b.w11()};
#pragma unroll
      for (int k = 0; k < 4; ++k) set_tap(k, b.x0 + k % 2, b.y0 + k / 2, ws[k]);
      return t;
    }
    case Interpolation::Bicubic:  // parse_config refuses it before any launch
      return t;
  }
  return t;
}

template <typename T>
__device__ inline SourcePoint<T> source_point_of(const Affine<T>& a, int64_t h, int64_t w,
                                                 int64_t out_h, int64_t out_w, int64_t in_h,
                                                 int64_t in_w, const SampleConfig& cfg,
                                                 T* base_x, T* base_y) {
  *base_x = base_coord<T>(w, out_w, cfg.align_corners);
  *base_y = base_coord<T>(h, out_h, cfg.align_corners);
  return source_point(a, *base_x, *base_y, in_h, in_w, cfg);
}

// One thread per (output pixel, group of kVec channels) (ChannelSplit).
template <typename scalar_t, typename index_t, int kVec>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const scalar_t* __restrict__ input, Geometry<index_t> in,
                   const scalar_t* __restrict__ theta, ThetaStrides ts,
                   scalar_t* __restrict__ output, Geometry<index_t> out, SampleConfig cfg) {
  using T = at::opmath_type<scalar_t>;
  const ChannelSplit<kVec> split(in.c);
  const int64_t item = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (item >= split.items(static_cast<int64_t>(out.h) * out.w)) return;
  const ChannelWork<index_t> work = split.work(item, in.c);
  const index_t h = static_cast<index_t>(work.point / out.w);
  const index_t w = static_cast<index_t>(work.point % out.w);
  for (int64_t n = blockIdx.y; n < out.n; n += gridDim.y) {
    const Affine<T> a = Affine<T>::load(theta + n * ts.n, ts.row, ts.col);
    T base_x, base_y;
    const SourcePoint<T> p =
        source_point_of(a, h, w, out.h, out.w, in.h, in.w, cfg, &base_x, &base_y);
    const DeviceTaps<T, index_t> t = taps_of(p, cfg, in);
    const scalar_t* src = input + n * in.sn;
    scalar_t* dst = output + n * out.sn + h * out.sh + w * out.sw;
    for (index_t c = work.begin; c < work.end; c += kVec) {
      // The first tap's term starts the sum (no 0 + ...), so that nearest copies -0.0 exactly.
      T acc[kVec];
      const Pack<scalar_t, kVec> first = load_pack<kVec>(src + c * in.sc + t.offset[0]);
#pragma unroll
      for (int j = 0; j < kVec; ++j) acc[j] = t.valid[0] ? t.weight[0] * T(first.v[j]) : T(0);
      // Every tap index a constant (taps past the count are skipped): the arrays stay in
      // registers, where a run-time index would put them on the stack. (An invalid tap has
      // offset 0: its load is in bounds, its value unused.)
#pragma unroll
      for (int k = 1; k < kMaxTaps; ++k) {
        if (k >= t.count) continue;
        const Pack<scalar_t, kVec> tap = load_pack<kVec>(src + c * in.sc + t.offset[k]);
#pragma unroll
        for (int j = 0; j < kVec; ++j) acc[j] += t.valid[k] ? t.weight[k] * T(tap.v[j]) : T(0);
      }
      Pack<scalar_t, kVec> result;
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        result.v[j] = static_cast<scalar_t>(t.undefined ? quiet_nan<T>() : acc[j]);
      }
      store_pack<kVec>(dst + c * out.sc, result);
    }
  }
}

// Where the backward kernel puts grad_input's contributions: added atomically into
// `atomic_sum` (an opmath-typed tensor of grad_input's layout), or written as tap records
// (sampling_common.cuh), kMaxTaps per output pixel.
template <typename T>
struct InputGradSink {
  T* atomic_sum;
  int64_t* record_key;
  T* record_weight;
};

// The channel loop of one output point's backward pass over channels [c_begin, c_end), kVec at a
// time (taps t at input's strides, grad_output at go): calls add_input_grad(c, k, weight_k * g)
// for each valid tap k of each channel c if want_input, and sums d(loss)/d(ix, iy) over the
// channels into (g_ix, g_iy) if want_theta. A point with no tap in the image adds nothing, even
// where grad_output is not finite (ATen skips such taps too).
template <int kVec, typename T, typename scalar_t, typename index_t, typename AddInputGrad>
__device__ inline void backward_channels(const DeviceTaps<T, index_t>& t, const scalar_t* go,
                                         index_t go_sc, const scalar_t* src, index_t src_sc,
                                         index_t c_begin, index_t c_end, bool want_input,
                                         bool want_theta, AddInputGrad add_input_grad, T* g_ix,
                                         T* g_iy) {
  const bool contributes = t.any_valid();
  for (index_t c = c_begin; contributes && c < c_end; c += kVec) {
    const Pack<scalar_t, kVec> g = load_pack<kVec>(go + c * go_sc);
    if (want_input) {
#pragma unroll
      for (int k = 0; k < kMaxTaps; ++k) {  // (taps past the count are not valid)
        if (!t.valid[k]) continue;
#pragma unroll
        for (int j = 0; j < kVec; ++j) add_input_grad(c + j, k, t.weight[k] * T(g.v[j]));
      }
    }
    if (want_theta) {
      Pack<scalar_t, kVec> v[4];
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        v[k] = t.valid[k] ? load_pack<kVec>(src + c * src_sc + t.offset[k])
                          : Pack<scalar_t, kVec>{};
      }
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        T value[4];
#pragma unroll
        for (int k = 0; k < 4; ++k) value[k] = t.valid[k] ? T(v[k].v[j]) : T(0);
        T d_ix, d_iy;
        bilinear_coord_grad(t.stencil, value[0], value[1], value[2], value[3], &d_ix, &d_iy);
        const T gj = T(g.v[j]);
        *g_ix += gj * d_ix;
        *g_iy += gj * d_iy;
      }
    }
  }
}

// Adds one point's theta gradient (from its coordinate gradient (g_ix, g_iy)) to tg; an
// undefined point makes it NaN.
template <typename T, typename index_t>
__device__ inline void add_point_theta_grad(const DeviceTaps<T, index_t>& t,
                                            const SourcePoint<T>& p, T g_ix, T g_iy, T base_x,
                                            T base_y, T (&tg)[6]) {
  if (!t.any_valid() && !t.undefined) return;
  ThetaGrad<T> acc{};
  if (t.undefined) {
    acc.add(quiet_nan<T>(), quiet_nan<T>(), base_x, base_y);
  } else {
    acc.add(g_ix * p.dix, g_iy * p.diy, base_x, base_y);
  }
#pragma unroll
  for (int k = 0; k < 6; ++k) tg[k] += acc.g[k];
}

// One thread per (output pixel, group of kVec channels) (ChannelSplit); every thread of a block
// adds its share of the pixels' theta gradients to the block's partial. grad_in_t is the opmath
// type (atomics on a float buffer are both faster and more accurate than on half); the host
// casts it back.
template <typename scalar_t, typename index_t, int kVec>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(const scalar_t* __restrict__ grad_output, Geometry<index_t> gout,
                    const scalar_t* __restrict__ input, Geometry<index_t> in,
                    const scalar_t* __restrict__ theta, ThetaStrides ts,
                    InputGradSink<at::opmath_type<scalar_t>> sink, Geometry<index_t> gin,
                    at::opmath_type<scalar_t>* __restrict__ theta_partials, SampleConfig cfg) {
  using T = at::opmath_type<scalar_t>;
  const ChannelSplit<kVec> split(in.c);
  const int64_t item = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t pixels = static_cast<int64_t>(gout.h) * gout.w;
  const bool active = item < split.items(pixels);
  const ChannelWork<index_t> work = split.work(active ? item : 0, in.c);
  const int64_t pixel = work.point;
  const index_t h = static_cast<index_t>(pixel / gout.w), w = static_cast<index_t>(pixel % gout.w);
  const bool want_theta = theta_partials != nullptr && cfg.mode == Interpolation::Bilinear;

  for (int64_t n = blockIdx.y; n < gout.n; n += gridDim.y) {
    T tg[6] = {T(0), T(0), T(0), T(0), T(0), T(0)};
    if (active) {
      const Affine<T> a = Affine<T>::load(theta + n * ts.n, ts.row, ts.col);
      T base_x, base_y;
      const SourcePoint<T> p =
          source_point_of(a, h, w, gout.h, gout.w, in.h, in.w, cfg, &base_x, &base_y);
      const DeviceTaps<T, index_t> t = taps_of(p, cfg, in);
      if (sink.record_key != nullptr && work.begin == 0) {  // a pixel's records, written once
        const int64_t first = (n * pixels + pixel) * kMaxTaps;
        const int64_t plane = static_cast<int64_t>(in.h) * in.w;
#pragma unroll
        for (int k = 0; k < kMaxTaps; ++k) {
          sink.record_key[first + k] = t.valid[k] ? n * plane + t.pixel[k] : gout.n * plane;
          sink.record_weight[first + k] = t.weight[k];
        }
      }
      const DeviceTaps<T, index_t> gt =  // the same taps at grad_input's strides
          sink.atomic_sum != nullptr ? taps_of(p, cfg, gin) : t;
      T* dst = sink.atomic_sum == nullptr ? nullptr : sink.atomic_sum + n * gin.sn;
      T g_ix = T(0), g_iy = T(0);
      backward_channels<kVec>(
          t, grad_output + n * gout.sn + h * gout.sh + w * gout.sw, gout.sc, input + n * in.sn,
          in.sc, work.begin, work.end, dst != nullptr, want_theta,
          [&](index_t c, int k, T value) { gpuAtomicAdd(dst + c * gin.sc + gt.offset[k], value); },
          &g_ix, &g_iy);
      if (want_theta) add_point_theta_grad(t, p, g_ix, g_iy, base_x, base_y, tg);
    }
    if (theta_partials != nullptr) {
      block_sum(tg);
      if (threadIdx.x == 0) {
        T* out = theta_partials + (n * gridDim.x + blockIdx.x) * 6;
#pragma unroll
        for (int k = 0; k < 6; ++k) out[k] = tg[k];
      }
    }
  }
}

// The backward pass for small images (the STN regime: many images of a few thousand pixels),
// in one launch: one block per image stages the image's grad_input in shared memory (atomics
// there, not in global memory), then writes it once in its final dtype, and reduces the image's
// theta gradient in the block, written in theta's dtype. Against backward_kernel it saves the
// zero-fill of grad_input, the partials' reduction and, for half/bfloat16, the cast: 3 or 4
// launches become 1, and grad_input's global traffic is one write instead of a fill plus a
// read-modify-write per tap. Only while the image fits kStagedBytes and the block's points per
// thread stay few (see staged_backward_fits); not deterministic (shared-memory atomics), so
// under use_deterministic_algorithms the tap records serve instead.
constexpr int64_t kStagedBytes = 32 * 1024;
constexpr int64_t kStagedPointsPerThread = 8;

template <typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kThreads)
    backward_staged_kernel(const scalar_t* __restrict__ grad_output, Geometry<index_t> gout,
                           const scalar_t* __restrict__ input, Geometry<index_t> in,
                           const scalar_t* __restrict__ theta, ThetaStrides ts,
                           scalar_t* __restrict__ grad_input, Geometry<index_t> gin,
                           scalar_t* __restrict__ grad_theta, SampleConfig cfg) {
  using T = at::opmath_type<scalar_t>;
  __shared__ T staged[kStagedBytes / sizeof(T)];  // (C, H, W) of one image, dense
  const index_t plane = in.h * in.w;
  const index_t staged_size = in.c * plane;
  const index_t pixels = gout.h * gout.w;
  const bool want_theta = grad_theta != nullptr && cfg.mode == Interpolation::Bilinear;
  for (int64_t n = blockIdx.y; n < gout.n; n += gridDim.y) {
    for (index_t i = threadIdx.x; i < staged_size; i += blockDim.x) staged[i] = T(0);
    __syncthreads();
    const Affine<T> a = Affine<T>::load(theta + n * ts.n, ts.row, ts.col);
    T tg[6] = {T(0), T(0), T(0), T(0), T(0), T(0)};
    for (index_t pixel = threadIdx.x; pixel < pixels; pixel += blockDim.x) {
      const index_t h = pixel / gout.w, w = pixel % gout.w;
      T base_x, base_y;
      const SourcePoint<T> p =
          source_point_of(a, h, w, gout.h, gout.w, in.h, in.w, cfg, &base_x, &base_y);
      const DeviceTaps<T, index_t> t = taps_of(p, cfg, in);
      T g_ix = T(0), g_iy = T(0);
      backward_channels<1>(
          t, grad_output + n * gout.sn + h * gout.sh + w * gout.sw, gout.sc, input + n * in.sn,
          in.sc, index_t{0}, gout.c, /*want_input=*/true, want_theta,
          [&](index_t c, int k, T value) {
            gpuAtomicAdd(staged + c * plane + static_cast<index_t>(t.pixel[k]), value);
          },
          &g_ix, &g_iy);
      if (want_theta) add_point_theta_grad(t, p, g_ix, g_iy, base_x, base_y, tg);
    }
    __syncthreads();
    scalar_t* dst = grad_input + n * gin.sn;
    for (index_t i = threadIdx.x; i < staged_size; i += blockDim.x) {
      const index_t c = i / plane, y = i % plane / in.w, x = i % in.w;
      dst[c * gin.sc + y * gin.sh + x * gin.sw] = static_cast<scalar_t>(staged[i]);
    }
    if (grad_theta != nullptr) {
      block_sum(tg);  // (its barriers also keep the next image's zeroing after these reads)
      if (threadIdx.x == 0) {
#pragma unroll
        for (int k = 0; k < 6; ++k) grad_theta[n * 6 + k] = static_cast<scalar_t>(tg[k]);
      }
    } else {
      __syncthreads();  // the next image's zeroing waits for these reads
    }
  }
}

// Whether backward_staged_kernel takes a call: grad_input wanted and not deterministic, the
// image (in the opmath type) within kStagedBytes, and at most kStagedPointsPerThread output
// points per thread of the image's one block.
bool staged_backward_fits(const at::Tensor& grad_output, const at::Tensor& input,
                          bool want_input, bool deterministic) {
  const int64_t opmath_size = at::elementSize(at::toOpMathType(input.scalar_type()));
  return want_input && !deterministic &&
         input.size(1) * input.size(2) * input.size(3) * opmath_size <= kStagedBytes &&
         grad_output.size(2) * grad_output.size(3) <= kStagedPointsPerThread * kThreads;
}

ThetaStrides strides_of_theta(const at::Tensor& theta) {
  return {theta.stride(0), theta.stride(1), theta.stride(2)};
}

at::Tensor affine_grid_sample_cuda(const at::Tensor& input, const at::Tensor& theta,
                                   int64_t out_h, int64_t out_w, c10::string_view mode,
                                   c10::string_view padding_mode, bool align_corners) {
  check_sample_args(input, theta, out_h, out_w);
  const SampleConfig cfg = parse_config(std::string(mode), std::string(padding_mode), align_corners);
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor output = at::empty({input.size(0), input.size(1), out_h, out_w},
                                input.options().memory_format(output_memory_format(input)));
  if (output.numel() == 0) return output;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "affine_grid_sample_cuda", [&] {
        auto launch = [&](auto index_zero, auto vec) {
          using index_t = decltype(index_zero);
          constexpr int kVec = decltype(vec)::value;
          launch_kernel(forward_kernel<scalar_t, index_t, kVec>,
                        grid_for_channels<kVec>(input.size(1), out_h * out_w, input.size(0)),
                        kThreads, stream, input.const_data_ptr<scalar_t>(),
                        geometry_of<index_t>(input), theta.const_data_ptr<scalar_t>(),
                        strides_of_theta(theta), output.mutable_data_ptr<scalar_t>(),
                        geometry_of<index_t>(output), cfg);
        };
        const int vector_width = channel_vector_width<scalar_t>({input, output});
        with_channel_vector<scalar_t>(vector_width, [&](auto vec) {
          if (fits_int32({input, output})) launch(int32_t{0}, vec); else launch(int64_t{0}, vec);
        });
      });
  return output;
}

std::tuple<at::Tensor, at::Tensor> affine_grid_sample_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& theta,
    c10::string_view mode, c10::string_view padding_mode, bool align_corners,
    std::array<bool, 2> output_mask) {
  check_backward_args(grad_output, input, theta);
  const SampleConfig cfg = parse_config(std::string(mode), std::string(padding_mode), align_corners);
  const bool deterministic = at::globalContext().deterministicAlgorithms();
  const c10::cuda::CUDAGuard guard(input.device());
  const at::ScalarType opmath = at::toOpMathType(input.scalar_type());
  const at::MemoryFormat layout = output_memory_format(input);
  const int64_t pixels = grad_output.size(2) * grad_output.size(3);
  const int64_t batch = input.size(0);

  // Nothing to sample (no image, channel or output pixel): both gradients are zero.
  if (pixels == 0 || batch == 0 || input.size(1) == 0) {
    return {output_mask[0] ? at::zeros_like(input, layout) : at::empty({0}, input.options()),
            output_mask[1] ? at::zeros({batch, 2, 3}, theta.options())
                           : at::empty({0}, theta.options())};
  }

  if (staged_backward_fits(grad_output, input, output_mask[0], deterministic)) {
    at::Tensor grad_input = at::empty_like(input, layout);
    at::Tensor grad_theta = output_mask[1] ? at::empty({batch, 2, 3}, theta.options())
                                           : at::empty({0}, theta.options());
    const dim3 grid(1, static_cast<unsigned>(std::min(batch, max_grid_dim_y())));
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, input.scalar_type(), "affine_grid_sample_backward_cuda", [&] {
          auto launch = [&](auto index_zero) {
            using index_t = decltype(index_zero);
            launch_kernel(backward_staged_kernel<scalar_t, index_t>, grid, kThreads,
                          c10::cuda::getCurrentCUDAStream(),
                          grad_output.const_data_ptr<scalar_t>(),
                          geometry_of<index_t>(grad_output), input.const_data_ptr<scalar_t>(),
                          geometry_of<index_t>(input), theta.const_data_ptr<scalar_t>(),
                          strides_of_theta(theta), grad_input.mutable_data_ptr<scalar_t>(),
                          geometry_of<index_t>(grad_input),
                          output_mask[1] ? grad_theta.mutable_data_ptr<scalar_t>() : nullptr,
                          cfg);
          };
          if (fits_int32({grad_output, input, grad_input})) launch(int32_t{0});
          else launch(int64_t{0});
        });
    return {grad_input, grad_theta};
  }

  const bool atomic_input_grad = output_mask[0] && !deterministic;
  const bool recorded_input_grad = output_mask[0] && deterministic;
  at::Tensor atomic_sum = atomic_input_grad
      ? at::zeros_like(input, input.options().dtype(opmath), layout) : at::Tensor();
  at::Tensor record_key = recorded_input_grad
      ? at::empty({batch * pixels * kMaxTaps}, input.options().dtype(at::kLong)) : at::Tensor();
  at::Tensor record_weight = recorded_input_grad
      ? at::empty({batch * pixels * kMaxTaps}, input.options().dtype(opmath)) : at::Tensor();
  at::Tensor partials, grad_input;
  const auto stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "affine_grid_sample_backward_cuda", [&] {
        using T = at::opmath_type<scalar_t>;
        auto launch = [&](auto index_zero, auto vec) {
          using index_t = decltype(index_zero);
          constexpr int kVec = decltype(vec)::value;
          const dim3 grid = grid_for_channels<kVec>(input.size(1), pixels, batch);
          if (output_mask[1]) {
            partials = at::empty({batch, static_cast<int64_t>(grid.x), 6},
                                 input.options().dtype(opmath));
          }
          const InputGradSink<T> sink{
              atomic_input_grad ? atomic_sum.mutable_data_ptr<T>() : nullptr,
              recorded_input_grad ? record_key.mutable_data_ptr<int64_t>() : nullptr,
              recorded_input_grad ? record_weight.mutable_data_ptr<T>() : nullptr};
          launch_kernel(backward_kernel<scalar_t, index_t, kVec>, grid, kThreads, stream,
                        grad_output.const_data_ptr<scalar_t>(), geometry_of<index_t>(grad_output),
                        input.const_data_ptr<scalar_t>(), geometry_of<index_t>(input),
                        theta.const_data_ptr<scalar_t>(), strides_of_theta(theta), sink,
                        geometry_of<index_t>(atomic_input_grad ? atomic_sum : input),
                        output_mask[1] ? partials.mutable_data_ptr<T>() : nullptr, cfg);
        };
        // (grad_input's atomics go to atomic_sum, of input's layout: per channel, so they need
        // no vector of their own.)
        const int vector_width = channel_vector_width<scalar_t>({grad_output, input});
        with_channel_vector<scalar_t>(vector_width, [&](auto vec) {
          if (fits_int32({grad_output, input, atomic_sum})) launch(int32_t{0}, vec);
          else launch(int64_t{0}, vec);
        });
      });

  if (recorded_input_grad) {
    grad_input = gather_input_grad<2>(grad_output, input, layout, record_key, record_weight,
                                      kMaxTaps);
  }
  if (atomic_input_grad) grad_input = atomic_sum.to(input.scalar_type());  // no copy if equal
  if (!output_mask[0]) grad_input = at::empty({0}, input.options());
  at::Tensor grad_theta = output_mask[1]
      ? partials.sum(1).view({batch, 2, 3}).to(theta.scalar_type())
      : at::empty({0}, theta.options());
  return {grad_input, grad_theta};
}

}  // namespace

#ifndef STN_EXT_CUDA_EMULATION  // the emulation library registers these kernels as its own ops
TORCH_LIBRARY_IMPL(stn_ext, CUDA, m) {
  m.impl("affine_grid_sample", &affine_grid_sample_cuda);
  m.impl("affine_grid_sample_backward", &affine_grid_sample_backward_cuda);
}
#endif

}  // namespace stn_ext
