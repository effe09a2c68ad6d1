// The Python module odecore._C. Importing it registers the ops (torch.ops.odecore.*);
// it also exposes each op as a direct function, which enters the same dispatcher
// (autograd, CPU/CUDA kernels) without the boxed argument conversion of torch.ops:
// the solver loop calls these, a few microseconds less per op.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/utils/pybind.h>
#include <pybind11/stl.h>

#include <string>
#include <tuple>
#include <vector>

#ifndef ODECORE_TORCH_VERSION
#define ODECORE_TORCH_VERSION "unknown"
#endif

namespace {

using TensorVec = std::vector<at::Tensor>;
using DoubleVec = std::vector<double>;

c10::OperatorHandle op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
}

at::Tensor rk_stage(const at::Tensor& y0, const TensorVec& k, const DoubleVec& a, double dt) {
  static auto h = op("odecore::rk_stage").typed<at::Tensor(const at::Tensor&, at::TensorList, at::ArrayRef<double>, double)>();
  return h.call(y0, k, a, dt);
}

std::tuple<at::Tensor, at::Tensor> rk_finish(const at::Tensor& y0, const TensorVec& k, const DoubleVec& b,
                                             const DoubleVec& e, double dt, const at::Tensor& rtol,
                                             const at::Tensor& atol, const std::vector<int64_t>& segments) {
  static auto h = op("odecore::rk_finish")
                      .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, at::TensorList, at::ArrayRef<double>,
                                                                at::ArrayRef<double>, double, const at::Tensor&,
                                                                const at::Tensor&, at::IntArrayRef)>();
  return h.call(y0, k, b, e, dt, rtol, atol, segments);
}

at::Tensor rk_error_ratio(const at::Tensor& y0, const at::Tensor& y1, const TensorVec& k, const DoubleVec& e, double dt,
                          const at::Tensor& rtol, const at::Tensor& atol, const std::vector<int64_t>& segments) {
  static auto h = op("odecore::rk_error_ratio")
                      .typed<at::Tensor(const at::Tensor&, const at::Tensor&, at::TensorList, at::ArrayRef<double>,
                                        double, const at::Tensor&, const at::Tensor&, at::IntArrayRef)>();
  return h.call(y0, y1, k, e, dt, rtol, atol, segments);
}

at::Tensor rk_interp(const at::Tensor& y0, const TensorVec& k, const DoubleVec& poly, double dt, const DoubleVec& x) {
  static auto h = op("odecore::rk_interp")
                      .typed<at::Tensor(const at::Tensor&, at::TensorList, at::ArrayRef<double>, double,
                                        at::ArrayRef<double>)>();
  return h.call(y0, k, poly, dt, x);
}

at::Tensor rk_stage_dt(const at::Tensor& y0, const TensorVec& k, const DoubleVec& a, const at::Tensor& dt) {
  static auto h = op("odecore::rk_stage_dt")
                      .typed<at::Tensor(const at::Tensor&, at::TensorList, at::ArrayRef<double>, const at::Tensor&)>();
  return h.call(y0, k, a, dt);
}

std::tuple<at::Tensor, at::Tensor> rk_finish_dt(const at::Tensor& y0, const TensorVec& k, const DoubleVec& b,
                                                const DoubleVec& e, const at::Tensor& dt, const at::Tensor& rtol,
                                                const at::Tensor& atol, const std::vector<int64_t>& segments) {
  static auto h = op("odecore::rk_finish_dt")
                      .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, at::TensorList, at::ArrayRef<double>,
                                                                at::ArrayRef<double>, const at::Tensor&, const at::Tensor&,
                                                                const at::Tensor&, at::IntArrayRef)>();
  return h.call(y0, k, b, e, dt, rtol, atol, segments);
}

at::Tensor rk_error_ratio_dt(const at::Tensor& y0, const at::Tensor& y1, const TensorVec& k, const DoubleVec& e,
                             const at::Tensor& dt, const at::Tensor& rtol, const at::Tensor& atol,
                             const std::vector<int64_t>& segments) {
  static auto h = op("odecore::rk_error_ratio_dt")
                      .typed<at::Tensor(const at::Tensor&, const at::Tensor&, at::TensorList, at::ArrayRef<double>,
                                        const at::Tensor&, const at::Tensor&, const at::Tensor&, at::IntArrayRef)>();
  return h.call(y0, y1, k, e, dt, rtol, atol, segments);
}

void rk_control(const at::Tensor& state, const at::Tensor& accept, const at::Tensor& stage_t, const at::Tensor& dt,
                const at::Tensor& ratio, const at::Tensor& times, const DoubleVec& c, const DoubleVec& params) {
  static auto h = op("odecore::rk_control")
                      .typed<void(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                  const at::Tensor&, const at::Tensor&, at::ArrayRef<double>, at::ArrayRef<double>)>();
  h.call(state, accept, stage_t, dt, ratio, times, c, params);
}

void rk_dense_into(const at::Tensor& out, const at::Tensor& times, const at::Tensor& state, const at::Tensor& y0,
                   const at::Tensor& y1, const TensorVec& k, const DoubleVec& poly) {
  static auto h = op("odecore::rk_dense_into")
                      .typed<void(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                  const at::Tensor&, at::TensorList, at::ArrayRef<double>)>();
  h.call(out, times, state, y0, y1, k, poly);
}

at::Tensor rk_initial_dt(const at::Tensor& h0, const at::Tensor& d1, const at::Tensor& d2, double order, double round_f32) {
  static auto h = op("odecore::rk_initial_dt")
                      .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, double, double)>();
  return h.call(h0, d1, d2, order, round_f32);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "odecore's compiled kernels; the ops are torch.ops.odecore.*";
  m.attr("with_cpu") = true;
#ifdef ODECORE_WITH_CUDA
  m.attr("with_cuda") = true;
  m.attr("cuda_version") = std::string(ODECORE_CUDA_VERSION);
#else
  m.attr("with_cuda") = false;
  m.attr("cuda_version") = pybind11::none();
#endif
  m.attr("torch_version") = std::string(ODECORE_TORCH_VERSION);
  m.def("rk_stage", &rk_stage, "y0 + dt * sum_j a[j] * k[j]");
  m.def("rk_finish", &rk_finish, "(y1, error ratio)");
  m.def("rk_error_ratio", &rk_error_ratio, "error ratio for a known y1");
  m.def("rk_interp", &rk_interp, "dense output at fractions x of the step");
  m.def("rk_stage_dt", &rk_stage_dt, "rk_stage with dt a float64 tensor");
  m.def("rk_finish_dt", &rk_finish_dt, "rk_finish with dt a float64 tensor");
  m.def("rk_error_ratio_dt", &rk_error_ratio_dt, "rk_error_ratio with dt a float64 tensor");
  m.def("rk_control", &rk_control, "device-resident step control (in place)");
  m.def("rk_initial_dt", &rk_initial_dt, "min(100 h0, h1) of the initial step, elementwise");
  m.def("rk_dense_into", &rk_dense_into, "dense output of an accepted step into its output rows (in place)");
}
