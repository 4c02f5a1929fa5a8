// CPU kernels of stn_ext::affine_grid_sample: parallel over output rows (forward) and over
// (image, channel group) work units (backward), deterministic for any thread count.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../affine_grid_sample.h"

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

// The input taps of one output pixel: the top-left tap (x0, y0), a bit per tap that lies inside
// the image (taps outside read zero padding), and the tap weights. Tap k sits at
// (x0 + k % 2, y0 + k / 2); a nearest sample uses tap 0 only.
template <typename T>
struct PixelTaps {
  int64_t x0, y0;
  unsigned inside;
  T weight[4];

  bool is_inside(int k) const { return (inside >> k) & 1u; }
  int64_t origin(const Geometry& g) const { return y0 * g.sh + x0 * g.sw; }
  static int64_t delta(int k, const Geometry& g) { return (k / 2) * g.sh + (k % 2) * g.sw; }
};

// Source taps of one output pixel in an input of geometry `in`; for bilinear samples the
// neighbourhood, which the theta gradient needs, goes to *stencil.
template <Interpolation kMode, typename T>
inline PixelTaps<T> resolve_taps(const SourcePoint<T>& p, const Geometry& in,
                                 Bilinear<T>* stencil) {
  PixelTaps<T> taps{0, 0, 0u, {T(0), T(0), T(0), T(0)}};
  if (is_far_outside(p, in.h, in.w)) return taps;
  if constexpr (kMode == Interpolation::Nearest) {
    taps.x0 = nearest_index(p.ix);
    taps.y0 = nearest_index(p.iy);
    taps.inside = in_bounds(taps.x0, taps.y0, in.h, in.w) ? 1u : 0u;
    taps.weight[0] = T(1);
  } else {
    const Bilinear<T> b = Bilinear<T>::at(p.ix, p.iy);
    *stencil = b;
    taps.x0 = b.x0;
    taps.y0 = b.y0;
    const T weights[4] = {b.w00(), b.w01(), b.w10(), b.w11()};
    for (int k = 0; k < 4; ++k) {
      taps.weight[k] = weights[k];
      if (in_bounds(b.x0 + k % 2, b.y0 + k / 2, in.h, in.w)) taps.inside |= 1u << k;
    }
  }
  return taps;
}

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

// Templated on mode and padding (see with_static_config) so the per-pixel math is branch-free.
// Each task takes whole output rows: first the taps of every pixel of the row, then a pass per
// channel that reads and writes along the row.
template <Interpolation kMode, Padding kPadding, typename scalar_t>
void forward_kernel(const at::Tensor& input, const at::Tensor& theta, const at::Tensor& output,
                    bool align_corners) {
  using T = at::opmath_type<scalar_t>;
  constexpr int kTaps = kMode == Interpolation::Bilinear ? 4 : 1;
  const SampleConfig cfg{kMode, kPadding, align_corners};
  const Geometry in(input), out(output);
  const scalar_t* in_ptr = input.const_data_ptr<scalar_t>();
  scalar_t* out_ptr = output.mutable_data_ptr<scalar_t>();
  const std::vector<T> base_x = base_coords<T>(out.w, align_corners);
  int64_t delta[4];
  for (int k = 0; k < 4; ++k) delta[k] = PixelTaps<T>::delta(k, in);
  // Enough rows per task to amortise scheduling on small images.
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, out.w * out.c));

  at::parallel_for(0, out.n * out.h, grain, [&](int64_t begin, int64_t end) {
    std::vector<PixelTaps<T>> taps(out.w);
    std::vector<int64_t> origin(out.w);
    Bilinear<T> unused;
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / out.h, h = r % out.h;
      const Affine<T> a = affine_of<T, scalar_t>(theta, n);
      const T base_y = base_coord<T>(h, out.h, align_corners);
      for (int64_t w = 0; w < out.w; ++w) {
        taps[w] = resolve_taps<kMode>(source_point(a, base_x[w], base_y, in.h, in.w, cfg), in,
                                      &unused);
        origin[w] = taps[w].origin(in);
      }
      for (int64_t c = 0; c < out.c; ++c) {
        const scalar_t* src = in_ptr + n * in.sn + c * in.sc;
        scalar_t* dst = out_ptr + n * out.sn + c * out.sc + h * out.sh;
        for (int64_t w = 0; w < out.w; ++w) {
          const PixelTaps<T>& t = taps[w];
          const scalar_t* s = src + origin[w];
          T acc = T(0);
          if (kTaps == 4 && t.inside == 0xFu) {  // the common case: no tap in the padding
            acc = t.weight[0] * T(s[0]) + t.weight[1] * T(s[delta[1]]) +
                  t.weight[2] * T(s[delta[2]]) + t.weight[3] * T(s[delta[3]]);
          } else {
            for (int k = 0; k < kTaps; ++k) {
              if (t.is_inside(k)) acc += t.weight[k] * T(s[delta[k]]);
            }
          }
          dst[w * out.sw] = static_cast<scalar_t>(acc);
        }
      }
    }
  });
}

