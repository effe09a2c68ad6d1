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

// The same combination over elements [begin, end), written to out[0 .. end - begin),
// one stage at a time through a small accumulator block so the compiler can vectorise
// it. The sum is formed in the same order as `combine_at`, so both give identical
// results. A null p.y0 leaves out the y0 term (an error estimate). Host only.
template <typename scalar_t, typename acc_t, typename out_t>
inline void combine_range(out_t* out, const CombineParams<scalar_t, acc_t>& p, int64_t begin, int64_t end) {
  constexpr int64_t kBlock = 256;
  acc_t acc[kBlock];
  for (int64_t b = begin; b < end; b += kBlock) {
    const int64_t len = end - b < kBlock ? end - b : kBlock;
    for (int64_t i = 0; i < len; ++i) {
      acc[i] = acc_t(0);
    }
    for (int j = 0; j < p.m; ++j) {
      const scalar_t* kj = p.k[j] + b;
      const acc_t wj = p.w[j];
      for (int64_t i = 0; i < len; ++i) {
        acc[i] += wj * static_cast<acc_t>(kj[i]);
      }
    }
    out_t* o = out + (b - begin);
    if (p.y0 != nullptr) {
      for (int64_t i = 0; i < len; ++i) {
        o[i] = static_cast<out_t>(static_cast<acc_t>(p.y0[b + i]) + acc[i]);
      }
    } else {
      for (int64_t i = 0; i < len; ++i) {
        o[i] = static_cast<out_t>(acc[i]);
      }
    }
  }
}

// Squared scaled error of one element: (err / (atol + rtol * max(|y0|, |y1|)))^2.
// A non-finite solution element poisons the norm with NaN so the solver can stop
// instead of accepting a step whose tolerance became infinite.
ODECORE_HD double scaled_error_sq(double err, double y0, double y1, double rtol, double atol) {
  const double a0 = fabs(y0);
  const double a1 = fabs(y1);
  const double tol = atol + rtol * (a0 > a1 ? a0 : a1);
  const double r = err / tol;
  return r * r + (y1 - y1);  // y1 - y1 is 0, or NaN when y1 is not finite (branch-free)
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

// One Euler-Maruyama / Milstein update of an SDE with diagonal (or scalar, broadcast)
// noise: y0 + f dt + g dW + 1/2 (g dg/dy) (dW^2 - correction), with correction = dt for
// Ito and 0 for Stratonovich, and no last term when has_gdg is false.
template <typename acc_t>
ODECORE_HD acc_t sde_update(acc_t y0, acc_t f, acc_t g, acc_t dw, acc_t gdg, bool has_gdg, acc_t dt,
                            acc_t correction) {
  acc_t out = y0 + f * dt + g * dw;
  if (has_gdg) {
    out += acc_t(0.5) * gdg * (dw * dw - correction);
  }
  return out;
}

}  // namespace odecore
