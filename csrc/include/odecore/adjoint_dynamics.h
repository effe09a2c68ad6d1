// odeint_adjoint's augmented dynamics in C++ (odecore/adjoint.py, _AugmentedDynamics), shared by
// csrc/adjoint_dynamics.cpp (its Python binding) and csrc/host_loop.cpp (which calls it without Python).
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/csrc/utils/pybind.h>

#include <cstdint>
#include <vector>

namespace odecore {

// hidden like the pybind11 objects it holds (the module is the only user)
#if defined(__GNUC__)
#define ODECORE_HIDDEN __attribute__((visibility("hidden")))
#else
#define ODECORE_HIDDEN
#endif

// odeint_adjoint's augmented dynamics (odecore/adjoint.py, _AugmentedDynamics) in C++: for
// the flat state z = [a_t, y, a, a_theta] returns [a.df/dt, -f, a.df/dy, a.df/dtheta] (the
// derivative in the backward solve's reversed time) with one evaluation of func and one
// vector-Jacobian product through the autograd engine, the same ops as the Python version
// in the same order, so the results are bitwise equal. The Python class checks func's first
// output and makes the zero pieces, then hands its evaluations to this one; `check(f)`
// raises its error for an output of the wrong kind.
class ODECORE_HIDDEN AdjointDynamics {
 public:
  AdjointDynamics(pybind11::object func, std::vector<at::Tensor> params, std::vector<int64_t> shape, int64_t n,
                  std::vector<at::Tensor> zeros, pybind11::object check)
      : func_(std::move(func)),
        params_(std::move(params)),
        shape_(std::move(shape)),
        n_(n),
        zeros_(std::move(zeros)),
        check_(std::move(check)) {
    TORCH_CHECK_VALUE(zeros_.size() == params_.size() + 2, "AdjointDynamics: expected ", params_.size() + 2,
                      " zero pieces (t, y and one per parameter), got ", zeros_.size());
  }

  at::Tensor operator()(const at::Tensor& t, const at::Tensor& z) const;

 private:
  pybind11::object func_;
  std::vector<at::Tensor> params_;
  std::vector<int64_t> shape_;
  int64_t n_;
  std::vector<at::Tensor> zeros_;
  pybind11::object check_;
};

void register_adjoint_dynamics(pybind11::module& m);

}  // namespace odecore
