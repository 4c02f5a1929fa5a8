// CUDA kernels of stn_ext::affine_grid_sample: one thread per output pixel, looping channels.
// The forward pass is a pure gather. The backward pass scatters grad_input with atomics (not
// deterministic: it reports so through at::globalContext().alertNotDeterministic) and reduces
// grad_theta per block into fixed-order partials (deterministic).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/Atomic.cuh>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>
#include <tuple>

#include "../affine_grid_sample.h"

namespace stn_ext {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kMaxGridY = 65535;

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

// The taps of one sample: up to four (offset into the image, weight) pairs, those outside the
// image marked invalid, and the bilinear neighbourhood (for the theta gradient).
template <typename T, typename index_t>
struct DeviceTaps {
  index_t offset[4];
  T weight[4];
  bool valid[4];
  Bilinear<T> stencil;
};

template <typename T, typename index_t>
__device__ inline DeviceTaps<T, index_t> taps_of(const SourcePoint<T>& p, const SampleConfig& cfg,
                                                 const Geometry<index_t>& g) {
  DeviceTaps<T, index_t> t;
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    t.valid[k] = false;
    t.offset[k] = 0;
    t.weight[k] = T(0);
  }
  t.stencil = {0, 0, T(0), T(0), T(0), T(0)};
  if (is_far_outside(p, g.h, g.w)) return t;
  if (cfg.mode == Interpolation::Nearest) {
    const int64_t x = nearest_index(p.ix), y = nearest_index(p.iy);
    t.valid[0] = in_bounds<int64_t>(x, y, g.h, g.w);
    t.offset[0] = t.valid[0] ? static_cast<index_t>(y * g.sh + x * g.sw) : 0;
    t.weight[0] = T(1);
    return t;
  }
  t.stencil = Bilinear<T>::at(p.ix, p.iy);
  const Bilinear<T>& b = t.stencil;
  const T ws[4] = {b.w00(), b.w01(), b.w10(), b.w11()};
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const int64_t x = b.x0 + k % 2, y = b.y0 + k / 2;
    t.valid[k] = in_bounds<int64_t>(x, y, g.h, g.w);
    t.offset[k] = t.valid[k] ? static_cast<index_t>(y * g.sh + x * g.sw) : 0;
    t.weight[k] = ws[k];
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

template <typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const scalar_t* __restrict__ input, Geometry<index_t> in,
                   const scalar_t* __restrict__ theta, ThetaStrides ts,
                   scalar_t* __restrict__ output, Geometry<index_t> out, SampleConfig cfg) {
  using T = at::opmath_type<scalar_t>;
  const int64_t pixel = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (pixel >= static_cast<int64_t>(out.h) * out.w) return;
  const index_t h = static_cast<index_t>(pixel / out.w), w = static_cast<index_t>(pixel % out.w);
  for (int64_t n = blockIdx.y; n < out.n; n += gridDim.y) {
    const Affine<T> a = Affine<T>::load(theta + n * ts.n, ts.row, ts.col);
    T base_x, base_y;
    const SourcePoint<T> p =
        source_point_of(a, h, w, out.h, out.w, in.h, in.w, cfg, &base_x, &base_y);
    const DeviceTaps<T, index_t> t = taps_of(p, cfg, in);
    const scalar_t* src = input + n * in.sn;
    scalar_t* dst = output + n * out.sn + h * out.sh + w * out.sw;
    for (index_t c = 0; c < in.c; ++c) {
      T acc = T(0);
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        if (t.valid[k]) acc += t.weight[k] * T(src[t.offset[k]]);
      }
      dst[c * out.sc] = static_cast<scalar_t>(acc);
      src += in.sc;
    }
  }
}

// Sum of each of six values over the block, in a fixed order; the result is valid in thread 0.
template <typename T>
__device__ inline void block_sum6(T (&v)[6]) {
  __shared__ T warp_sums[kWarps][6];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int k = 0; k < 6; ++k) {
    for (int delta = 16; delta > 0; delta /= 2) v[k] += __shfl_down_sync(0xffffffff, v[k], delta);
  }
  if (lane == 0) {
#pragma unroll
    for (int k = 0; k < 6; ++k) warp_sums[warp][k] = v[k];
  }
  __syncthreads();
  if (threadIdx.x == 0) {
#pragma unroll
    for (int k = 0; k < 6; ++k) {
      T s = warp_sums[0][k];
      for (int i = 1; i < kWarps; ++i) s += warp_sums[i][k];
      v[k] = s;
    }
  }
  __syncthreads();  // warp_sums is reused by the next image of a grid-stride loop
}

