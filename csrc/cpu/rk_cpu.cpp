// CPU kernels of the fused Runge-Kutta ops: at::parallel_for over contiguous
// memory, element math from rk_math.h, arguments prepared by the shared front end.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/scalar_tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "odecore/ops.h"
#include "odecore/rk_math.h"

namespace odecore {
namespace {

constexpr int64_t kGrain = 32768;
// Reductions sum fixed-size blocks and then the blocks in order, so the result
// does not depend on the number of threads.
constexpr int64_t kReduceBlock = 16384;

template <typename scalar_t>
void combine_cpu(scalar_t* out, const CombineParams<scalar_t, acc_t<scalar_t>>& p, int64_t n) {
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) { combine_range(out + begin, p, begin, end); });
}

// Sum of the squared scaled errors over [begin, end); writes y1 there first when asked.
template <typename scalar_t>
double segment_block_sum(const Prepared& a, scalar_t* y1, const CombineParams<scalar_t, acc_t<scalar_t>>& sol,
                         const CombineParams<scalar_t, double>& err_p, int64_t begin, int64_t end,
                         double* err) {
  if (a.write_y1) {
    combine_range(y1 + begin, sol, begin, end);
  }
  combine_range(err, err_p, begin, end);  // err_p has no y0: the error estimate alone, in double
  const scalar_t* y0 = sol.y0;
  const double* rt = a.rtol.const_data_ptr<double>();
  const double* at_ = a.atol.const_data_ptr<double>();
  const int64_t len = end - begin;
  if (a.rtol.numel() == 1 && a.atol.numel() == 1) {  // scalar tolerances: kept vectorisable
    for (int64_t i = 0; i < len; ++i) {
      err[i] = scaled_error_sq(err[i], static_cast<double>(y0[begin + i]), static_cast<double>(y1[begin + i]), rt[0], at_[0]);
    }
  } else {
    const int64_t rs = a.rtol.numel() == 1 ? 0 : 1;
    const int64_t as = a.atol.numel() == 1 ? 0 : 1;
    for (int64_t i = 0; i < len; ++i) {
      err[i] = scaled_error_sq(err[i], static_cast<double>(y0[begin + i]), static_cast<double>(y1[begin + i]),
                               rt[(begin + i) * rs], at_[(begin + i) * as]);
    }
  }
  // eight fixed lanes: vectorisable, and the same order for any thread count
  double lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= len; i += 8) {
    for (int l = 0; l < 8; ++l) {
      lanes[l] += err[i + l];
    }
  }
  for (; i < len; ++i) {
    lanes[0] += err[i];
  }
  return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
}

// Sum of the squared scaled errors over the segment [offset, offset + len), writing y1
// there first when a.write_y1: fixed blocks reduced in order (any thread count, any
// offset gives the same sum for the same elements).
template <typename scalar_t>
double segment_sum(const Prepared& a, scalar_t* y1, const CombineParams<scalar_t, acc_t<scalar_t>>& sol,
                   const CombineParams<scalar_t, double>& err_p, int64_t offset, int64_t len) {
  const int64_t nblocks = (len + kReduceBlock - 1) / kReduceBlock;
  std::vector<double> partial(nblocks, 0.0);
  const auto reduce_blocks = [&](int64_t b0, int64_t b1) {
    std::vector<double> err(std::min(kReduceBlock, len));
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t begin = offset + blk * kReduceBlock;
      const int64_t end = std::min(begin + kReduceBlock, offset + len);
      partial[blk] = segment_block_sum(a, y1, sol, err_p, begin, end, err.data());
    }
  };
  if (nblocks > 1) {  // parallel_for would start the thread pool even for a single block
    at::parallel_for(0, nblocks, 1, reduce_blocks);
  } else {
    reduce_blocks(0, nblocks);
  }
  double sum = 0.0;
  for (const double s : partial) {
    sum += s;
  }
  return sum;
}

