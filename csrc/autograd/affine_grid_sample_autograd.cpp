// Autograd of stn_ext::affine_grid_sample, for every device: a C++ autograd::Function whose
// backward calls stn_ext::affine_grid_sample_backward for just the gradients that are needed.
// (Registered in C++ rather than with torch.library.register_autograd: the Python autograd
// path cost ~60 us per forward + backward, 4% of the op's whole time at the CIFAR STN's shape.)
#include <torch/autograd.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

namespace stn_ext {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor call_forward(const at::Tensor& input, const at::Tensor& theta, c10::SymInt out_h,
                        c10::SymInt out_w, c10::string_view mode, c10::string_view padding_mode,
                        bool align_corners) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("stn_ext::affine_grid_sample", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::SymInt,
                                               c10::SymInt, c10::string_view, c10::string_view,
                                               bool)>();
  return op.call(input, theta, std::move(out_h), std::move(out_w), mode, padding_mode,
                 align_corners);
}

std::tuple<at::Tensor, at::Tensor> call_backward(const at::Tensor& grad_output,
                                                 const at::Tensor& input, const at::Tensor& theta,
                                                 c10::string_view mode,
                                                 c10::string_view padding_mode, bool align_corners,
                                                 std::array<bool, 2> output_mask) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("stn_ext::affine_grid_sample_backward", "")
          .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                    const at::Tensor&, c10::string_view,
                                                    c10::string_view, bool, std::array<bool, 2>)>();
  return op.call(grad_output, input, theta, mode, padding_mode, align_corners, output_mask);
}

class AffineGridSample : public torch::autograd::Function<AffineGridSample> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& theta,
                            c10::SymInt out_h, c10::SymInt out_w, c10::string_view mode,
                            c10::string_view padding_mode, bool align_corners) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->save_for_backward({input, theta});
    ctx->saved_data["mode"] = std::string(mode);
    ctx->saved_data["padding_mode"] = std::string(padding_mode);
    ctx->saved_data["align_corners"] = align_corners;
    return call_forward(input, theta, std::move(out_h), std::move(out_w), mode, padding_mode,
                        align_corners);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const bool need_input = ctx->needs_input_grad(0), need_theta = ctx->needs_input_grad(1);
    auto [grad_input, grad_theta] = call_backward(
        grad_outputs[0], saved[0], saved[1], ctx->saved_data["mode"].toStringRef(),
        ctx->saved_data["padding_mode"].toStringRef(), ctx->saved_data["align_corners"].toBool(),
        {need_input, need_theta});
    // One entry per forward argument; the five after input and theta take no gradient.
    return {need_input ? grad_input : at::Tensor(), need_theta ? grad_theta : at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor affine_grid_sample_autograd(const at::Tensor& input, const at::Tensor& theta,
                                       c10::SymInt out_h, c10::SymInt out_w,
                                       c10::string_view mode, c10::string_view padding_mode,
                                       bool align_corners) {
  return AffineGridSample::apply(input, theta, std::move(out_h), std::move(out_w), mode,
                                 padding_mode, align_corners);
}

}  // namespace

TORCH_LIBRARY_IMPL(stn_ext, Autograd, m) {
  m.impl("affine_grid_sample", TORCH_FN(affine_grid_sample_autograd));
  // Differentiating the backward (double backward) raises instead of giving silent zeros.
  m.impl("affine_grid_sample_backward", torch::autograd::autogradNotImplementedFallback());
}

}  // namespace stn_ext
