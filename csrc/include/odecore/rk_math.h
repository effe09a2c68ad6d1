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

// The combination with a compile-time number of stages: the stage loop unrolls and the
// element loop vectorises (the sum is formed in the same order as `combine_at`).
template <int M, typename scalar_t, typename acc_t, typename out_t>
inline void combine_fixed(out_t* __restrict out, const CombineParams<scalar_t, acc_t>& p, int64_t begin, int64_t end) {
  const scalar_t* k[M > 0 ? M : 1];
  acc_t w[M > 0 ? M : 1];
  for (int j = 0; j < M; ++j) {
    k[j] = p.k[j] + begin;
    w[j] = p.w[j];
  }
  const int64_t len = end - begin;
  if (p.y0 != nullptr) {
    const scalar_t* __restrict y0 = p.y0 + begin;
    for (int64_t i = 0; i < len; ++i) {
      acc_t sum = acc_t(0);
#pragma GCC unroll 16
      for (int j = 0; j < M; ++j) {
        sum += w[j] * static_cast<acc_t>(k[j][i]);
      }
      out[i] = static_cast<out_t>(static_cast<acc_t>(y0[i]) + sum);
    }
  } else {
    for (int64_t i = 0; i < len; ++i) {
      acc_t sum = acc_t(0);
#pragma GCC unroll 16
      for (int j = 0; j < M; ++j) {
        sum += w[j] * static_cast<acc_t>(k[j][i]);
      }
      out[i] = static_cast<out_t>(sum);
    }
  }
}

