// odeint_adjoint's augmented dynamics (declared in odecore/adjoint_dynamics.h): one evaluation of
// func and one vector-Jacobian product through the autograd engine per call.
#include "odecore/adjoint_dynamics.h"

#include <ATen/ops/cat.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/python_variable.h>
#include <pybind11/stl.h>

namespace py = pybind11;

namespace odecore {

at::Tensor AdjointDynamics::operator()(const at::Tensor& t, const at::Tensor& z) const {
  TORCH_CHECK_VALUE(z.dim() == 1 && z.size(0) >= 1 + 2 * n_, "AdjointDynamics: z must be the flat augmented state");
  const at::Tensor a = z.slice(0, 1 + n_, 1 + 2 * n_).view(shape_);
  at::Tensor f;
  torch::autograd::variable_list grads;
  {
    at::AutoGradMode enable_grad(true);
    const at::Tensor y = z.slice(0, 1, 1 + n_).view(shape_).detach().requires_grad_(true);
    const at::Tensor tg = t.detach().requires_grad_(true);
    py::object out = func_(tg, y);
    PyObject* obj = out.ptr();
    if (!THPVariable_Check(obj) || THPVariable_Unpack(obj).sizes() != at::IntArrayRef(shape_) ||
        THPVariable_Unpack(obj).scalar_type() != z.scalar_type()) {
      check_(out);  // raises the Python dynamics' error
      throw py::value_error("odeint_adjoint: func returned an output of the wrong kind during the backward pass");
    }
    f = THPVariable_Unpack(obj);
    if (f.requires_grad()) {
      torch::autograd::variable_list inputs{tg, y};
      inputs.insert(inputs.end(), params_.begin(), params_.end());
      py::gil_scoped_release no_gil;  // as torch.autograd.grad: backward nodes may run elsewhere
      // retain_graph: func may use tensors whose graph was built outside it (torchcde's coefficients,
      // adjoint_params=(..., coeffs)); every evaluation backpropagates through that shared graph, as
      // torchdiffeq's (retain_graph=True). This evaluation's own graph is freed with f on return.
      grads = torch::autograd::grad({f}, inputs, {a}, /*retain_graph=*/true, /*create_graph=*/false,
                                    /*allow_unused=*/true);
    }
  }
  std::vector<at::Tensor> pieces;
  pieces.reserve(zeros_.size() + 1);
  for (size_t i = 0; i < zeros_.size(); ++i) {
    if (i == 1) pieces.push_back(f.detach().reshape(-1).neg());
    const bool has = i < grads.size() && grads[i].defined();
    pieces.push_back(has ? grads[i].reshape(-1) : zeros_[i]);
  }
  return at::cat(pieces);
}

void register_adjoint_dynamics(py::module& m) {
  py::class_<AdjointDynamics>(m, "AdjointDynamics",
                              "odeint_adjoint's augmented dynamics in C++ (see odecore/adjoint.py)")
      .def(py::init<py::object, std::vector<at::Tensor>, std::vector<int64_t>, int64_t, std::vector<at::Tensor>,
                    py::object>(),
           py::arg("func"), py::arg("params"), py::arg("shape"), py::arg("n"), py::arg("zeros"), py::arg("check"))
      .def("__call__", &AdjointDynamics::operator(), py::arg("t"), py::arg("z"));
}

}  // namespace odecore