// grad_in_t is scalar_t, or float for reduced-precision inputs (atomics on a float buffer are
// both faster and more accurate than on half); the host casts it back.
template <typename scalar_t, typename grad_in_t, typename index_t>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(const scalar_t* __restrict__ grad_output, Geometry<index_t> gout,
                    const scalar_t* __restrict__ input, Geometry<index_t> in,
                    const scalar_t* __restrict__ theta, ThetaStrides ts,
                    grad_in_t* __restrict__ grad_input, Geometry<index_t> gin,
                    at::opmath_type<scalar_t>* __restrict__ theta_partials, SampleConfig cfg) {
  using T = at::opmath_type<scalar_t>;
  const int64_t pixel = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const bool active = pixel < static_cast<int64_t>(gout.h) * gout.w;
  const index_t h = active ? static_cast<index_t>(pixel / gout.w) : 0;
  const index_t w = active ? static_cast<index_t>(pixel % gout.w) : 0;
  const bool want_theta = theta_partials != nullptr && cfg.mode == Interpolation::Bilinear;

  for (int64_t n = blockIdx.y; n < gout.n; n += gridDim.y) {
    T tg[6] = {T(0), T(0), T(0), T(0), T(0), T(0)};
    if (active) {
      const Affine<T> a = Affine<T>::load(theta + n * ts.n, ts.row, ts.col);
      T base_x, base_y;
      const SourcePoint<T> p =
          source_point_of(a, h, w, gout.h, gout.w, in.h, in.w, cfg, &base_x, &base_y);
      const DeviceTaps<T, index_t> t = taps_of(p, cfg, in);
      DeviceTaps<T, index_t> gt = t;  // the same taps at grad_input's strides
      if (grad_input != nullptr) gt = taps_of(p, cfg, gin);
      const scalar_t* go = grad_output + n * gout.sn + h * gout.sh + w * gout.sw;
      const scalar_t* src = input + n * in.sn;
      grad_in_t* dst = grad_input == nullptr ? nullptr : grad_input + n * gin.sn;
      T g_ix = T(0), g_iy = T(0);
      for (index_t c = 0; c < gout.c; ++c) {
        const T g = T(go[c * gout.sc]);
        if (dst != nullptr) {
#pragma unroll
          for (int k = 0; k < 4; ++k) {
            if (gt.valid[k]) {
              gpuAtomicAdd(dst + c * gin.sc + gt.offset[k], static_cast<grad_in_t>(gt.weight[k] * g));
            }
          }
        }
        if (want_theta) {
          T v[4];
#pragma unroll
          for (int k = 0; k < 4; ++k) v[k] = t.valid[k] ? T(src[c * in.sc + t.offset[k]]) : T(0);
          T d_ix, d_iy;
          bilinear_coord_grad(t.stencil, v[0], v[1], v[2], v[3], &d_ix, &d_iy);
          g_ix += g * d_ix;
          g_iy += g * d_iy;
        }
      }
      if (want_theta) {
        ThetaGrad<T> acc{};
        acc.add(g_ix * p.dix, g_iy * p.diy, base_x, base_y);
#pragma unroll
        for (int k = 0; k < 6; ++k) tg[k] = acc.g[k];
      }
    }
    if (theta_partials != nullptr) {
      block_sum6(tg);
      if (threadIdx.x == 0) {
        T* out = theta_partials + (n * gridDim.x + blockIdx.x) * 6;
#pragma unroll
        for (int k = 0; k < 6; ++k) out[k] = tg[k];
      }
    }
  }
}

// Whether every element offset of these tensors fits the 32-bit index type.
bool fits_int32(std::initializer_list<at::Tensor> tensors) {
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
  for (const at::Tensor& t : tensors) {
    if (!t.defined() || t.numel() == 0) continue;
    int64_t max_offset = 0;
    for (int64_t d = 0; d < t.dim(); ++d) max_offset += (t.size(d) - 1) * t.stride(d);
    if (t.numel() > kMax || max_offset > kMax) return false;
  }
  return true;
}

