// Direct entry points of the fused ops: each enters the dispatcher (autograd, CPU/CUDA
// kernels, Python dispatch modes) through a typed handle, without the boxed argument
// conversion of torch.ops. Used by the Python module (odecore._C.rk_*) and by the compiled
// host loop (host_loop.cpp).
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdint>
#include <tuple>
#include <vector>

namespace odecore {
namespace direct {

using TensorVec = std::vector<at::Tensor>;
using DoubleVec = std::vector<double>;

inline c10::OperatorHandle op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
}

inline at::Tensor rk_stage(const at::Tensor& y0, const TensorVec& k, const DoubleVec& a, double dt) {
  static auto h = op("odecore::rk_stage").typed<at::Tensor(const at::Tensor&, at::TensorList, at::ArrayRef<double>, double)>();
  return h.call(y0, k, a, dt);
}

inline std::tuple<at::Tensor, at::Tensor> rk_finish(const at::Tensor& y0, const TensorVec& k, const DoubleVec& b,
                                             const DoubleVec& e, double dt, const at::Tensor& rtol,
                                             const at::Tensor& atol, const std::vector<int64_t>& segments) {
  static auto h = op("odecore::rk_finish")
                      .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, at::TensorList, at::ArrayRef<double>,
                                                                at::ArrayRef<double>, double, const at::Tensor&,
                                                                const at::Tensor&, at::IntArrayRef)>();
  return h.call(y0, k, b, e, dt, rtol, atol, segments);
}

inline at::Tensor rk_error_ratio(const at::Tensor& y0, const at::Tensor& y1, const TensorVec& k, const DoubleVec& e, double dt,
                          const at::Tensor& rtol, const at::Tensor& atol, const std::vector<int64_t>& segments) {
  static auto h = op("odecore::rk_error_ratio")
                      .typed<at::Tensor(const at::Tensor&, const at::Tensor&, at::TensorList, at::ArrayRef<double>,
                                        double, const at::Tensor&, const at::Tensor&, at::IntArrayRef)>();
  return h.call(y0, y1, k, e, dt, rtol, atol, segments);
}

inline at::Tensor rk_interp(const at::Tensor& y0, const TensorVec& k, const DoubleVec& poly, double dt, const DoubleVec& x) {
  static auto h = op("odecore::rk_interp")
                      .typed<at::Tensor(const at::Tensor&, at::TensorList, at::ArrayRef<double>, double,
                                        at::ArrayRef<double>)>();
  return h.call(y0, k, poly, dt, x);
}

inline at::Tensor rk_stage_dt(const at::Tensor& y0, const TensorVec& k, const DoubleVec& a, const at::Tensor& dt) {
  static auto h = op("odecore::rk_stage_dt")
                      .typed<at::Tensor(const at::Tensor&, at::TensorList, at::ArrayRef<double>, const at::Tensor&)>();
  return h.call(y0, k, a, dt);
}

inline std::tuple<at::Tensor, at::Tensor> rk_finish_dt(const at::Tensor& y0, const TensorVec& k, const DoubleVec& b,
                                                const DoubleVec& e, const at::Tensor& dt, const at::Tensor& rtol,
                                                const at::Tensor& atol, const std::vector<int64_t>& segments) {
  static auto h = op("odecore::rk_finish_dt")
                      .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, at::TensorList, at::ArrayRef<double>,
                                                                at::ArrayRef<double>, const at::Tensor&, const at::Tensor&,
                                                                const at::Tensor&, at::IntArrayRef)>();
  return h.call(y0, k, b, e, dt, rtol, atol, segments);
}

inline at::Tensor rk_error_ratio_dt(const at::Tensor& y0, const at::Tensor& y1, const TensorVec& k, const DoubleVec& e,
                             const at::Tensor& dt, const at::Tensor& rtol, const at::Tensor& atol,
                             const std::vector<int64_t>& segments) {
  static auto h = op("odecore::rk_error_ratio_dt")
                      .typed<at::Tensor(const at::Tensor&, const at::Tensor&, at::TensorList, at::ArrayRef<double>,
                                        const at::Tensor&, const at::Tensor&, const at::Tensor&, at::IntArrayRef)>();
  return h.call(y0, y1, k, e, dt, rtol, atol, segments);
}

inline void rk_control(const at::Tensor& state, const at::Tensor& accept, const at::Tensor& stage_t, const at::Tensor& dt,
                const at::Tensor& ratio, const at::Tensor& times, const DoubleVec& c, const DoubleVec& params) {
  static auto h = op("odecore::rk_control")
                      .typed<void(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                  const at::Tensor&, const at::Tensor&, at::ArrayRef<double>, at::ArrayRef<double>)>();
  h.call(state, accept, stage_t, dt, ratio, times, c, params);
}

inline void rk_dense_into(const at::Tensor& out, const at::Tensor& times, const at::Tensor& state, const at::Tensor& y0,
                   const at::Tensor& y1, const TensorVec& k, const DoubleVec& poly) {
  static auto h = op("odecore::rk_dense_into")
                      .typed<void(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                  const at::Tensor&, at::TensorList, at::ArrayRef<double>)>();
  h.call(out, times, state, y0, y1, k, poly);
}

inline at::Tensor rk_initial_dt(const at::Tensor& h0, const at::Tensor& d1, const at::Tensor& d2, double order, double round_f32) {
  static auto h = op("odecore::rk_initial_dt")
                      .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, double, double)>();
  return h.call(h0, d1, d2, order, round_f32);
}


}  // namespace direct
}  // namespace odecore
