// The compiled host loop: AdaptiveRKSolver's host loop (odecore/solvers/adaptive.py,
// `integrate` with `_step`, `_attempt`, `_accept` and `_dense_output`) written once more in
// C++, so that a step costs no Python beyond the user's func.
//
// Operation for operation it is the Python loop: the same fused ops through the same
// dispatcher (so autograd records the same graph and dispatch modes see the same ops), the
// same float64 time arithmetic, rounding and step-size factor, the same 0-d time tensors
// handed to func, one host read per step (the error ratio). Its results are bitwise the
// Python loop's (tests/test_host_loop.py). It covers the common case only; the solver
// falls back to the Python loop for a user norm, step_t/jump_t, callbacks, checkpoint
// recording and solver classes that override a step method.
//
// The step control is rk_control's (odecore/rk_math.h: the same parameters, accept rule,
// step-size factor, step end and status codes). Errors the Python loop raises itself
// (non-finite values, step-size underflow, max_num_steps) are returned as a status with t
// and dt, and the solver raises the Python loop's own messages; a func output of the wrong
// kind is reported by RHS._check. An exception from func propagates unchanged.
#include <ATen/EmptyTensor.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/neg.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/utils/pybind.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "odecore/adjoint_dynamics.h"
#include "odecore/direct.h"
#include "odecore/ops.h"
#include "odecore/rk_math.h"

namespace py = pybind11;

namespace odecore {
namespace {

// func(t, y) as RHS.call_device_time calls it: count, check, negate when reversed.
struct Func {
  py::handle rhs;   // the solver's RHS (its _check reports a wrong output)
  py::handle func;
  const AdjointDynamics* native;  // func's C++ evaluation, when it has one (called without Python)
  at::IntArrayRef shape;
  at::ScalarType dtype;
  at::Device device;
  bool negate;
  int64_t nfe = 0;

  at::Tensor operator()(const at::Tensor& t, const at::Tensor& y) {
    if (native != nullptr) {
      at::Tensor r = (*native)(t, y);
      ++nfe;
      return negate ? at::neg(r) : r;
    }
    py::object out = func(t, y);
    ++nfe;
    PyObject* obj = out.ptr();
    if (!THPVariable_Check(obj) || !matches(THPVariable_Unpack(obj))) {
      rhs.attr("_check")(out);  // raises the Python loop's error for this output
      throw py::value_error("func returned an output of the wrong kind");
    }
    const at::Tensor& r = THPVariable_Unpack(obj);
    return negate ? at::neg(r) : r;
  }

