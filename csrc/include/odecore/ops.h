// Host-side front end shared by the op schemas, the backends and autograd: every
// backend validates and prepares its arguments the same way, then runs its kernel.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <vector>

#include "odecore/acc_type.h"
#include "odecore/rk_math.h"

namespace odecore {

// Validation shared by every backend. Each check names the op and the argument.
void check_terms(const char* op, const at::Tensor& y0, at::TensorList k, size_t n_coeffs,
                 const char* coeff_name);
void check_same_as_y0(const char* op, const char* name, const at::Tensor& t, const at::Tensor& y0);
void check_tolerance(const char* op, const char* name, const at::Tensor& tol, const at::Tensor& y0);
void check_segments(const char* op, at::IntArrayRef segments, int64_t numel);
// With one dt per sample the norm is per sample: segments must be the whole state.
void check_per_sample_segments(const char* op, at::IntArrayRef segments, int64_t numel);
int64_t check_dense_poly(const char* op, at::TensorList k, at::ArrayRef<double> poly);

// dt * coeffs[j], the weights of one linear combination of stages.
std::vector<double> scaled_weights(at::ArrayRef<double> coeffs, double dt);
// Dense-output weights of every stage at fraction x of the step.
std::vector<double> dense_weights(at::ArrayRef<double> poly, int64_t m, double x, double dt);

// One op's arguments after validation: contiguous inputs, weights and the output.
struct Prepared {
  at::Tensor y0;                              // contiguous
  at::Tensor y1;                              // the output (or, for rk_error_ratio, the given y1)
  std::vector<at::Tensor> k;                  // contiguous
  std::vector<double> w;                      // dt * solution weights
  std::vector<double> err_w;                  // dt * error weights
  std::vector<std::vector<double>> point_w;   // rk_interp: weights at each output point
  at::Tensor rtol, atol;                      // float64, contiguous
  std::vector<int64_t> segments;  // lengths; a negative length -L: L elements left out of the norm
  bool write_y1 = true;
};

// `op` names the op in error messages (the *_dt ops pass their own name).
Prepared prepare_stage(const at::Tensor& y0, at::TensorList k, at::ArrayRef<double> a, double dt,
                       const char* op = "rk_stage");
Prepared prepare_finish(const at::Tensor& y0, at::TensorList k, at::ArrayRef<double> b,
                        at::ArrayRef<double> e, double dt, const at::Tensor& rtol,
                        const at::Tensor& atol, at::IntArrayRef segments, const char* op = "rk_finish");
Prepared prepare_error_ratio(const at::Tensor& y0, const at::Tensor& y1, at::TensorList k,
                             at::ArrayRef<double> e, double dt, const at::Tensor& rtol,
                             const at::Tensor& atol, at::IntArrayRef segments,
                             const char* op = "rk_error_ratio");
Prepared prepare_interp(const at::Tensor& y0, at::TensorList k, at::ArrayRef<double> poly,
                        double dt, at::ArrayRef<double> x);

// The step size of the *_dt ops: a float64 tensor on y0's device with one element, or
// one per sample (B elements dividing y0's); returns B.
int64_t check_dt_tensor(const char* op, const at::Tensor& dt, const at::Tensor& y0);
// Reads it where that is a plain memory read (CPU); never on CUDA.
double host_dt(const at::Tensor& dt);

// rk_control / rk_dense_into: checks of the state, output-time and flag tensors.
void check_control(const at::Tensor& state, const at::Tensor& accept, const at::Tensor& stage_t,
                   const at::Tensor& dt, const at::Tensor& ratio, const at::Tensor& times, at::ArrayRef<double> c,
                   at::ArrayRef<double> params);
ControlParams control_params(at::ArrayRef<double> params);
// Returns the number of samples B (state (B, kNumSlots)).
int64_t check_dense_into(const at::Tensor& out, const at::Tensor& times, const at::Tensor& state, const at::Tensor& y0,
                         const at::Tensor& y1, at::TensorList k, at::ArrayRef<double> poly);
void check_initial_dt(const at::Tensor& h0, const at::Tensor& d1, const at::Tensor& d2);

// sde_step's inputs made contiguous after checks: {y0, f, g, dw[, gdg], out}.
std::vector<at::Tensor> prepare_sde_step(const at::Tensor& y0, const at::Tensor& f, const at::Tensor& g,
                                         const at::Tensor& dw, const c10::optional<at::Tensor>& gdg);

// Kernel parameters for y0 + sum_j w[j] * k[j]; a null y0 leaves that term out.
template <typename scalar_t, typename weight_t = acc_t<scalar_t>>
CombineParams<scalar_t, weight_t> make_params(const at::Tensor* y0, const std::vector<at::Tensor>& k,
                                              const std::vector<double>& w) {
  CombineParams<scalar_t, weight_t> p;
  p.y0 = y0 == nullptr ? nullptr : y0->const_data_ptr<scalar_t>();
  p.m = static_cast<int>(k.size());
  for (size_t j = 0; j < k.size(); ++j) {
    p.k[j] = k[j].const_data_ptr<scalar_t>();
    p.w[j] = static_cast<weight_t>(w[j]);
  }
  return p;
}

}  // namespace odecore

#define ODECORE_DISPATCH(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)
