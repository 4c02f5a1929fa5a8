// CUDA kernels of stn_ext::affine_grid_sample: one thread per output pixel, looping channels,
// or, where channels are innermost in whole 16-byte vectors (channels_last), one per (pixel,
// vector of channels) (sampling_common.cuh's ChannelSplit).
// The forward pass is a pure gather. The backward pass reduces grad_theta per block into
// fixed-order partials (deterministic), and gets grad_input one of four ways: staged in shared
// memory for a small image (atomics there), gathered per input pixel for a large one where the
// map allows (deterministic), atomics into global memory, or, under
// torch.use_deterministic_algorithms(True) where the gather cannot serve, tap records sorted by
// destination (sampling_common.cuh).
// Kernels are launched through launch_kernel (launch.cuh), which the test-only emulation build
// runs on the host.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <limits>
#include <optional>
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

// Calls f(std::integral_constant<Interpolation, mode>{}): the fused op's kernels take the mode
// as a template parameter, so that each is built with one mode's taps and weights and no branch
// on the mode (the padding stays a run-time value: its branches are per axis and cheap).
template <typename F>
void with_mode(Interpolation mode, F&& f) {
  switch (mode) {
    case Interpolation::Bilinear:
      return f(std::integral_constant<Interpolation, Interpolation::Bilinear>{});
    case Interpolation::Nearest:
      return f(std::integral_constant<Interpolation, Interpolation::Nearest>{});
    case Interpolation::Bicubic:  // parse_config refuses it before any launch
      TORCH_INTERNAL_ASSERT(false, "affine_grid_sample has no bicubic CUDA kernel");
  }
}

// The output point and channels of a thread of forward_kernel or backward_kernel: with one
// thread per pixel (kVec 1), a pixel of the output's PixelTiles and all channels; with lanes
// across channels, the (point, group of kVec channels) of ChannelSplit, whose lanes already read
// whole 16-byte vectors of one pixel. False for a thread past the output (its h, w and work are
// then those of a point inside, for kernels whose every thread must go on to a block sum).
template <int kVec, typename index_t>
__device__ inline bool thread_work(const Geometry<index_t>& out, index_t channels, index_t* h,
                                   index_t* w, ChannelWork<index_t>* work) {
  if constexpr (kVec == 1) {
    PixelTiles(out.w).pixel(h, w);
    const bool inside = *h < out.h && *w < out.w;
    if (!inside) *h = *w = 0;
    *work = {static_cast<int64_t>(*h) * out.w + *w, 0, channels};
    return inside;
  } else {
    const ChannelSplit<kVec> split(channels);
    const int64_t item = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    const bool inside = item < split.items(static_cast<int64_t>(out.h) * out.w);
    *work = split.work(inside ? item : 0, channels);
    *h = static_cast<index_t>(work->point / out.w);
    *w = static_cast<index_t>(work->point % out.w);
    return inside;
  }
}

// The launch grid of forward_kernel and backward_kernel (as thread_work splits the work).
template <int kVec>
dim3 grid_for_work(int64_t channels, int64_t out_h, int64_t out_w, int64_t batch) {
  if constexpr (kVec == 1) return grid_for_tiles(out_h, out_w, batch);
  return grid_for_channels<kVec>(channels, out_h * out_w, batch);
}