  bool matches(const at::Tensor& r) const {
    return r.sizes() == shape && r.scalar_type() == dtype && r.device() == device;
  }
};

// Runs f() without the GIL, as torch's Python bindings run every op: other Python threads
// go on while a kernel (or, on CUDA, the error ratio's read) runs. Nothing in f touches
// Python objects; a dispatch mode or Python kernel the op reaches takes the GIL itself.
template <typename F>
auto without_gil(F&& f) {
  py::gil_scoped_release no_gil;
  return f();
}

py::tuple host_loop(py::object rhs, at::Tensor y, at::Tensor f, const std::vector<double>& times, double t, double dt,
                    const std::vector<std::vector<int64_t>>& stage_idx, const std::vector<std::vector<double>>& stage_a,
                    const std::vector<double>& c, bool fsal, const std::vector<int64_t>& e_idx,
                    const std::vector<double>& e, const std::vector<double>& b, const std::vector<double>& dense_flat,
                    const at::Tensor& rtol, const at::Tensor& atol, const std::vector<int64_t>& segments,
                    const std::vector<double>& params, bool negate) {
  TORCH_CHECK_VALUE(params.size() == static_cast<size_t>(kControlParams), "host_loop: expected rk_control's ", kControlParams,
                    " parameters, got ", params.size());
  TORCH_CHECK_VALUE(stage_idx.size() == stage_a.size() && stage_a.size() == c.size(),
                    "host_loop: stage_idx, stage_a and c must have one entry per stage");
  TORCH_CHECK_VALUE(y.scalar_type() == at::kFloat || y.scalar_type() == at::kDouble,
                    "host_loop: the state must be float32 or float64, got ", y.scalar_type());
  const size_t n_stages = c.size();
  for (size_t s = 0; s < n_stages; ++s) {
    for (int64_t j : stage_idx[s]) {
      TORCH_CHECK_VALUE(j >= 0 && static_cast<size_t>(j) <= s, "host_loop: stage ", s + 1, " uses k[", j, "]");
    }
  }
  for (int64_t j : e_idx) {
    TORCH_CHECK_VALUE(j >= 0 && static_cast<size_t>(j) <= n_stages, "host_loop: e_idx holds ", j);
  }
  const ControlParams p = control_params(params);
  const bool f32 = y.scalar_type() == at::kFloat;
  const double sign = p.time_sign;
  const auto time_options = y.options().requires_grad(false);
  const bool on_cpu = y.device().is_cpu();

  const at::Tensor y_start = y;
  py::object user_func = rhs.attr("func");
  const AdjointDynamics* native = nullptr;
  py::object native_obj = py::getattr(user_func, "_odecore_native", py::none());
  if (py::isinstance<AdjointDynamics>(native_obj)) native = native_obj.cast<const AdjointDynamics*>();
  Func func{rhs, user_func, native, y_start.sizes(), y.scalar_type(), y.device(), negate};

  std::vector<at::Tensor> chunks{y.unsqueeze(0)};
  // the last accepted step: (t0, y0, k, dt), for dense output and for the solver's state
  bool has_last = false;
  double last_t0 = 0.0, last_dt = 0.0;
  at::Tensor last_y0;
  std::vector<at::Tensor> last_k;

  int64_t n_steps = 0, n_accepted = 0, host_reads = 0;
  double status = kRunning;
  double err_t = 0.0, err_dt = 0.0;
  std::vector<double> stage_t(n_stages), pending;
  std::vector<at::Tensor> k, terms, t_tensors;
  k.reserve(n_stages + 1);
  terms.reserve(n_stages + 1);

  try {
    size_t j = 1;
    double steps_here = 0;
    while (j < times.size()) {
      if (times[j] > t) {
        if (steps_here >= p.max_num_steps) {
          status = kMaxSteps, err_t = t, err_dt = dt;
          break;
        }
        // -- one step (AdaptiveRKSolver._step) --
        const double t0 = t;
        const double t1 = step_end(t0, dt, p);
        if (!(t1 > t0)) {
          status = kUnderflow, err_t = t0, err_dt = dt;
          break;
        }
        // the stages at the end run just before it (Perturb.PREV), in y's dtype
        const double t_end = f32 ? time_before<float>(t1) : time_before<double>(t1);
        for (size_t s = 0; s < n_stages; ++s) stage_t[s] = c[s] == 1.0 ? t_end : t0 + c[s] * dt;
        t_tensors.clear();
        for (size_t s = 0; s < n_stages; ++s) {
          if (on_cpu) {  // made directly, without dispatching an op (as from_numpy in RHS.time_tensors)
            at::Tensor ts = at::detail::empty_cpu({}, y.scalar_type(), std::nullopt, std::nullopt, std::nullopt, std::nullopt);
            if (f32) {
              *ts.data_ptr<float>() = static_cast<float>(sign * stage_t[s]);
            } else {
              *ts.data_ptr<double>() = sign * stage_t[s];
            }
            t_tensors.push_back(std::move(ts));
          } else {  // one fill each: a host-to-device copy could wait for the stream
            t_tensors.push_back(at::scalar_tensor(sign * stage_t[s], time_options));
          }
        }
        // -- the attempt (AdaptiveRKSolver._attempt) --
        k.clear();
        k.push_back(f);
        at::Tensor yi = y;
        for (size_t s = 0; s < n_stages; ++s) {
          terms.clear();
          for (int64_t idx : stage_idx[s]) terms.push_back(k[idx]);
          yi = without_gil([&] { return direct::rk_stage(y, terms, stage_a[s], dt); });
          k.push_back(func(t_tensors[s], yi));
        }
        at::Tensor y1;
        double ratio;
        if (fsal) {
          terms.clear();
          for (int64_t idx : e_idx) terms.push_back(k[idx]);
          ratio = without_gil([&] { return direct::rk_error_ratio(y, yi, terms, e, dt, rtol, atol, segments).item<double>(); });
          y1 = yi;
        } else {
          ratio = without_gil([&] {
            auto finished = direct::rk_finish(y, k, b, e, dt, rtol, atol, segments);
            y1 = std::get<0>(finished);
            return std::get<1>(finished).item<double>();
          });
        }
        ++host_reads;
        if (std::isnan(ratio)) {
          status = kNonFinite, err_t = t0, err_dt = dt;
          break;
        }
        const bool accept = accepts(ratio, dt, p);
        if (accept && std::isinf(ratio)) {
          status = kNonFinite, err_t = t0, err_dt = dt;
          break;
        }
        ++n_steps;
        if (accept) {  // AdaptiveRKSolver._accept
          ++n_accepted;
          has_last = true;
          last_t0 = t0, last_y0 = y, last_k = k, last_dt = dt;
          t = t1, y = y1, f = k.back();
        }
        dt = next_dt(dt, ratio, p);
        steps_here += 1;
        continue;
      }
      // -- output times inside the last accepted step (AdaptiveRKSolver._dense_output) --
      const size_t first = j;
      while (j < times.size() && times[j] <= t) ++j;
      TORCH_CHECK(has_last, "host_loop: output time ", times[first], " precedes every step");
      const double span = t - last_t0;
      pending.clear();
      auto flush = [&]() {
        if (!pending.empty()) {
          chunks.push_back(without_gil([&] { return direct::rk_interp(last_y0, last_k, dense_flat, last_dt, pending); }));
          pending.clear();
        }
      };
      for (size_t i = first; i < j; ++i) {
        const double x = (times[i] - last_t0) / span;
        if (x == 1.0) {
          flush();
          chunks.push_back(y.unsqueeze(0));
        } else {
          pending.push_back(x);
        }
      }
      flush();
      steps_here = 0;
    }
  } catch (...) {
    rhs.attr("nfe") = rhs.attr("nfe").cast<int64_t>() + func.nfe;
    throw;
  }
  rhs.attr("nfe") = rhs.attr("nfe").cast<int64_t>() + func.nfe;
  if (status == kRunning) status = kDone;
  py::object out = status == kDone ? py::cast(without_gil([&] { return at::cat(chunks); })) : py::none();
  py::object last = py::none();
  if (has_last) last = py::make_tuple(last_t0, last_y0, py::cast(last_k), last_dt);
  return py::make_tuple(out, static_cast<int64_t>(status), t, dt, y, f, n_steps, n_accepted, host_reads, err_t, err_dt, last);
}

}  // namespace

void register_host_loop(py::module& m) {
  m.def("host_loop", &host_loop,
        "AdaptiveRKSolver's host loop in C++: returns (solution or None, status, t, dt, y, f, n_steps, n_accepted, "
        "host_reads, err_t, err_dt, last_step or None)");
}

}  // namespace odecore