// Writes y1 (when a.write_y1) and returns the error ratio, in one pass over memory.
template <typename scalar_t>
double finish_cpu(const Prepared& a) {
  scalar_t* y1 = const_cast<scalar_t*>(a.y1.const_data_ptr<scalar_t>());  // written only if write_y1
  const auto sol = make_params<scalar_t>(&a.y0, a.write_y1 ? a.k : std::vector<at::Tensor>{}, a.w);
  const auto err_p = make_params<scalar_t, double>(nullptr, a.k, a.err_w);
  double ratio = 0.0;
  int64_t offset = 0;
  for (const int64_t signed_len : a.segments) {
    if (signed_len < 0) {  // left out of the norm (a seminorm): only the solution
      if (a.write_y1) {
        at::parallel_for(offset, offset - signed_len, kGrain, [&](int64_t b, int64_t e) { combine_range(y1 + b, sol, b, e); });
      }
      offset -= signed_len;
      continue;
    }
    ratio = nan_max(ratio, rms_of_sum(segment_sum(a, y1, sol, err_p, offset, signed_len), signed_len));
    offset += signed_len;
  }
  return ratio;
}

// Per-sample steps: a prepared with unscaled coefficients (dt = 1), sample b scaled by
// dts[b]; writes y1 (when a.write_y1) and each sample's error ratio to ratios[b].
template <typename scalar_t>
void finish_per_sample_cpu(const Prepared& a, const double* dts, int64_t samples, double* ratios) {
  scalar_t* y1 = const_cast<scalar_t*>(a.y1.const_data_ptr<scalar_t>());
  const int64_t per = a.y0.numel() / samples;
  const auto sol0 = make_params<scalar_t>(&a.y0, a.write_y1 ? a.k : std::vector<at::Tensor>{}, a.w);
  const auto err0 = make_params<scalar_t, double>(nullptr, a.k, a.err_w);
  at::parallel_for(0, samples, std::max<int64_t>(1, kGrain / std::max<int64_t>(per, 1)), [&](int64_t b0, int64_t b1) {
    auto sol = sol0;
    auto err = err0;
    for (int64_t b = b0; b < b1; ++b) {
      for (int j = 0; j < sol.m; ++j) {
        sol.w[j] = static_cast<acc_t<scalar_t>>(a.w[j] * dts[b]);
      }
      for (int j = 0; j < err.m; ++j) {
        err.w[j] = a.err_w[j] * dts[b];
      }
      ratios[b] = rms_of_sum(segment_sum(a, y1, sol, err, b * per, per), per);
    }
  });
}

at::Tensor ratio_tensor(double ratio, const at::Tensor& y0) {
  return at::scalar_tensor(ratio, y0.options().dtype(at::kDouble));
}

// The scalar-dt kernels, with the name of the op that called them for error messages.
at::Tensor stage_named(const char* op, const at::Tensor& y0, at::TensorList k, at::ArrayRef<double> a, double dt) {
  const Prepared p = prepare_stage(y0, k, a, dt, op);
  ODECORE_DISPATCH(y0.scalar_type(), "rk_stage_cpu", [&] {
    combine_cpu(p.y1.mutable_data_ptr<scalar_t>(), make_params<scalar_t>(&p.y0, p.k, p.w), y0.numel());
  });
  return p.y1;
}

std::tuple<at::Tensor, at::Tensor> finish_named(const char* op, const at::Tensor& y0, at::TensorList k,
                                                at::ArrayRef<double> b, at::ArrayRef<double> e, double dt,
                                                const at::Tensor& rtol, const at::Tensor& atol,
                                                at::IntArrayRef segments) {
  const Prepared p = prepare_finish(y0, k, b, e, dt, rtol, atol, segments, op);
  double ratio = 0.0;
  ODECORE_DISPATCH(y0.scalar_type(), "rk_finish_cpu", [&] { ratio = finish_cpu<scalar_t>(p); });
  return {p.y1, ratio_tensor(ratio, y0)};
}

at::Tensor error_ratio_named(const char* op, const at::Tensor& y0, const at::Tensor& y1, at::TensorList k,
                             at::ArrayRef<double> e, double dt, const at::Tensor& rtol, const at::Tensor& atol,
                             at::IntArrayRef segments) {
  const Prepared p = prepare_error_ratio(y0, y1, k, e, dt, rtol, atol, segments, op);
  double ratio = 0.0;
  ODECORE_DISPATCH(y0.scalar_type(), "rk_error_ratio_cpu", [&] { ratio = finish_cpu<scalar_t>(p); });
  return ratio_tensor(ratio, y0);
}