// Work units of the backward pass are (image, channel group): each writes only its own slice
// of grad_input and its own theta partial, and the partials are summed in a fixed order.
// The split depends on the shape alone, so results do not depend on the thread count.
int64_t channel_groups(int64_t batch, int64_t channels) {
  constexpr int64_t kMinUnits = 8;
  return batch >= kMinUnits ? 1 : std::max<int64_t>(1, std::min(channels, kMinUnits));
}

// One channel's share of the backward pass along one output row: scatters the bilinear weights
// times grad_output into grad_input and adds the channel's d(loss)/d(ix, iy) to g_ix, g_iy.
// Templated on which gradients are wanted so the per-pixel loop has no loop-invariant branches.
template <bool kGradInput, bool kGradTheta, int kTaps, typename T, typename scalar_t,
          typename grad_in_t>
inline void backward_channel_row(int64_t width, const PixelTaps<T>* taps,
                                 const int64_t* in_origin, const int64_t* gin_origin,
                                 const Bilinear<T>* stencil, const scalar_t* go,
                                 int64_t go_stride, const scalar_t* src, grad_in_t* dst,
                                 const int64_t* in_delta, const int64_t* gin_delta, T* g_ix,
                                 T* g_iy) {
  for (int64_t w = 0; w < width; ++w) {
    const PixelTaps<T>& t = taps[w];
    if (t.inside == 0u) continue;
    const T g = T(go[w * go_stride]);
    const bool all_inside = kTaps == 4 && t.inside == 0xFu;  // the common case
    if constexpr (kGradInput) {
      grad_in_t* d = dst + gin_origin[w];
      if (all_inside) {
        for (int k = 0; k < 4; ++k) d[gin_delta[k]] += static_cast<grad_in_t>(t.weight[k] * g);
      } else {
        for (int k = 0; k < kTaps; ++k) {
          if (t.is_inside(k)) d[gin_delta[k]] += static_cast<grad_in_t>(t.weight[k] * g);
        }
      }
    }
    if constexpr (kGradTheta) {
      const scalar_t* s = src + in_origin[w];
      T v[4];
      if (all_inside) {
        for (int k = 0; k < 4; ++k) v[k] = T(s[in_delta[k]]);
      } else {
        for (int k = 0; k < 4; ++k) v[k] = t.is_inside(k) ? T(s[in_delta[k]]) : T(0);
      }
      T d_ix, d_iy;
      bilinear_coord_grad(stencil[w], v[0], v[1], v[2], v[3], &d_ix, &d_iy);
      g_ix[w] += g * d_ix;
      g_iy[w] += g * d_iy;
    }
  }
}

// grad_in_t is the opmath type: float for float and reduced-precision inputs (accumulating in
// half would lose gradient mass; the caller casts back), double for double.
template <Interpolation kMode, Padding kPadding, bool kGradInput, bool kGradTheta,
          typename scalar_t, typename grad_in_t>
void backward_kernel(const at::Tensor& grad_output, const at::Tensor& input,
                     const at::Tensor& theta, bool align_corners, grad_in_t* grad_in_ptr,
                     const Geometry& gin, double* theta_partials, int64_t groups) {
  using T = at::opmath_type<scalar_t>;
  constexpr int kTaps = kMode == Interpolation::Bilinear ? 4 : 1;
  const SampleConfig cfg{kMode, kPadding, align_corners};
  const Geometry in(input), gout(grad_output);
  const scalar_t* in_ptr = input.const_data_ptr<scalar_t>();
  const scalar_t* gout_ptr = grad_output.const_data_ptr<scalar_t>();
  const std::vector<T> base_x = base_coords<T>(gout.w, align_corners);
  const int64_t group_size = (in.c + groups - 1) / groups;
  int64_t in_delta[4], gin_delta[4];
  for (int k = 0; k < 4; ++k) {
    in_delta[k] = PixelTaps<T>::delta(k, in);
    gin_delta[k] = PixelTaps<T>::delta(k, gin);
  }

  at::parallel_for(0, in.n * groups, 1, [&](int64_t begin, int64_t end) {
    // Per pixel of the current row: taps, their offsets in input and grad_input planes, the
    // bilinear neighbourhood, d(pixel)/d(grid), and the coordinate gradient summed over the
    // unit's channels.
    std::vector<PixelTaps<T>> taps(gout.w);
    std::vector<int64_t> in_origin(gout.w), gin_origin(gout.w);
    std::vector<Bilinear<T>> stencil(gout.w);
    std::vector<T> dix(gout.w), diy(gout.w), g_ix(gout.w), g_iy(gout.w);
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t n = unit / groups;
      const int64_t c_begin = (unit % groups) * group_size;
      const int64_t c_end = std::min(in.c, c_begin + group_size);
      const Affine<T> a = affine_of<T, scalar_t>(theta, n);
      ThetaGrad<double> tg{};
      for (int64_t h = 0; h < gout.h; ++h) {
        const T base_y = base_coord<T>(h, gout.h, align_corners);
        for (int64_t w = 0; w < gout.w; ++w) {
          const SourcePoint<T> p = source_point(a, base_x[w], base_y, in.h, in.w, cfg);
          taps[w] = resolve_taps<kMode>(p, in, &stencil[w]);
          in_origin[w] = taps[w].origin(in);
          gin_origin[w] = taps[w].origin(gin);
          dix[w] = p.dix;
          diy[w] = p.diy;
          g_ix[w] = g_iy[w] = T(0);
        }
        for (int64_t c = c_begin; c < c_end; ++c) {
          backward_channel_row<kGradInput, kGradTheta, kTaps>(
              gout.w, taps.data(), in_origin.data(), gin_origin.data(), stencil.data(),
              gout_ptr + n * gout.sn + c * gout.sc + h * gout.sh, gout.sw,
              in_ptr + n * in.sn + c * in.sc,
              kGradInput ? grad_in_ptr + n * gin.sn + c * gin.sc : nullptr, in_delta, gin_delta,
              g_ix.data(), g_iy.data());
        }
        if constexpr (kGradTheta) {
          for (int64_t w = 0; w < gout.w; ++w) {
            tg.add(double(g_ix[w] * dix[w]), double(g_iy[w] * diy[w]), double(base_x[w]),
                   double(base_y));
          }
        }
      }
      if (theta_partials != nullptr) std::copy(tg.g, tg.g + 6, theta_partials + unit * 6);
    }
  });
}

