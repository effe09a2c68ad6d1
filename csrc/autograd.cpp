// Backward formulas of the fused ops, on the Autograd dispatch key so that
// gradient recording costs no Python. Every op is linear in y0 and the stages,
// so each backward is a weighted copy of the incoming gradient; it is written
// with ATen ops so that fake-tensor tracing (torch.compile, opcheck) sees it.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "odecore/ops.h"

namespace odecore {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

const auto& stage_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("odecore::rk_stage", "")
                       .typed<at::Tensor(const at::Tensor&, at::TensorList, at::ArrayRef<double>, double)>();
  return op;
}

const auto& finish_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("odecore::rk_finish", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(
                           const at::Tensor&, at::TensorList, at::ArrayRef<double>, at::ArrayRef<double>,
                           double, const at::Tensor&, const at::Tensor&, at::IntArrayRef)>();
  return op;
}

const auto& error_ratio_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("odecore::rk_error_ratio", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, at::TensorList,
                                         at::ArrayRef<double>, double, const at::Tensor&,
                                         const at::Tensor&, at::IntArrayRef)>();
  return op;
}

const auto& interp_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("odecore::rk_interp", "")
                       .typed<at::Tensor(const at::Tensor&, at::TensorList, at::ArrayRef<double>, double,
                                         at::ArrayRef<double>)>();
  return op;
}

// Gradients of y0 + sum_j w[j] * k[j] for y0 and every k[j]; zero weights give
// an undefined (zero) gradient instead of a tensor of zeros.
void append_combination_grads(variable_list& out, const at::Tensor& grad, const std::vector<double>& w) {
  out.push_back(grad);
  for (const double wj : w) {
    out.push_back(wj == 0.0 || !grad.defined() ? at::Tensor() : grad.mul(wj));
  }
}

class RkStage : public torch::autograd::Function<RkStage> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& y0, at::TensorList k,
                            at::ArrayRef<double> a, double dt) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->saved_data["w"] = scaled_weights(a, dt);
    return stage_op().call(y0, k, a, dt);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    variable_list out;
    append_combination_grads(out, grad[0], ctx->saved_data["w"].toDoubleVector());
    out.emplace_back();  // a
    out.emplace_back();  // dt
    return out;
  }
};

class RkFinish : public torch::autograd::Function<RkFinish> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& y0, at::TensorList k,
                               at::ArrayRef<double> b, at::ArrayRef<double> e, double dt,
                               const at::Tensor& rtol, const at::Tensor& atol,
                               at::IntArrayRef segments) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->saved_data["w"] = scaled_weights(b, dt);
    auto [y1, ratio] = finish_op().call(y0, k, b, e, dt, rtol, atol, segments);
    ctx->mark_non_differentiable({ratio});
    return {y1, ratio};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    variable_list out;
    append_combination_grads(out, grad[0], ctx->saved_data["w"].toDoubleVector());
    for (int i = 0; i < 6; ++i) {
      out.emplace_back();  // b, e, dt, rtol, atol, segments
    }
    return out;
  }
};

class RkInterp : public torch::autograd::Function<RkInterp> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& y0, at::TensorList k,
                            at::ArrayRef<double> poly, double dt, at::ArrayRef<double> x) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->saved_data["poly"] = poly.vec();
    ctx->saved_data["dt"] = dt;
    ctx->saved_data["x"] = x.vec();
    ctx->saved_data["m"] = static_cast<int64_t>(k.size());
    return interp_op().call(y0, k, poly, dt, x);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    const auto poly = ctx->saved_data["poly"].toDoubleVector();
    const double dt = ctx->saved_data["dt"].toDouble();
    const auto x = ctx->saved_data["x"].toDoubleVector();
    const int64_t m = ctx->saved_data["m"].toInt();
    const at::Tensor& g = grad[0];
    variable_list out;
    if (!g.defined() || x.empty()) {
      out.emplace_back(g.defined() ? g.sum(0) : at::Tensor());
      for (int64_t j = 0; j < m; ++j) {
        out.emplace_back();
      }
    } else {
      out.push_back(g.sum(0));
      std::vector<at::Tensor> gk(m);
      for (size_t p = 0; p < x.size(); ++p) {
        const auto w = dense_weights(poly, m, x[p], dt);
        const auto gp = g.select(0, static_cast<int64_t>(p));
        for (int64_t j = 0; j < m; ++j) {
          gk[j] = gk[j].defined() ? gk[j].add(gp, w[j]) : gp.mul(w[j]);
        }
      }
      out.insert(out.end(), gk.begin(), gk.end());
    }
    out.emplace_back();  // poly
    out.emplace_back();  // dt
    out.emplace_back();  // x
    return out;
  }
};