at::Tensor rk_stage_cpu(const at::Tensor& y0, at::TensorList k, at::ArrayRef<double> a, double dt) {
  return stage_named("rk_stage", y0, k, a, dt);
}

std::tuple<at::Tensor, at::Tensor> rk_finish_cpu(const at::Tensor& y0, at::TensorList k, at::ArrayRef<double> b,
                                                 at::ArrayRef<double> e, double dt, const at::Tensor& rtol,
                                                 const at::Tensor& atol, at::IntArrayRef segments) {
  return finish_named("rk_finish", y0, k, b, e, dt, rtol, atol, segments);
}

at::Tensor rk_error_ratio_cpu(const at::Tensor& y0, const at::Tensor& y1, at::TensorList k, at::ArrayRef<double> e,
                              double dt, const at::Tensor& rtol, const at::Tensor& atol, at::IntArrayRef segments) {
  return error_ratio_named("rk_error_ratio", y0, y1, k, e, dt, rtol, atol, segments);
}

at::Tensor rk_interp_cpu(const at::Tensor& y0, at::TensorList k, at::ArrayRef<double> poly, double dt,
                         at::ArrayRef<double> x) {
  const Prepared p = prepare_interp(y0, k, poly, dt, x);
  const int64_t n = y0.numel();
  ODECORE_DISPATCH(y0.scalar_type(), "rk_interp_cpu", [&] {
    scalar_t* out = p.y1.mutable_data_ptr<scalar_t>();
    for (size_t q = 0; q < p.point_w.size(); ++q) {
      combine_cpu(out + q * n, make_params<scalar_t>(&p.y0, p.k, p.point_w[q]), n);
    }
  });
  return p.y1;
}

at::Tensor sde_step_cpu(const at::Tensor& y0, const at::Tensor& f, const at::Tensor& g, const at::Tensor& dw,
                        const c10::optional<at::Tensor>& gdg, double dt, double correction) {
  const auto t = prepare_sde_step(y0, f, g, dw, gdg);
  const bool has_gdg = t.size() == 6;
  const at::Tensor& out = t.back();
  ODECORE_DISPATCH(y0.scalar_type(), "sde_step_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const scalar_t* y = t[0].const_data_ptr<scalar_t>();
    const scalar_t* fp = t[1].const_data_ptr<scalar_t>();
    const scalar_t* gp = t[2].const_data_ptr<scalar_t>();
    const scalar_t* wp = t[3].const_data_ptr<scalar_t>();
    const scalar_t* gdgp = has_gdg ? t[4].const_data_ptr<scalar_t>() : nullptr;
    scalar_t* o = const_cast<scalar_t*>(out.const_data_ptr<scalar_t>());
    at::parallel_for(0, y0.numel(), kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        o[i] = static_cast<scalar_t>(sde_update<acc>(y[i], fp[i], gp[i], wp[i], has_gdg ? acc(gdgp[i]) : acc(0), has_gdg,
                                                     static_cast<acc>(dt), static_cast<acc>(correction)));
      }
    });
  });
  return out;
}

// The *_dt ops: on the CPU the step size is a plain memory read.
at::Tensor rk_stage_dt_cpu(const at::Tensor& y0, at::TensorList k, at::ArrayRef<double> a, const at::Tensor& dt) {
  const int64_t samples = check_dt_tensor("rk_stage_dt", dt, y0);
  if (samples == 1) {
    return stage_named("rk_stage_dt", y0, k, a, host_dt(dt));
  }
  const Prepared p = prepare_stage(y0, k, a, 1.0, "rk_stage_dt");
  const double* dts = dt.const_data_ptr<double>();
  const int64_t per = y0.numel() / samples;
  ODECORE_DISPATCH(y0.scalar_type(), "rk_stage_dt_cpu", [&] {
    scalar_t* out = p.y1.mutable_data_ptr<scalar_t>();
    const auto p0 = make_params<scalar_t>(&p.y0, p.k, p.w);
    at::parallel_for(0, samples, std::max<int64_t>(1, kGrain / std::max<int64_t>(per, 1)), [&](int64_t b0, int64_t b1) {
      auto params = p0;
      for (int64_t b = b0; b < b1; ++b) {
        for (int j = 0; j < params.m; ++j) {
          params.w[j] = static_cast<acc_t<scalar_t>>(p.w[j] * dts[b]);
        }
        combine_range(out + b * per, params, b * per, (b + 1) * per);
      }
    });
  });
  return p.y1;
}

