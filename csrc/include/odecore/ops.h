// Host-side declarations shared by the op schemas, the backends and autograd.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <vector>

namespace odecore {

// Validation shared by every backend. Each check names the op and the argument.
void check_terms(const char* op, const at::Tensor& y0, at::TensorList k, size_t n_coeffs,
                 const char* coeff_name);
void check_same_as_y0(const char* op, const char* name, const at::Tensor& t, const at::Tensor& y0);
void check_tolerance(const char* op, const char* name, const at::Tensor& tol, const at::Tensor& y0);
void check_segments(const char* op, at::IntArrayRef segments, int64_t numel);
int64_t check_dense_poly(const char* op, at::TensorList k, at::ArrayRef<double> poly);

// dt * coeffs[j], the weights of one linear combination of stages.
std::vector<double> scaled_weights(at::ArrayRef<double> coeffs, double dt);
// Dense-output weights of every stage at fraction x of the step.
std::vector<double> dense_weights(at::ArrayRef<double> poly, int64_t m, double x, double dt);

// Shape of the dense output: (len(x), *y0.shape).
std::vector<int64_t> dense_output_shape(const at::Tensor& y0, size_t n_points);

}  // namespace odecore