// The same combination over elements [begin, end), written to out[0 .. end - begin):
// up to 16 stages through `combine_fixed`, more one stage at a time through a small
// accumulator block. Both form the sum in the same order as `combine_at`, so all give
// identical results. A null p.y0 leaves out the y0 term (an error estimate). Host only.
template <typename scalar_t, typename acc_t, typename out_t>
inline void combine_range(out_t* out, const CombineParams<scalar_t, acc_t>& p, int64_t begin, int64_t end) {
  switch (p.m) {
#define ODECORE_FIXED_CASE(M) \
  case M:                     \
    return combine_fixed<M>(out, p, begin, end);
    ODECORE_FIXED_CASE(0)
    ODECORE_FIXED_CASE(1)
    ODECORE_FIXED_CASE(2)
    ODECORE_FIXED_CASE(3)
    ODECORE_FIXED_CASE(4)
    ODECORE_FIXED_CASE(5)
    ODECORE_FIXED_CASE(6)
    ODECORE_FIXED_CASE(7)
    ODECORE_FIXED_CASE(8)
    ODECORE_FIXED_CASE(9)
    ODECORE_FIXED_CASE(10)
    ODECORE_FIXED_CASE(11)
    ODECORE_FIXED_CASE(12)
    ODECORE_FIXED_CASE(13)
    ODECORE_FIXED_CASE(14)
    ODECORE_FIXED_CASE(15)
    ODECORE_FIXED_CASE(16)
#undef ODECORE_FIXED_CASE
    default:
      break;
  }
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

// Double arithmetic rounded after every operation on the host and the device alike:
// nvcc would otherwise fuse a * b + c into one FMA, so that step sizes, times and
// weights computed on the device would differ in the last bit from the host loop's.
ODECORE_HD double dmul(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

ODECORE_HD double dadd(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}

// Weight of stage j in the dense output at fraction x of the step:
// P_j(x) = sum_{d<D} poly[j*D + d] * x^(d+1), times dt.
ODECORE_HD double dense_weight(const double* poly, int degree, int j, double x, double dt) {
  double acc = 0.0;
  for (int d = degree - 1; d >= 0; --d) {
    acc = dadd(dmul(acc, x), poly[j * degree + d]);
  }
  return dmul(dmul(acc, x), dt);
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

// ---------------------------------------------------------------------------
// Device-resident step control (rk_control): the accept/reject decision and the next
// step of the adaptive loop, computed where the state lives, so that a solve on the
// GPU need not read the error ratio back every step. The arithmetic is that of the
// host loop (odecore/solvers/adaptive.py) operation for operation.
// ---------------------------------------------------------------------------

// Slots of the float64 control state.
enum ControlSlot : int {
  kT = 0,          // current time (end of the last accepted step)
  kDt,             // the next step size
  kStatus,         // ControlStatus
  kNSteps,         // attempted steps
  kNAccepted,      // accepted steps
  kStepsHere,      // steps since the last output time was passed (max_num_steps)
  kNextOut,        // index of the first output time not yet written
  kFirstOut,       // first output row the last step wrote (rows [kFirstOut, kNextOut))
  kT0,             // start of the step being attempted
  kT1,             // its end
  kDtUsed,         // its step size
  kRatio,          // error ratio of the last attempt
  kErrT,           // t and dt where the solve stopped with an error
  kErrDt,
  kOutT0,          // the last accepted step (t0, t1, dt), for its output rows
  kOutT1,
  kOutDt,
  kNumSlots = 20,
};

// Values of state[kStatus].
constexpr double kRunning = 0.0;
constexpr double kDone = 1.0;
constexpr double kNonFinite = 2.0;  // NaN/inf in the solution or its error estimate
constexpr double kUnderflow = 3.0;  // t + dt == t
constexpr double kMaxSteps = 4.0;   // max_num_steps exceeded

// Parameters of rk_control, in the order of its `params` argument.
struct ControlParams {
  double order, safety, ifactor, dfactor, min_step, max_step, max_num_steps, time_sign;
  bool round_f32;     // time-like values carry float32 precision (options dtype=float32)
  bool prepare_only;  // only set up the first attempt from state[kT], state[kDt]
};
constexpr int kControlParams = 10;

ODECORE_HD bool is_inf(double v) {
  return v == INFINITY || v == -INFINITY;
}

ODECORE_HD double round_time(double v, bool f32) {
  return f32 ? static_cast<double>(static_cast<float>(v)) : v;
}

// The step-size factor of the host loop: safety / ratio^(1/order), clipped.
ODECORE_HD double step_factor(double ratio, const ControlParams& p) {
  if (ratio == 0.0) {
    return p.ifactor;
  }
  const double dfactor = ratio >= 1.0 ? p.dfactor : 1.0;
  double f = p.safety / pow(ratio, 1.0 / p.order);
  f = f < dfactor ? dfactor : f;   // Python's max(f, dfactor)
  return p.ifactor < f ? p.ifactor : f;  // min(ifactor, f)
}

// The end of a step of size dt from t0, in the time dtype (the step cannot be taken
// unless it lies after t0: a step-size underflow).
ODECORE_HD double step_end(double t0, double dt, const ControlParams& p) {
  return round_time(dadd(t0, dt), p.round_f32);
}

// The host loop's accept rule: ratio <= 1, but never above max_step and always at min_step.
ODECORE_HD bool accepts(double ratio, double dt, const ControlParams& p) {
  bool ok = ratio <= 1.0;
  if (dt > p.max_step) {
    ok = false;
  }
  if (dt <= p.min_step) {
    ok = true;
  }
  return ok;
}

// The step size after an attempt of size dt with error ratio `ratio`, clamped to
// [min_step, max_step] and rounded to the time dtype.
ODECORE_HD double next_dt(double dt, double ratio, const ControlParams& p) {
  double next = dmul(dt, step_factor(ratio, p));
  next = next < p.min_step ? p.min_step : next;
  next = p.max_step < next ? p.max_step : next;
  return round_time(next, p.round_f32);
}

// The time just before t in the state's dtype (Perturb.PREV of the host loop).
template <typename time_t>
ODECORE_HD double time_before(double t);
template <>
ODECORE_HD double time_before<double>(double t) {
  return nextafter(t, -INFINITY);
}
template <>
ODECORE_HD double time_before<float>(double t) {
  return static_cast<double>(nextafterf(static_cast<float>(t), -INFINITY));
}

// Sets up the attempt from state[kT] with step state[kDt]: its end, and the times of
// stages 1.. (func's argument, times time_sign, in the state's dtype). Returns false
// (and sets the status) when the step cannot be taken.
template <typename time_t>
ODECORE_HD bool prepare_attempt(double* state, time_t* stage_t, const double* c, int n_c, const ControlParams& p) {
  const double t0 = state[kT];
  const double dt = state[kDt];
  const double t1 = step_end(t0, dt, p);
  if (state[kStepsHere] >= p.max_num_steps) {
    state[kStatus] = kMaxSteps;
  } else if (!(t1 > t0)) {
    state[kStatus] = kUnderflow;
  }
  if (state[kStatus] != kRunning) {
    state[kErrT] = t0;
    state[kErrDt] = dt;
    return false;
  }
  state[kT0] = t0;
  state[kT1] = t1;
  state[kDtUsed] = dt;
  for (int i = 0; i < n_c; ++i) {
    const double ti = c[i] == 1.0 ? time_before<time_t>(t1) : dadd(t0, dmul(c[i], dt));
    stage_t[i] = static_cast<time_t>(dmul(p.time_sign, ti));
  }
  return true;
}

// Decides the attempt described by state[kT0..kDtUsed] given its error ratio, and sets
// up the next one. Output rows [state[kFirstOut], state[kNextOut]) fall in the step
// when it was accepted (then described by state[kOutT0..kOutDt]). Once the status
// leaves kRunning nothing changes any more.
template <typename time_t>
ODECORE_HD void control_decide(double* state, bool* accept, time_t* stage_t, double ratio, const double* times,
                               int64_t n_times, const double* c, int n_c, const ControlParams& p) {
  *accept = false;
  state[kFirstOut] = state[kNextOut];
  if (state[kStatus] != kRunning) {
    return;
  }
  const double dt = state[kDtUsed];
  state[kRatio] = ratio;
  const bool ok = accepts(ratio, dt, p);
  if (ratio != ratio || (ok && is_inf(ratio))) {
    state[kStatus] = kNonFinite;
    state[kErrT] = state[kT0];
    state[kErrDt] = dt;
    return;
  }
  state[kNSteps] += 1.0;
  state[kStepsHere] += 1.0;
  if (ok) {
    const double t1 = state[kT1];
    state[kOutT0] = state[kT0];
    state[kOutT1] = t1;
    state[kOutDt] = dt;
    state[kNAccepted] += 1.0;
    state[kT] = t1;
    int64_t next = static_cast<int64_t>(state[kNextOut]);
    const int64_t first = next;
    while (next < n_times && times[next] <= t1) {
      ++next;
    }
    if (next != first) {
      state[kStepsHere] = 0.0;
    }
    state[kNextOut] = static_cast<double>(next);
    *accept = true;
  }
  state[kDt] = next_dt(dt, ratio, p);
  if (static_cast<int64_t>(state[kNextOut]) >= n_times) {
    state[kStatus] = kDone;
    return;
  }
  prepare_attempt(state, stage_t, c, n_c, p);
}

// The last part of the host loop's initial step (torchdiffeq's select_initial_step)
// from h0 and the norms d1 = |f0|, d2 = |f1 - f0| / h0: min(100 h0, h1).
ODECORE_HD double initial_dt(double h0, double d1, double d2, double order, bool round_f32) {
  double h1;
  if (d1 <= 1e-15 && d2 <= 1e-15) {
    const double small = dmul(h0, 1e-3);
    h1 = small > 1e-6 ? small : 1e-6;  // Python's max(1e-6, h0 * 1e-3)
  } else {
    h1 = pow(0.01 / (d2 > d1 ? d2 : d1), 1.0 / order);
  }
  const double big = dmul(100.0, h0);
  return round_time(h1 < big ? h1 : big, round_f32);  // min(100 h0, h1)
}

// control_decide, and every stage time written in any case: once the solve has stopped,
// the (wasted) attempts still queued evaluate func at the current time.
// With p.prepare_only, the first attempt is set up instead (ratio ignored). The step size
// of the attempt set up is also written to *dt_out (the stage ops' dt).
template <typename time_t>
ODECORE_HD void control_update(double* state, bool* accept, time_t* stage_t, double* dt_out, double ratio,
                               const double* times, int64_t n_times, const double* c, int n_c,
                               const ControlParams& p) {
  // a state whose output index is not an index of `times` (a corrupted or foreign state)
  // stops the solve instead of reading out of bounds
  const double next_out = state[kNextOut];
  if (state[kStatus] == kRunning && !(next_out >= 0.0 && next_out <= static_cast<double>(n_times))) {
    state[kStatus] = kNonFinite;
    state[kErrT] = state[kT];
    state[kErrDt] = state[kDt];
    state[kNextOut] = static_cast<double>(n_times);
  }
  if (p.prepare_only) {
    *accept = false;
    state[kFirstOut] = state[kNextOut];
    if (state[kStatus] == kRunning) {
      prepare_attempt(state, stage_t, c, n_c, p);
    }
  } else {
    control_decide(state, accept, stage_t, ratio, times, n_times, c, n_c, p);
  }
  *dt_out = state[kDtUsed];
  if (state[kStatus] != kRunning) {
    for (int i = 0; i < n_c; ++i) {
      stage_t[i] = static_cast<time_t>(dmul(p.time_sign, state[kT]));
    }
  }
}

}  // namespace odecore