// Per-sample error ratios (B,) of p, prepared with unscaled coefficients (dt = 1).
at::Tensor per_sample_ratios_cpu(const char* op, const Prepared& p, const at::Tensor& dt, int64_t samples) {
  check_per_sample_segments(op, p.segments, p.y0.numel());
  at::Tensor ratios = at::empty({samples}, p.y0.options().dtype(at::kDouble));
  ODECORE_DISPATCH(p.y0.scalar_type(), "rk_per_sample_ratios_cpu", [&] {
    finish_per_sample_cpu<scalar_t>(p, dt.const_data_ptr<double>(), samples, ratios.mutable_data_ptr<double>());
  });
  return ratios;
}

std::tuple<at::Tensor, at::Tensor> rk_finish_dt_cpu(const at::Tensor& y0, at::TensorList k, at::ArrayRef<double> b,
                                                    at::ArrayRef<double> e, const at::Tensor& dt, const at::Tensor& rtol,
                                                    const at::Tensor& atol, at::IntArrayRef segments) {
  const int64_t samples = check_dt_tensor("rk_finish_dt", dt, y0);
  if (samples == 1) {
    return finish_named("rk_finish_dt", y0, k, b, e, host_dt(dt), rtol, atol, segments);
  }
  const Prepared p = prepare_finish(y0, k, b, e, 1.0, rtol, atol, segments, "rk_finish_dt");
  return {p.y1, per_sample_ratios_cpu("rk_finish_dt", p, dt, samples)};
}

at::Tensor rk_error_ratio_dt_cpu(const at::Tensor& y0, const at::Tensor& y1, at::TensorList k, at::ArrayRef<double> e,
                                 const at::Tensor& dt, const at::Tensor& rtol, const at::Tensor& atol,
                                 at::IntArrayRef segments) {
  const int64_t samples = check_dt_tensor("rk_error_ratio_dt", dt, y0);
  if (samples == 1) {
    return error_ratio_named("rk_error_ratio_dt", y0, y1, k, e, host_dt(dt), rtol, atol, segments);
  }
  return per_sample_ratios_cpu(
      "rk_error_ratio_dt", prepare_error_ratio(y0, y1, k, e, 1.0, rtol, atol, segments, "rk_error_ratio_dt"), dt,
      samples);
}

void rk_control_cpu(const at::Tensor& state, const at::Tensor& accept, const at::Tensor& stage_t, const at::Tensor& dt,
                    const at::Tensor& ratio, const at::Tensor& times, at::ArrayRef<double> c,
                    at::ArrayRef<double> params) {
  check_control(state, accept, stage_t, dt, ratio, times, c, params);
  const ControlParams p = control_params(params);
  const int64_t samples = state.dim() == 1 ? 1 : state.size(0);
  const int64_t n_times = times.size(times.dim() - 1);
  const int64_t times_stride = times.dim() == 1 ? 0 : n_times;
  const int nc = static_cast<int>(c.size());
  AT_DISPATCH_FLOATING_TYPES(stage_t.scalar_type(), "rk_control_cpu", [&] {
    double* st = state.mutable_data_ptr<double>();
    bool* acc = accept.mutable_data_ptr<bool>();
    scalar_t* stt = stage_t.mutable_data_ptr<scalar_t>();
    double* dtp = dt.mutable_data_ptr<double>();
    const double* r = ratio.const_data_ptr<double>();
    const double* tp = times.const_data_ptr<double>();
    at::parallel_for(0, samples, 4096, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        control_update<scalar_t>(st + b * kNumSlots, acc + b, stt + b * nc, dtp + b, r[b], tp + b * times_stride, n_times,
                                 c.data(), nc, p);
      }
    });
  });
}

