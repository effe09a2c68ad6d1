// The Python module odecore._C. Importing it registers the ops (torch.ops.odecore.*);
// it also exposes each op as a direct function, which enters the same dispatcher
// (autograd, CPU/CUDA kernels) without the boxed argument conversion of torch.ops:
// the solver loop calls these, a few microseconds less per op.
#include "odecore/adjoint_dynamics.h"
#include "odecore/direct.h"
#include "odecore/rk_math.h"
#include <torch/csrc/utils/pybind.h>
#include <pybind11/stl.h>

#include <string>
#include <tuple>
#include <vector>

#ifndef ODECORE_TORCH_VERSION
#define ODECORE_TORCH_VERSION "unknown"
#endif

using namespace odecore::direct;

namespace odecore {
void register_host_loop(pybind11::module& m);  // host_loop.cpp

// rk_math.h's control-state layout, status codes and parameter count, by the names of
// odecore/ops/control.py (whose tests hold the two definitions together).
void export_control_constants(pybind11::module& m) {
  pybind11::dict slots;
  slots["T"] = static_cast<int>(kT);
  slots["DT"] = static_cast<int>(kDt);
  slots["STATUS"] = static_cast<int>(kStatus);
  slots["N_STEPS"] = static_cast<int>(kNSteps);
  slots["N_ACCEPTED"] = static_cast<int>(kNAccepted);
  slots["STEPS_HERE"] = static_cast<int>(kStepsHere);
  slots["NEXT_OUT"] = static_cast<int>(kNextOut);
  slots["FIRST_OUT"] = static_cast<int>(kFirstOut);
  slots["T0"] = static_cast<int>(kT0);
  slots["T1"] = static_cast<int>(kT1);
  slots["DT_USED"] = static_cast<int>(kDtUsed);
  slots["RATIO"] = static_cast<int>(kRatio);
  slots["ERR_T"] = static_cast<int>(kErrT);
  slots["ERR_DT"] = static_cast<int>(kErrDt);
  slots["OUT_T0"] = static_cast<int>(kOutT0);
  slots["OUT_T1"] = static_cast<int>(kOutT1);
  slots["OUT_DT"] = static_cast<int>(kOutDt);
  pybind11::dict status;
  status["RUNNING"] = kRunning;
  status["DONE"] = kDone;
  status["NON_FINITE"] = kNonFinite;
  status["UNDERFLOW"] = kUnderflow;
  status["MAX_STEPS"] = kMaxSteps;
  m.attr("control_slots") = slots;
  m.attr("num_slots") = static_cast<int>(kNumSlots);
  m.attr("status_codes") = status;
  m.attr("num_control_params") = kControlParams;
}
}  // namespace odecore

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
  odecore::register_host_loop(m);
  odecore::register_adjoint_dynamics(m);
  odecore::export_control_constants(m);
  m.def("rk_dense_into", &rk_dense_into, "dense output of an accepted step into its output rows (in place)");
}