at::Tensor affine_grid_sample_cpu(const at::Tensor& input, const at::Tensor& theta, int64_t out_h,
                                  int64_t out_w, c10::string_view mode,
                                  c10::string_view padding_mode, bool align_corners) {
  check_sample_args(input, theta, out_h, out_w);
  const SampleConfig cfg = parse_config(std::string(mode), std::string(padding_mode), align_corners);
  at::Tensor output = at::empty({input.size(0), input.size(1), out_h, out_w},
                                input.options().memory_format(output_memory_format(input)));
  if (output.numel() == 0) return output;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "affine_grid_sample_cpu", [&] {
        with_static_config(cfg, [&](auto mode, auto padding) {
          forward_kernel<decltype(mode)::value, decltype(padding)::value, scalar_t>(
              input, theta, output, align_corners);
        });
      });
  return output;
}

std::tuple<at::Tensor, at::Tensor> affine_grid_sample_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& theta,
    c10::string_view mode, c10::string_view padding_mode, bool align_corners,
    std::array<bool, 2> output_mask) {
  check_backward_args(grad_output, input, theta);
  const SampleConfig cfg = parse_config(std::string(mode), std::string(padding_mode), align_corners);

  // Accumulated in the opmath type (float for half and bfloat16), cast back at the end.
  at::Tensor grad_input_acc = output_mask[0]
      ? at::zeros_like(input, input.options().dtype(at::toOpMathType(input.scalar_type())),
                       output_memory_format(input))
      : at::empty({0}, input.options());
  const int64_t groups = channel_groups(input.size(0), input.size(1));
  std::vector<double> partials(output_mask[1] ? input.size(0) * groups * 6 : 0, 0.0);

  if (grad_output.numel() > 0 && input.size(1) > 0) {
    const Geometry gin = output_mask[0] ? Geometry(grad_input_acc) : Geometry(input);
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, input.scalar_type(), "affine_grid_sample_backward_cpu", [&] {
          using grad_in_t = at::opmath_type<scalar_t>;
          double* theta_out = output_mask[1] ? partials.data() : nullptr;
          grad_in_t* grad_in = output_mask[0] ? grad_input_acc.mutable_data_ptr<grad_in_t>() : nullptr;
          // Nearest sampling has zero theta gradient: only its partials' zeros are written.
          const bool theta_work = theta_out != nullptr && cfg.mode == Interpolation::Bilinear;
          with_static_config(cfg, [&](auto mode, auto padding) {
            constexpr Interpolation kMode = decltype(mode)::value;
            constexpr Padding kPadding = decltype(padding)::value;
            auto run = [&](auto grad_input_wanted, auto theta_wanted) {
              backward_kernel<kMode, kPadding, decltype(grad_input_wanted)::value,
                              decltype(theta_wanted)::value, scalar_t, grad_in_t>(
                  grad_output, input, theta, align_corners, grad_in, gin, theta_out, groups);
            };
            using Yes = std::true_type;
            using No = std::false_type;
            if (grad_in != nullptr && theta_work) run(Yes{}, Yes{});
            else if (grad_in != nullptr) run(Yes{}, No{});
            else if (theta_work) run(No{}, Yes{});
          });
        });
  }

  at::Tensor grad_input = grad_input_acc.to(input.scalar_type());  // no copy when already so
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

}  // namespace

TORCH_LIBRARY_IMPL(stn_ext, CPU, m) {
  m.impl("affine_grid_sample", &affine_grid_sample_cpu);
  m.impl("affine_grid_sample_backward", &affine_grid_sample_backward_cpu);
}

}  // namespace stn_ext