void rk_dense_into_cpu(const at::Tensor& out, const at::Tensor& times, const at::Tensor& state, const at::Tensor& y0,
                       const at::Tensor& y1, at::TensorList k, at::ArrayRef<double> poly) {
  const int64_t samples = check_dense_into(out, times, state, y0, y1, k, poly);
  const int64_t n_times = times.size(times.dim() - 1);
  const int64_t times_stride = times.dim() == 1 ? 0 : n_times;
  const double* states = state.const_data_ptr<double>();
  for (int64_t b = 0; b < samples; ++b) {
    const double* st = states + b * kNumSlots;
    const int64_t first = static_cast<int64_t>(st[kFirstOut]);
    const int64_t last = static_cast<int64_t>(st[kNextOut]);
    TORCH_CHECK_VALUE(0 <= first && first <= last && last <= n_times, "rk_dense_into: the state's output rows [",
                      first, ", ", last, ") of sample ", b, " are not within the ", n_times, " output times");
  }
  const at::Tensor y0c = y0.contiguous();
  const at::Tensor y1c = y1.contiguous();
  std::vector<at::Tensor> kc;
  for (const auto& t : k) {
    kc.push_back(t.contiguous());
  }
  const int64_t n = y0.numel();
  const int64_t per = n / samples;
  const double* tp = times.const_data_ptr<double>();
  ODECORE_DISPATCH(y0.scalar_type(), "rk_dense_into_cpu", [&] {
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    const scalar_t* y1p = y1c.const_data_ptr<scalar_t>();
    for (int64_t b = 0; b < samples; ++b) {
      const double* st = states + b * kNumSlots;
      const int64_t first = static_cast<int64_t>(st[kFirstOut]);
      const int64_t last = static_cast<int64_t>(st[kNextOut]);
      const double t0 = st[kOutT0];
      const double span = st[kOutT1] - t0;
      const double dt = st[kOutDt];
      for (int64_t row = first; row < last; ++row) {
        const double x = (tp[b * times_stride + row] - t0) / span;
        scalar_t* dst = o + row * n + b * per;
        if (x == 1.0) {  // the step's end: the solution itself, as the host loop
          std::copy(y1p + b * per, y1p + (b + 1) * per, dst);
        } else {
          const auto params = make_params<scalar_t>(&y0c, kc, dense_weights(poly, static_cast<int64_t>(kc.size()), x, dt));
          if (samples == 1) {
            combine_cpu(dst, params, n);
          } else {
            combine_range(dst, params, b * per, (b + 1) * per);
          }
        }
      }
    }
  });
}

at::Tensor rk_initial_dt_cpu(const at::Tensor& h0, const at::Tensor& d1, const at::Tensor& d2, double order,
                             double round_f32) {
  check_initial_dt(h0, d1, d2);
  at::Tensor out = at::empty_like(h0);
  const double* h = h0.const_data_ptr<double>();
  const double* a = d1.const_data_ptr<double>();
  const double* b = d2.const_data_ptr<double>();
  double* o = out.mutable_data_ptr<double>();
  for (int64_t i = 0; i < h0.numel(); ++i) {
    o[i] = initial_dt(h[i], a[i], b[i], order, round_f32 != 0.0);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(odecore, CPU, m) {
  m.impl("rk_stage_dt", &rk_stage_dt_cpu);
  m.impl("rk_finish_dt", &rk_finish_dt_cpu);
  m.impl("rk_error_ratio_dt", &rk_error_ratio_dt_cpu);
  m.impl("rk_control", &rk_control_cpu);
  m.impl("rk_dense_into", &rk_dense_into_cpu);
  m.impl("rk_initial_dt", &rk_initial_dt_cpu);
  m.impl("sde_step", &sde_step_cpu);
  m.impl("rk_stage", &rk_stage_cpu);
  m.impl("rk_finish", &rk_finish_cpu);
  m.impl("rk_error_ratio", &rk_error_ratio_cpu);
  m.impl("rk_interp", &rk_interp_cpu);
}

}  // namespace odecore
