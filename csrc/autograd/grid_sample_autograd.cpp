// Autograd of the general ops, stn_ext::grid_sample and stn_ext::affine_sample, for every device:
// C++ autograd::Functions whose backward calls the op's backward for just the gradients that are
// needed; gradients go to the input and to its coordinates (grid or theta), none to the options
// or the fill value. (In C++ for the reason the fused op's autograd is: the Python autograd path
// costs more than a small call's kernels.)
#include <torch/autograd.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

namespace stn_ext {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptionalTensor = c10::optional<at::Tensor>;

// The backward op both general ops share the signature of (qualname: "stn_ext::<op>_backward").
using BackwardSignature = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, c10::string_view, c10::string_view,
    bool, const OptionalTensor&, std::array<bool, 2>);

// The dispatcher's handle of op `qualname` ("stn_ext::<name>") with C++ signature Signature.
template <typename Signature>
c10::TypedOperatorHandle<Signature> typed_op(const char* qualname) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(qualname, "").typed<Signature>();
}

// What both ops save in the forward pass: input, its coordinates, the fill value (undefined for
// None) and the options.
void save_for_backward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& coords,
                       const OptionalTensor& fill_value, c10::string_view mode,
                       c10::string_view padding_mode, bool align_corners) {
  ctx->save_for_backward({input, coords, fill_value.value_or(at::Tensor())});
  ctx->saved_data["mode"] = std::string(mode);
  ctx->saved_data["padding_mode"] = std::string(padding_mode);
  ctx->saved_data["align_corners"] = align_corners;
}

// The gradients of input and coords (undefined where not needed), then `options` undefined ones
// for the forward's other arguments.
variable_list sample_backward(const c10::TypedOperatorHandle<BackwardSignature>& backward_op,
                              AutogradContext* ctx, const variable_list& grad_outputs,
                              size_t options) {
  const variable_list saved = ctx->get_saved_variables();
  const bool need_input = ctx->needs_input_grad(0), need_coords = ctx->needs_input_grad(1);
  const OptionalTensor fill = saved[2].defined() ? OptionalTensor(saved[2]) : c10::nullopt;
  auto [grad_input, grad_coords] = backward_op.call(
      grad_outputs[0], saved[0], saved[1], ctx->saved_data["mode"].toStringRef(),
      ctx->saved_data["padding_mode"].toStringRef(), ctx->saved_data["align_corners"].toBool(),
      fill, {need_input, need_coords});
  variable_list grads(2 + options);
  grads[0] = need_input ? grad_input : at::Tensor();
  grads[1] = need_coords ? grad_coords : at::Tensor();
  return grads;
}

class GridSample : public torch::autograd::Function<GridSample> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& grid,
                            c10::string_view mode, c10::string_view padding_mode,
                            bool align_corners, const OptionalTensor& fill_value) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    save_for_backward(ctx, input, grid, fill_value, mode, padding_mode, align_corners);
    static const auto op =
        typed_op<at::Tensor(const at::Tensor&, const at::Tensor&, c10::string_view,
                            c10::string_view, bool, const OptionalTensor&)>("stn_ext::grid_sample");
    return op.call(input, grid, mode, padding_mode, align_corners, fill_value);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    static const auto op = typed_op<BackwardSignature>("stn_ext::grid_sample_backward");
    return sample_backward(op, ctx, grad_outputs, /*options=*/4);
  }
};

class AffineSample : public torch::autograd::Function<AffineSample> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input,
                            const at::Tensor& theta, c10::SymIntArrayRef out_size,
                            c10::string_view mode, c10::string_view padding_mode,
                            bool align_corners, const OptionalTensor& fill_value) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    save_for_backward(ctx, input, theta, fill_value, mode, padding_mode, align_corners);
    static const auto op = typed_op<at::Tensor(
        const at::Tensor&, const at::Tensor&, c10::SymIntArrayRef, c10::string_view,
        c10::string_view, bool, const OptionalTensor&)>("stn_ext::affine_sample");
    return op.call(input, theta, out_size, mode, padding_mode, align_corners, fill_value);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    static const auto op = typed_op<BackwardSignature>("stn_ext::affine_sample_backward");
    return sample_backward(op, ctx, grad_outputs, /*options=*/5);
  }
};

at::Tensor grid_sample_autograd(const at::Tensor& input, const at::Tensor& grid,
                                c10::string_view mode, c10::string_view padding_mode,
                                bool align_corners, const OptionalTensor& fill_value) {
  return GridSample::apply(input, grid, mode, padding_mode, align_corners, fill_value);
}

at::Tensor affine_sample_autograd(const at::Tensor& input, const at::Tensor& theta,
                                  c10::SymIntArrayRef out_size, c10::string_view mode,
                                  c10::string_view padding_mode, bool align_corners,
                                  const OptionalTensor& fill_value) {
  return AffineSample::apply(input, theta, out_size, mode, padding_mode, align_corners,
                             fill_value);
}

}  // namespace

TORCH_LIBRARY_IMPL(stn_ext, Autograd, m) {
  m.impl("grid_sample", TORCH_FN(grid_sample_autograd));
  m.impl("affine_sample", TORCH_FN(affine_sample_autograd));
  // Differentiating the backward (double backward) raises instead of giving silent zeros.
  m.impl("grid_sample_backward", torch::autograd::autogradNotImplementedFallback());
  m.impl("affine_sample_backward", torch::autograd::autogradNotImplementedFallback());
}

}  // namespace stn_ext
