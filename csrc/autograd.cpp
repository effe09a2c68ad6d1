// Backward formulas of the fused ops, on the Autograd dispatch key so that
// gradient recording costs no Python. Every op is linear in y0 and the stages,
// so each backward is a weighted copy of the incoming gradient; it is written
// with ATen ops so that fake-tensor tracing (torch.compile, opcheck) sees it.
//
// The graph nodes are plain autograd Nodes holding their weights as members (as
// PyTorch's generated *Backward nodes do), not torch::autograd::Function's, whose
// context dictionary and bookkeeping cost more than the fused op itself on small states.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/library.h>

#include <memory>
#include <string>
#include <type_traits>
#include <utility>

#include "odecore/ops.h"

namespace odecore {
namespace {

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

using torch::autograd::Node;
// How the installed torch holds graph nodes: std::shared_ptr (older) or c10::intrusive_ptr.
using NodePtr = decltype(torch::autograd::Edge::function);

template <typename T>
NodePtr make_node() {
  if constexpr (std::is_same_v<NodePtr, std::shared_ptr<Node>>) {
    return std::make_shared<T>();
  } else {
    return c10::make_intrusive<T>();
  }
}

// The node of y = y0 + sum_j w[j] * k[j] (rk_stage, and rk_finish's solution): next edges
// y0, k[0], k[1], ...
struct CombinationBackward : Node {
  std::vector<double> w;
  const char* op = "";

  variable_list apply(variable_list&& grad) override {
    variable_list out;
    append_combination_grads(out, grad[0], w);
    return out;
  }
  std::string name() const override { return op; }
};

// The node of rk_interp: next edges y0, k[0], k[1], ...
struct InterpBackward : Node {
  std::vector<double> poly, x;
  double dt = 0.0;
  int64_t m = 0;

  variable_list apply(variable_list&& grad) override {
    const at::Tensor& g = grad[0];
    variable_list out;
    if (!g.defined() || x.empty()) {
      out.emplace_back(g.defined() ? g.sum(0) : at::Tensor());
      out.resize(1 + m);
      return out;
    }
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
    return out;
  }
  std::string name() const override { return "odecore::rk_interp_backward"; }
};

// Records `out` as computed from y0 and k by `node`.
void record(const at::Tensor& out, const NodePtr& node, const at::Tensor& y0, at::TensorList k) {
  node->set_next_edges(torch::autograd::collect_next_edges(y0, k));
  torch::autograd::set_history(out, node);
}

NodePtr combination_node(const char* op, at::ArrayRef<double> coeffs, double dt) {
  NodePtr node = make_node<CombinationBackward>();
  auto* n = static_cast<CombinationBackward*>(node.get());
  n->w = scaled_weights(coeffs, dt);
  n->op = op;
  return node;
}

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
  at::Tensor out;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    out = stage_op().call(y0, k, a, dt);
  }
  record(out, combination_node("odecore::rk_stage_backward", a, dt), y0, k);
  return out;
}

std::tuple<at::Tensor, at::Tensor> rk_finish_autograd(const at::Tensor& y0, at::TensorList k,
                                                      at::ArrayRef<double> b, at::ArrayRef<double> e,
                                                      double dt, const at::Tensor& rtol,
                                                      const at::Tensor& atol, at::IntArrayRef segments) {
  if (!records_grad(y0, k)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return finish_op().call(y0, k, b, e, dt, rtol, atol, segments);
  }
  std::tuple<at::Tensor, at::Tensor> out;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    out = finish_op().call(y0, k, b, e, dt, rtol, atol, segments);
  }
  // the error ratio only steers the step size: no history, no gradient
  record(std::get<0>(out), combination_node("odecore::rk_finish_backward", b, dt), y0, k);
  return out;
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
  at::Tensor out;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    out = interp_op().call(y0, k, poly, dt, x);
  }
  NodePtr node = make_node<InterpBackward>();
  auto* n = static_cast<InterpBackward*>(node.get());
  n->poly = poly.vec();
  n->x = x.vec();
  n->dt = dt;
  n->m = static_cast<int64_t>(k.size());
  record(out, node, y0, k);
  return out;
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
