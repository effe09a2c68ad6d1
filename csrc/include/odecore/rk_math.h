// Element math of the fused Runge-Kutta ops, shared by the CPU and CUDA kernels.
// Everything here is a plain function of scalars and raw pointers so that it
// compiles for the host and, under nvcc, for the device.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define ODECORE_HD __host__ __device__ __forceinline__
#else
#define ODECORE_HD inline
#endif

namespace odecore {

// Most vectors one op combines (dopri8 has 14 stages; dense output may add one).
constexpr int kMaxTerms = 32;

// Stage weights of one linear combination: out = y0 + sum_j w[j] * k[j].
template <typename scalar_t, typename acc_t>
struct CombineParams {
  const scalar_t* y0;
  const scalar_t* k[kMaxTerms];
  acc_t w[kMaxTerms];
  int m;
};

template <typename scalar_t, typename acc_t>
ODECORE_HD acc_t weighted_sum(const scalar_t* const* k, const acc_t* w, int m, int64_t i) {
  acc_t acc = acc_t(0);
  for (int j = 0; j < m; ++j) {
    acc += w[j] * static_cast<acc_t>(k[j][i]);
  }
  return acc;
}

// y0[i] + sum_j w[j] * k[j][i]: the sum is formed first, as torchdiffeq does.
template <typename scalar_t, typename acc_t>
ODECORE_HD scalar_t combine_at(const CombineParams<scalar_t, acc_t>& p, int64_t i) {
  return static_cast<scalar_t>(static_cast<acc_t>(p.y0[i]) + weighted_sum(p.k, p.w, p.m, i));
}

ODECORE_HD bool is_finite(double v) {
  return v - v == 0.0;  // false for NaN and +-inf, and safe under fast-math-free builds
}

// Squared scaled error of one element: (err / (atol + rtol * max(|y0|, |y1|)))^2.
// A non-finite solution element poisons the norm with NaN so the solver can stop
// instead of accepting a step whose tolerance became infinite.
ODECORE_HD double scaled_error_sq(double err, double y0, double y1, double rtol, double atol) {
  if (!is_finite(y1)) {
    return NAN;
  }
  const double tol = atol + rtol * fmax(fabs(y0), fabs(y1));
  const double r = err / tol;
  return r * r;
}

// Weight of stage j in the dense output at fraction x of the step:
// P_j(x) = sum_{d<D} poly[j*D + d] * x^(d+1), times dt.
ODECORE_HD double dense_weight(const double* poly, int degree, int j, double x, double dt) {
  double acc = 0.0;
  for (int d = degree - 1; d >= 0; --d) {
    acc = acc * x + poly[j * degree + d];
  }
  return acc * x * dt;
}

// Combines per-segment sums of squares into the error ratio: the largest RMS
// over segments (torchdiffeq's mixed norm; one segment is its RMS norm).
// NaN in any segment makes the ratio NaN.
ODECORE_HD double rms_of_sum(double sum_sq, int64_t count) {
  return count > 0 ? sqrt(sum_sq / static_cast<double>(count)) : 0.0;
}

ODECORE_HD double nan_max(double a, double b) {
  if (a != a || b != b) {
    return NAN;
  }
  return a > b ? a : b;
}

}  // namespace odecore