// One thread per output pixel (in tiles) or per (output pixel, group of kVec channels):
// thread_work.
template <Interpolation kMode, typename scalar_t, typename index_t, int kVec>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const scalar_t* __restrict__ input, Geometry<index_t> in,
                   const scalar_t* __restrict__ theta, ThetaStrides ts,
                   scalar_t* __restrict__ output, Geometry<index_t> out, Padding padding,
                   bool align_corners) {
  using T = at::opmath_type<scalar_t>;
  const SampleConfig cfg{kMode, padding, align_corners};
  index_t h, w;
  ChannelWork<index_t> work;
  if (!thread_work<kVec>(out, in.c, &h, &w, &work)) return;
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

// Where a backward kernel's blocks put their theta-gradient partials: block b of image n at
// data + (n * per_image + first + b) * 6 (first: the partials of an earlier kernel of the same
// call come before), summed over each image's row by the host.
template <typename T>
struct ThetaPartials {
  T* data;  // nullptr: no theta gradient wanted
  int64_t per_image, first;

  // Sums the threads' tg over the block (block_sum: every thread must call this) and writes the
  // sum as the block's partial of image n; nothing without data.
  __device__ void store_block_sum(int64_t n, T (&tg)[6]) const {
    if (data == nullptr) return;
    block_sum(tg);
    if (threadIdx.x == 0) {
      T* out = data + (n * per_image + first + blockIdx.x) * 6;
#pragma unroll
      for (int k = 0; k < 6; ++k) out[k] = tg[k];
    }
  }
};

// One thread per (output pixel, group of kVec channels) (ChannelSplit); every thread of a block
// adds its share of the pixels' theta gradients to the block's partial. The atomic sink is of
// the opmath type (atomics on a float buffer are both faster and more accurate than on half);
// the host casts it back. Images whose `gathered` flag is set (nullptr: none) were done by
// backward_gather_kernel: their threads add nothing.
template <Interpolation kMode, typename scalar_t, typename index_t, int kVec>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(const scalar_t* __restrict__ grad_output, Geometry<index_t> gout,
                    const scalar_t* __restrict__ input, Geometry<index_t> in,
                    const scalar_t* __restrict__ theta, ThetaStrides ts,
                    InputGradSink<at::opmath_type<scalar_t>> sink, Geometry<index_t> gin,
                    ThetaPartials<at::opmath_type<scalar_t>> partials,
                    const bool* __restrict__ gathered, Padding padding, bool align_corners) {
  using T = at::opmath_type<scalar_t>;
  const SampleConfig cfg{kMode, padding, align_corners};
  index_t h, w;
  ChannelWork<index_t> work;
  const bool active = thread_work<kVec>(gout, in.c, &h, &w, &work);
  const int64_t pixels = static_cast<int64_t>(gout.h) * gout.w;
  const int64_t pixel = work.point;
  const bool want_theta = partials.data != nullptr && cfg.mode == Interpolation::Bilinear;

  for (int64_t n = blockIdx.y; n < gout.n; n += gridDim.y) {
    T tg[6] = {T(0), T(0), T(0), T(0), T(0), T(0)};
    if (active && !(gathered != nullptr && gathered[n])) {
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
    partials.store_block_sum(n, tg);
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

template <Interpolation kMode, typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kThreads)
    backward_staged_kernel(const scalar_t* __restrict__ grad_output, Geometry<index_t> gout,
                           const scalar_t* __restrict__ input, Geometry<index_t> in,
                           const scalar_t* __restrict__ theta, ThetaStrides ts,
                           scalar_t* __restrict__ grad_input, Geometry<index_t> gin,
                           scalar_t* __restrict__ grad_theta, Padding padding,
                           bool align_corners) {
  using T = at::opmath_type<scalar_t>;
  const SampleConfig cfg{kMode, padding, align_corners};
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
  return want_input && !deterministic && stage_small_images() &&
         input.size(1) * input.size(2) * input.size(3) * opmath_size <= kStagedBytes &&
         grad_output.size(2) * grad_output.size(3) <= kStagedPointsPerThread * kThreads;
}

// --- Large images, few channels: grad_input gathered, written once ---------------------------
// backward_kernel scatters: grad_input is zero-filled, then every output point adds into its taps
// with atomics, a read-modify-write per tap and channel. With zeros padding the map from output
// pixel (w, h) to source pixel (ix, iy) is affine, so unless it is singular the output points
// with a tap at input pixel (x, y) lie in a small parallelogram of the output, found through the
// inverse map (GatherPlan). backward_gather_kernel gives each thread one input pixel and sums,
// in a fixed order, over the points of that parallelogram's bounding box whose taps include the
// pixel (each point's taps come from taps_of, as in every other kernel, so weights match bit
// for bit), then writes the pixel's channels once: no fill, no atomics, and deterministic. Each
// output point's theta gradient is taken by one of its taps' pixels (gather_owner), in the same
// pass. A block is a tile of input pixels (PixelTiles): under any rotation its candidates are a
// compact patch of the output, read from L1 by its neighbours.
// An image whose map is singular, not finite, or so anisotropic that a pixel has over
// kMaxGatherCandidates candidates is left to backward_kernel (atomics into grad_input, which
// the gather kernel has zeroed for it): the per-image flag `gathered` says which. Shape decides
// the path, theta only this per-image fallback, on the device, without a host sync. Under
// use_deterministic_algorithms the gather serves as well, but an image left over would not be
// deterministic: the host reads the flags (one sync) and, if any is false, the tap records
// redo the call; during CUDA-graph capture, where the host cannot wait, the records serve.
// Arithmetic (an estimate: no GPU run yet), 8x3x1024x1024 fp32, a rotation at scale ~1: DRAM
// traffic is grad_output, input and grad_input once each, 3 x 100.7 MB = 302 MB, against
// 503 MB for the scatter (fill 101, grad_output 101, input 101, grad_input read and written
// 201); ~9-16 candidates per input pixel at ~45 instructions each, 8.4 M pixels: 3.4-6 G lane
// instructions, ~100-180 us at the H200's ~33 T lane instructions/s against ~80 us for the
// bytes at ~3.8 TB/s: the candidates' math, not memory, bounds this kernel. Launches: the
// gather, the fallback (where every image was gathered, its threads load one flag and sum
// zeros into their blocks' theta partials) and the partials' sum, against fill, scatter and
// sum. Registers (sm_90, float): 124 bilinear (2 blocks of 256 an SM), 80 nearest; no stack
// (the plan's double divisions are one thread's, outside the candidate loop).
constexpr double kMaxGatherCandidates = 1024;
constexpr int64_t kMaxGatherChannels = 4;  // a thread keeps its pixel's channels in registers

// How the output points with a tap at a given input pixel are found, for one image: the
// inverse of the affine map (w, h) -> (ix, iy), and how far around the inverse image of the
// pixel its candidates reach.
struct GatherPlan {
  bool gatherable;
  double inv00, inv01, inv10, inv11;  // (w, h) = inv * ((ix, iy) - origin)
  double origin_x, origin_y;
  double reach_w, reach_h;  // half-extents of a pixel's candidate box, in output pixels

  // d(base coordinate) / d(pixel index) along an axis of `size` output pixels (base_coord is
  // linear in the index up to rounding), and d(pixel) / d(normalised) of unnormalize.
  __device__ static double base_slope(int64_t size, bool align_corners) {
    if (size <= 1) return 0.0;
    return align_corners ? 2.0 / double(size - 1) : 2.0 / double(size);
  }
  __device__ static double pixel_slope(int64_t size, bool align_corners) {
    return align_corners ? double(size - 1) / 2.0 : double(size) / 2.0;
  }

  template <typename T, typename index_t>
  __device__ static GatherPlan of(const Affine<T>& a, const Geometry<index_t>& out,
                                  const Geometry<index_t>& in, const SampleConfig& cfg) {
    const bool ac = cfg.align_corners;
    const double ax = base_slope(out.w, ac), ay = base_slope(out.h, ac);
    const double cx = base_coord<double>(0, out.w, ac), cy = base_coord<double>(0, out.h, ac);
    const double sx = pixel_slope(in.w, ac), sy = pixel_slope(in.h, ac);
    const double t00 = a.t00, t01 = a.t01, t02 = a.t02, t10 = a.t10, t11 = a.t11, t12 = a.t12;
    // ix = m00 w + m01 h + origin_x, iy = m10 w + m11 h + origin_y (unnormalize adds
    // (size - 1) / 2 in both alignments).
    const double m00 = sx * t00 * ax, m01 = sx * t01 * ay, m10 = sy * t10 * ax,
                 m11 = sy * t11 * ay;
    const double det = m00 * m11 - m01 * m10;
    GatherPlan plan;
    plan.origin_x = sx * (t00 * cx + t01 * cy + t02) + double(in.w - 1) / 2.0;
    plan.origin_y = sy * (t10 * cx + t11 * cy + t12) + double(in.h - 1) / 2.0;
    const double inv_det = 1.0 / det;
    plan.inv00 = m11 * inv_det;
    plan.inv01 = -m01 * inv_det;
    plan.inv10 = -m10 * inv_det;
    plan.inv11 = m00 * inv_det;
    // A point has a tap at pixel x when its ix is within `reach` of x (bilinear: ix in
    // [x - 1, x + 1); nearest: [x - 0.5, x + 0.5]). The kernels compute ix in T from
    // intermediates of magnitude up to (|t0| + |t1| + |t2| + 1) * size: `slack` covers their
    // rounding (a few ulps of that) many times over.
    const double reach = cfg.mode == Interpolation::Nearest ? 0.5 : 1.0;
    constexpr double eps = std::numeric_limits<T>::epsilon();
    const double magnitude_x = (fabs(t00) + fabs(t01) + fabs(t02) + 1.0) * double(in.w) + 1.0;
    const double magnitude_y = (fabs(t10) + fabs(t11) + fabs(t12) + 1.0) * double(in.h) + 1.0;
    const double reach_x = reach + 64.0 * eps * magnitude_x;
    const double reach_y = reach + 64.0 * eps * magnitude_y;
    constexpr double kSlackOutputPixels = 1e-6;  // the double math's own rounding
    plan.reach_w = fabs(plan.inv00) * reach_x + fabs(plan.inv01) * reach_y + kSlackOutputPixels;
    plan.reach_h = fabs(plan.inv10) * reach_x + fabs(plan.inv11) * reach_y + kSlackOutputPixels;
    // Coordinates far from overflowing T (so none is undefined), and a bounded box; false for
    // any NaN or infinity on the way (a singular map gives both).
    const double coordinate_limit = 1e-8 * double(std::numeric_limits<T>::max());
    plan.gatherable = magnitude_x < coordinate_limit && magnitude_y < coordinate_limit &&
                      (2.0 * plan.reach_w + 1.0) * (2.0 * plan.reach_h + 1.0) <=
                          kMaxGatherCandidates;
    return plan;
  }
};

// The output points that may have a tap at one input pixel: [w0, w1] x [h0, h1].
struct CandidateBox {
  int64_t w0, w1, h0, h1;
};

template <typename index_t>
__device__ inline CandidateBox candidates_of(const GatherPlan& plan, index_t x, index_t y,
                                             const Geometry<index_t>& out) {
  const double dx = double(x) - plan.origin_x, dy = double(y) - plan.origin_y;
  const double w = plan.inv00 * dx + plan.inv01 * dy, h = plan.inv10 * dx + plan.inv11 * dy;
  // Clamped in double before the conversion: the box may lie far outside the output (an empty
  // range then has first > last).
  auto first = [](double v, int64_t size) {
    return static_cast<int64_t>(ceil(fmin(fmax(v, 0.0), double(size))));
  };
  auto last = [](double v, int64_t size) {
    return static_cast<int64_t>(floor(fmax(fmin(v, double(size - 1)), -1.0)));
  };
  return {first(w - plan.reach_w, out.w), last(w + plan.reach_w, out.w),
          first(h - plan.reach_h, out.h), last(h + plan.reach_h, out.h)};
}

// The input pixel that takes a bilinear point's theta gradient: of its taps inside the image,
// the one nearest its top-left tap (x0, y0). A point with any tap inside has x0 in [-1, W - 1]
// and y0 in [-1, H - 1], so this is one of its taps, whose gather sees the point.
template <typename T, typename index_t>
__device__ inline int64_t gather_owner(const Bilinear<T>& b, const Geometry<index_t>& in) {
  const int64_t x = b.x0 < 0 ? 0 : b.x0;  // (x0 <= W - 1 already)
  const int64_t y = b.y0 < 0 ? 0 : b.y0;
  return y * in.w + x;
}

// One thread per input pixel (in PixelTiles), all channels (at most kMaxGatherChannels):
// grad_input of the pixel, and the theta gradients of the points it owns (block partials).
// Writes grad_input in full, zeros for an image that is not gatherable (then left to
// backward_kernel, or to the tap records when deterministic: `gathered[n]` false).
template <Interpolation kMode, typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kThreads)
    backward_gather_kernel(const scalar_t* __restrict__ grad_output, Geometry<index_t> gout,
                           const scalar_t* __restrict__ input, Geometry<index_t> in,
                           const scalar_t* __restrict__ theta, ThetaStrides ts,
                           scalar_t* __restrict__ grad_input, Geometry<index_t> gin,
                           ThetaPartials<at::opmath_type<scalar_t>> partials,
                           bool* __restrict__ gathered, bool align_corners) {
  using T = at::opmath_type<scalar_t>;
  const SampleConfig cfg{kMode, Padding::Zeros, align_corners};
  index_t x, y;
  PixelTiles(in.w).pixel(&y, &x);
  const bool active = x < in.w && y < in.h;
  const int64_t pixel = static_cast<int64_t>(y) * in.w + x;
  const bool want_theta = partials.data != nullptr && kMode == Interpolation::Bilinear;
  // The image's plan, made by one thread (its double math is the same for the whole block):
  // the other threads neither compute it nor keep its intermediates in registers.
  __shared__ GatherPlan image_plan;
  for (int64_t n = blockIdx.y; n < gout.n; n += gridDim.y) {
    const Affine<T> a = Affine<T>::load(theta + n * ts.n, ts.row, ts.col);
    if (threadIdx.x == 0) {
      image_plan = GatherPlan::of(a, gout, in, cfg);
      if (blockIdx.x == 0) gathered[n] = image_plan.gatherable;
    }
    __syncthreads();
    const GatherPlan& plan = image_plan;
    T tg[6] = {T(0), T(0), T(0), T(0), T(0), T(0)};
    if (active) {
      T acc[kMaxGatherChannels] = {};
      if (plan.gatherable) {
        const CandidateBox box = candidates_of(plan, x, y, gout);
        const scalar_t* go = grad_output + n * gout.sn;
        for (int64_t h = box.h0; h <= box.h1; ++h) {
          for (int64_t w = box.w0; w <= box.w1; ++w) {
            T base_x, base_y;
            const SourcePoint<T> p =
                source_point_of(a, h, w, gout.h, gout.w, in.h, in.w, cfg, &base_x, &base_y);
            const DeviceTaps<T, index_t> t = taps_of(p, cfg, in);
            bool hit = false;
            T weight = T(0);
#pragma unroll
            for (int k = 0; k < kMaxTaps; ++k) {  // (the taps are distinct pixels)
              if (t.valid[k] && t.pixel[k] == pixel) {
                hit = true;
                weight = t.weight[k];
              }
            }
            if (!hit) continue;
            const scalar_t* go_point = go + h * gout.sh + w * gout.sw;
#pragma unroll
            for (int c = 0; c < kMaxGatherChannels; ++c) {
              if (c < gin.c) acc[c] += weight * T(go_point[c * gout.sc]);
            }
            if (want_theta && gather_owner(t.stencil, in) == pixel) {
              T g_ix = T(0), g_iy = T(0);
              backward_channels<1>(
                  t, go_point, gout.sc, input + n * in.sn, in.sc, index_t{0}, in.c,
                  /*want_input=*/false, /*want_theta=*/true, [](index_t, int, T) {}, &g_ix,
                  &g_iy);
              add_point_theta_grad(t, p, g_ix, g_iy, base_x, base_y, tg);
            }
          }
        }
      }
      scalar_t* dst = grad_input + n * gin.sn + y * gin.sh + x * gin.sw;
#pragma unroll
      for (int c = 0; c < kMaxGatherChannels; ++c) {
        if (c < gin.c) dst[c * gin.sc] = static_cast<scalar_t>(acc[c]);
      }
    }
    partials.store_block_sum(n, tg);
    __syncthreads();  // the next image's plan waits for this one's readers
  }
}

// Whether backward_gather_kernel takes a call (by shape and settings only): grad_input wanted,
// zeros padding, float or double (the fallback's atomics go into grad_input itself), at most
// kMaxGatherChannels channels, 32-bit offsets (grad_input has input's layout; a tensor of over
// 2^31 elements is left to the scattering kernel, so the gather is built for 32-bit indices
// alone); deterministic only outside CUDA-graph capture (the host then checks that every image
// was gathered: backward_by_gather).
bool gather_backward_fits(const at::Tensor& grad_output, const at::Tensor& input,
                          const SampleConfig& cfg, bool want_input, bool deterministic) {
  const at::ScalarType dtype = input.scalar_type();
  return want_input && cfg.padding == Padding::Zeros &&
         (dtype == at::kFloat || dtype == at::kDouble) && input.size(1) <= kMaxGatherChannels &&
         fits_int32({grad_output, input}) && !(deterministic && stream_is_capturing());
}

ThetaStrides strides_of_theta(const at::Tensor& theta) {
  return {theta.stride(0), theta.stride(1), theta.stride(2)};
}

// The backward pass by backward_gather_kernel (gather_backward_fits), with backward_kernel as
// the fallback for the images the gather leaves (their flags false), and theta's gradient from
// both kernels' partials. Deterministic, the fallback's atomics would not do: the host waits
// for the flags instead (one copy of N bools) and returns nothing unless every image was
// gathered, for the tap records to redo the call.
std::optional<std::tuple<at::Tensor, at::Tensor>> backward_by_gather(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& theta,
    const SampleConfig& cfg, bool want_theta, bool deterministic) {
  const int64_t batch = input.size(0);
  at::Tensor grad_input = at::empty_like(input, output_memory_format(input));
  at::Tensor gathered = at::empty({batch}, input.options().dtype(at::kBool));
  const dim3 gather_grid = grid_for_tiles(input.size(2), input.size(3), batch);
  const dim3 fallback_grid =
      grid_for_work<1>(input.size(1), grad_output.size(2), grad_output.size(3), batch);
  const int64_t blocks_per_image =
      int64_t{gather_grid.x} + (deterministic ? 0 : int64_t{fallback_grid.x});
  at::Tensor partials = want_theta ? at::empty({batch, blocks_per_image, 6}, input.options())
                                   : at::Tensor();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "affine_grid_sample_backward_cuda", [&] {
    using index_t = int32_t;  // (gather_backward_fits)
    scalar_t* partials_data = want_theta ? partials.mutable_data_ptr<scalar_t>() : nullptr;
    with_mode(cfg.mode, [&](auto mode) {
      constexpr Interpolation kMode = decltype(mode)::value;
      launch_kernel(backward_gather_kernel<kMode, scalar_t, index_t>, gather_grid, kThreads,
                    stream, grad_output.const_data_ptr<scalar_t>(),
                    geometry_of<index_t>(grad_output), input.const_data_ptr<scalar_t>(),
                    geometry_of<index_t>(input), theta.const_data_ptr<scalar_t>(),
                    strides_of_theta(theta), grad_input.mutable_data_ptr<scalar_t>(),
                    geometry_of<index_t>(grad_input),
                    ThetaPartials<scalar_t>{partials_data, blocks_per_image, 0},
                    gathered.mutable_data_ptr<bool>(), cfg.align_corners);
      if (deterministic) return;
      launch_kernel(backward_kernel<kMode, scalar_t, index_t, 1>, fallback_grid, kThreads,
                    stream, grad_output.const_data_ptr<scalar_t>(),
                    geometry_of<index_t>(grad_output), input.const_data_ptr<scalar_t>(),
                    geometry_of<index_t>(input), theta.const_data_ptr<scalar_t>(),
                    strides_of_theta(theta),
                    InputGradSink<scalar_t>{grad_input.mutable_data_ptr<scalar_t>(), nullptr,
                                            nullptr},
                    geometry_of<index_t>(grad_input),
                    ThetaPartials<scalar_t>{partials_data, blocks_per_image, gather_grid.x},
                    gathered.const_data_ptr<bool>(), cfg.padding, cfg.align_corners);
    });
  });
  if (deterministic && !gathered.all().item<bool>()) return std::nullopt;
  at::Tensor grad_theta = want_theta
      ? partials.sum(1).view({batch, 2, 3})  // (of theta's dtype already)
      : at::empty({0}, theta.options());
  return std::make_tuple(grad_input, grad_theta);
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
          with_mode(cfg.mode, [&](auto mode) {
            launch_kernel(forward_kernel<decltype(mode)::value, scalar_t, index_t, kVec>,
                          grid_for_work<kVec>(input.size(1), out_h, out_w, input.size(0)),
                          kThreads, stream, input.const_data_ptr<scalar_t>(),
                          geometry_of<index_t>(input), theta.const_data_ptr<scalar_t>(),
                          strides_of_theta(theta), output.mutable_data_ptr<scalar_t>(),
                          geometry_of<index_t>(output), cfg.padding, cfg.align_corners);
          });
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
            with_mode(cfg.mode, [&](auto mode) {
              launch_kernel(
                  backward_staged_kernel<decltype(mode)::value, scalar_t, index_t>, grid,
                  kThreads, c10::cuda::getCurrentCUDAStream(),
                  grad_output.const_data_ptr<scalar_t>(), geometry_of<index_t>(grad_output),
                  input.const_data_ptr<scalar_t>(), geometry_of<index_t>(input),
                  theta.const_data_ptr<scalar_t>(), strides_of_theta(theta),
                  grad_input.mutable_data_ptr<scalar_t>(), geometry_of<index_t>(grad_input),
                  output_mask[1] ? grad_theta.mutable_data_ptr<scalar_t>() : nullptr,
                  cfg.padding, cfg.align_corners);
            });
          };
          if (fits_int32({grad_output, input, grad_input})) launch(int32_t{0});
          else launch(int64_t{0});
        });
    return {grad_input, grad_theta};
  }

  if (gather_backward_fits(grad_output, input, cfg, output_mask[0], deterministic)) {
    if (auto grads = backward_by_gather(grad_output, input, theta, cfg, output_mask[1],
                                        deterministic)) {
      return *grads;
    }
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
          const dim3 grid = grid_for_work<kVec>(input.size(1), grad_output.size(2),
                                                grad_output.size(3), batch);
          if (output_mask[1]) {
            partials = at::empty({batch, static_cast<int64_t>(grid.x), 6},
                                 input.options().dtype(opmath));
          }
          const InputGradSink<T> sink{
              atomic_input_grad ? atomic_sum.mutable_data_ptr<T>() : nullptr,
              recorded_input_grad ? record_key.mutable_data_ptr<int64_t>() : nullptr,
              recorded_input_grad ? record_weight.mutable_data_ptr<T>() : nullptr};
          with_mode(cfg.mode, [&](auto mode) {
            launch_kernel(
                backward_kernel<decltype(mode)::value, scalar_t, index_t, kVec>, grid, kThreads,
                stream, grad_output.const_data_ptr<scalar_t>(), geometry_of<index_t>(grad_output),
                input.const_data_ptr<scalar_t>(), geometry_of<index_t>(input),
                theta.const_data_ptr<scalar_t>(), strides_of_theta(theta), sink,
                geometry_of<index_t>(atomic_input_grad ? atomic_sum : input),
                ThetaPartials<T>{output_mask[1] ? partials.mutable_data_ptr<T>() : nullptr,
                                 static_cast<int64_t>(grid.x), 0},
                /*gathered=*/nullptr, cfg.padding, cfg.align_corners);
          });
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