// Whether the call must be recorded; when not, the op goes straight to its kernel
// without building a graph node (a third of the cost of a small op).
bool records_grad(const at::Tensor& y0, at::TensorList k) {
  if (!at::GradMode::is_enabled()) {
    return false;
  }
  if (y0.requires_grad()) {
    return true;
  }
  for (const auto& t : k) {
    if (t.requires_grad()) {
      return true;
    }
  }
  return false;
}

at::Tensor rk_stage_autograd(const at::Tensor& y0, at::TensorList k, at::ArrayRef<double> a, double dt) {
  if (!records_grad(y0, k)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return stage_op().call(y0, k, a, dt);
  }
  return RkStage::apply(y0, k, a, dt);
}

std::tuple<at::Tensor, at::Tensor> rk_finish_autograd(const at::Tensor& y0, at::TensorList k,
                                                      at::ArrayRef<double> b, at::ArrayRef<double> e,
                                                      double dt, const at::Tensor& rtol,
                                                      const at::Tensor& atol, at::IntArrayRef segments) {
  if (!records_grad(y0, k)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return finish_op().call(y0, k, b, e, dt, rtol, atol, segments);
  }
  auto out = RkFinish::apply(y0, k, b, e, dt, rtol, atol, segments);
  return {out[0], out[1]};
}

// The error ratio only steers the step size: it has no gradient.
at::Tensor rk_error_ratio_autograd(const at::Tensor& y0, const at::Tensor& y1, at::TensorList k,
                                   at::ArrayRef<double> e, double dt, const at::Tensor& rtol,
                                   const at::Tensor& atol, at::IntArrayRef segments) {
  at::AutoDispatchBelowADInplaceOrView guard;
  return error_ratio_op().call(y0, y1, k, e, dt, rtol, atol, segments);
}

at::Tensor rk_interp_autograd(const at::Tensor& y0, at::TensorList k, at::ArrayRef<double> poly,
                              double dt, at::ArrayRef<double> x) {
  if (!records_grad(y0, k)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return interp_op().call(y0, k, poly, dt, x);
  }
  return RkInterp::apply(y0, k, poly, dt, x);
}

}  // namespace

TORCH_LIBRARY_IMPL(odecore, Autograd, m) {
  m.impl("rk_stage", &rk_stage_autograd);
  m.impl("rk_finish", &rk_finish_autograd);
  m.impl("rk_error_ratio", &rk_error_ratio_autograd);
  m.impl("rk_interp", &rk_interp_autograd);
  // The device loop's ops run only where nothing records gradients: differentiating
  // through them raises "derivative for odecore::<op> is not implemented" instead of
  // silently giving no gradient.
  m.impl("rk_stage_dt", torch::autograd::autogradNotImplementedFallback());
  m.impl("rk_finish_dt", torch::autograd::autogradNotImplementedFallback());
  m.impl("rk_error_ratio_dt", torch::autograd::autogradNotImplementedFallback());
  m.impl("rk_initial_dt", torch::autograd::autogradNotImplementedFallback());
}

}  // namespace odecore