dim3 grid_for(int64_t pixels, int64_t batch) {
  return dim3(static_cast<unsigned>((pixels + kThreads - 1) / kThreads),
              static_cast<unsigned>(std::min(batch, kMaxGridY)));
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
  const dim3 grid = grid_for(out_h * out_w, input.size(0));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "affine_grid_sample_cuda", [&] {
        auto launch = [&](auto index_zero) {
          using index_t = decltype(index_zero);
          forward_kernel<scalar_t, index_t><<<grid, kThreads, 0, stream>>>(
              input.const_data_ptr<scalar_t>(), geometry_of<index_t>(input),
              theta.const_data_ptr<scalar_t>(), strides_of_theta(theta),
              output.mutable_data_ptr<scalar_t>(), geometry_of<index_t>(output), cfg);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        };
        if (fits_int32({input, output})) launch(int32_t{0}); else launch(int64_t{0});
      });
  return output;
}

std::tuple<at::Tensor, at::Tensor> affine_grid_sample_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& theta,
    c10::string_view mode, c10::string_view padding_mode, bool align_corners,
    std::array<bool, 2> output_mask) {
  check_backward_args(grad_output, input, theta);
  const SampleConfig cfg = parse_config(std::string(mode), std::string(padding_mode), align_corners);
  if (output_mask[0]) {
    at::globalContext().alertNotDeterministic(
        "stn_ext::affine_grid_sample_backward (CUDA, gradient of input)");
  }
  const c10::cuda::CUDAGuard guard(input.device());
  const at::ScalarType opmath = at::toOpMathType(input.scalar_type());

  at::Tensor grad_input_acc = output_mask[0]
      ? at::zeros_like(input, input.options().dtype(opmath), output_memory_format(input))
      : at::Tensor();
  const int64_t pixels = grad_output.size(2) * grad_output.size(3);
  const dim3 grid = grid_for(pixels, input.size(0));
  at::Tensor partials = output_mask[1]
      ? at::zeros({input.size(0), static_cast<int64_t>(grid.x), 6}, input.options().dtype(opmath))
      : at::Tensor();

  if (pixels > 0 && input.size(0) > 0 && input.size(1) > 0) {
    const auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, input.scalar_type(), "affine_grid_sample_backward_cuda", [&] {
          using T = at::opmath_type<scalar_t>;
          using grad_in_t = T;  // float for float, half and bfloat16; double for double
          auto launch = [&](auto index_zero) {
            using index_t = decltype(index_zero);
            const at::Tensor& gin_geom = output_mask[0] ? grad_input_acc : input;
            backward_kernel<scalar_t, grad_in_t, index_t><<<grid, kThreads, 0, stream>>>(
                grad_output.const_data_ptr<scalar_t>(), geometry_of<index_t>(grad_output),
                input.const_data_ptr<scalar_t>(), geometry_of<index_t>(input),
                theta.const_data_ptr<scalar_t>(), strides_of_theta(theta),
                output_mask[0] ? grad_input_acc.mutable_data_ptr<grad_in_t>() : nullptr,
                geometry_of<index_t>(gin_geom),
                output_mask[1] ? partials.mutable_data_ptr<T>() : nullptr, cfg);
            C10_CUDA_KERNEL_LAUNCH_CHECK();
          };
          if (fits_int32({grad_output, input, grad_input_acc})) launch(int32_t{0});
          else launch(int64_t{0});
        });
  }

  at::Tensor grad_input = output_mask[0] ? grad_input_acc.to(input.scalar_type())  // no copy
                                         : at::empty({0}, input.options());    // when already so
  at::Tensor grad_theta = output_mask[1]
      ? partials.sum(1).view({input.size(0), 2, 3}).to(theta.scalar_type())
      : at::empty({0}, theta.options());
  return {grad_input, grad_theta};
}

}  // namespace

TORCH_LIBRARY_IMPL(stn_ext, CUDA, m) {
  m.impl("affine_grid_sample", &affine_grid_sample_cuda);
  m.impl("affine_grid_sample_backward", &affine_grid_sample_backward_cuda);
}

}  // namespace stn_ext
