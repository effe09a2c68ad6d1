// CPU kernels of the fused Runge-Kutta ops: at::parallel_for over contiguous
// memory, element math from rk_math.h.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
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

std::vector<at::Tensor> contiguous_terms(at::TensorList k) {
  std::vector<at::Tensor> out;
  out.reserve(k.size());
  for (const auto& t : k) {
    out.push_back(t.contiguous());
  }
  return out;
}

template <typename scalar_t>
CombineParams<scalar_t, at::opmath_type<scalar_t>> make_params(const at::Tensor& y0,
                                                                const std::vector<at::Tensor>& k,
                                                                const std::vector<double>& w) {
  CombineParams<scalar_t, at::opmath_type<scalar_t>> p;
  p.y0 = y0.const_data_ptr<scalar_t>();
  p.m = static_cast<int>(k.size());
  for (size_t j = 0; j < k.size(); ++j) {
    p.k[j] = k[j].const_data_ptr<scalar_t>();
    p.w[j] = static_cast<at::opmath_type<scalar_t>>(w[j]);
  }
  return p;
}

template <typename scalar_t>
void combine_cpu(scalar_t* out, const CombineParams<scalar_t, at::opmath_type<scalar_t>>& p,
                 int64_t n) {
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    combine_range(out + begin, p, begin, end);
  });
}

at::Tensor empty_like_contiguous(const at::Tensor& y0) {
  return at::empty(y0.sizes(), y0.options().memory_format(at::MemoryFormat::Contiguous));
}

#define ODECORE_DISPATCH(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

at::Tensor rk_stage_cpu(const at::Tensor& y0, at::TensorList k, at::ArrayRef<double> a, double dt) {
  check_terms("rk_stage", y0, k, a.size(), "a");
  const auto y0c = y0.contiguous();
  const auto kc = contiguous_terms(k);
  const auto w = scaled_weights(a, dt);
  auto out = empty_like_contiguous(y0);
  ODECORE_DISPATCH(y0.scalar_type(), "rk_stage_cpu", [&] {
    combine_cpu(out.mutable_data_ptr<scalar_t>(), make_params<scalar_t>(y0c, kc, w), y0.numel());
  });
  return out;
}

// Writes y1 (when `write_y1`) and returns the error ratio, all in one pass over memory.
template <typename scalar_t>
double finish_cpu(scalar_t* y1, bool write_y1, const CombineParams<scalar_t, at::opmath_type<scalar_t>>& sol,
                  const std::vector<at::Tensor>& k, const std::vector<double>& err_w,
                  const at::Tensor& rtol, const at::Tensor& atol, at::IntArrayRef segments) {
  // The error estimate is formed in double whatever the state's dtype: it is a
  // difference of nearly equal quantities and steers every step.
  CombineParams<scalar_t, double> err_p;
  err_p.y0 = nullptr;
  err_p.m = static_cast<int>(k.size());
  for (size_t j = 0; j < k.size(); ++j) {
    err_p.k[j] = k[j].const_data_ptr<scalar_t>();
    err_p.w[j] = err_w[j];
  }
  const scalar_t* y0 = sol.y0;
  const double* rt = rtol.const_data_ptr<double>();
  const double* at_ = atol.const_data_ptr<double>();
  const int64_t rs = rtol.numel() == 1 ? 0 : 1;
  const int64_t as = atol.numel() == 1 ? 0 : 1;

  double ratio = 0.0;
  int64_t offset = 0;
  for (const int64_t len : segments) {
    const int64_t nblocks = (len + kReduceBlock - 1) / kReduceBlock;
    std::vector<double> partial(nblocks, 0.0);
    const auto reduce_blocks = [&](int64_t b0, int64_t b1) {
      std::vector<double> err(kReduceBlock);
      for (int64_t blk = b0; blk < b1; ++blk) {
        const int64_t begin = offset + blk * kReduceBlock;
        const int64_t end = std::min(begin + kReduceBlock, offset + len);
        if (write_y1) {
          combine_range(y1 + begin, sol, begin, end);
        }
        combine_range(err.data(), err_p, begin, end);
        const int64_t len_b = end - begin;
        if (rs == 0 && as == 0) {  // scalar tolerances: the common case, kept vectorisable
          const double r0 = rt[0];
          const double a0 = at_[0];
          for (int64_t i = 0; i < len_b; ++i) {
            err[i] = scaled_error_sq(err[i], static_cast<double>(y0[begin + i]),
                                     static_cast<double>(y1[begin + i]), r0, a0);
          }
        } else {
          for (int64_t i = 0; i < len_b; ++i) {
            err[i] = scaled_error_sq(err[i], static_cast<double>(y0[begin + i]),
                                     static_cast<double>(y1[begin + i]), rt[(begin + i) * rs],
                                     at_[(begin + i) * as]);
          }
        }
        // eight fixed lanes: vectorisable, and the same order for any thread count
        double lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        int64_t i = 0;
        for (; i + 8 <= len_b; i += 8) {
          for (int l = 0; l < 8; ++l) {
            lanes[l] += err[i + l];
          }
        }
        for (; i < len_b; ++i) {
          lanes[0] += err[i];
        }
        const double sum = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
        partial[blk] = sum;
      }
    };
    // parallel_for would start the thread pool even for a single block
    if (nblocks > 1) {
      at::parallel_for(0, nblocks, 1, reduce_blocks);
    } else {
      reduce_blocks(0, nblocks);
    }
    double sum = 0.0;
    for (const double s : partial) {
      sum += s;
    }
    ratio = nan_max(ratio, rms_of_sum(sum, len));
    offset += len;
  }
  return ratio;
}

void check_finish_args(const char* op, const at::Tensor& y0, at::TensorList k,
                       at::ArrayRef<double> e, const at::Tensor& rtol, const at::Tensor& atol,
                       at::IntArrayRef segments) {
  check_terms(op, y0, k, e.size(), "e");
  check_tolerance(op, "rtol", rtol, y0);
  check_tolerance(op, "atol", atol, y0);
  check_segments(op, segments, y0.numel());
}

at::Tensor as_double(const at::Tensor& t) {
  return t.to(at::kDouble).contiguous();
}

std::tuple<at::Tensor, at::Tensor> rk_finish_cpu(const at::Tensor& y0, at::TensorList k,
                                                 at::ArrayRef<double> b, at::ArrayRef<double> e,
                                                 double dt, const at::Tensor& rtol,
                                                 const at::Tensor& atol, at::IntArrayRef segments) {
  check_finish_args("rk_finish", y0, k, e, rtol, atol, segments);
  TORCH_CHECK_VALUE(b.size() == e.size(), "rk_finish: b has ", b.size(), " coefficients but e has ",
                    e.size());
  const auto y0c = y0.contiguous();
  const auto kc = contiguous_terms(k);
  const auto w = scaled_weights(b, dt);
  const auto err_w = scaled_weights(e, dt);
  auto y1 = empty_like_contiguous(y0);
  double ratio = 0.0;
  ODECORE_DISPATCH(y0.scalar_type(), "rk_finish_cpu", [&] {
    ratio = finish_cpu(y1.mutable_data_ptr<scalar_t>(), true, make_params<scalar_t>(y0c, kc, w), kc,
                       err_w, as_double(rtol), as_double(atol), segments);
  });
  return {y1, at::scalar_tensor(ratio, y0.options().dtype(at::kDouble))};
}

at::Tensor rk_error_ratio_cpu(const at::Tensor& y0, const at::Tensor& y1, at::TensorList k,
                              at::ArrayRef<double> e, double dt, const at::Tensor& rtol,
                              const at::Tensor& atol, at::IntArrayRef segments) {
  check_finish_args("rk_error_ratio", y0, k, e, rtol, atol, segments);
  check_same_as_y0("rk_error_ratio", "y1", y1, y0);
  const auto y0c = y0.contiguous();
  const auto y1c = y1.contiguous();
  const auto kc = contiguous_terms(k);
  const auto err_w = scaled_weights(e, dt);
  double ratio = 0.0;
  ODECORE_DISPATCH(y0.scalar_type(), "rk_error_ratio_cpu", [&] {
    // y1 is only read: write_y1 is false, so the const_cast never writes.
    ratio = finish_cpu(const_cast<scalar_t*>(y1c.const_data_ptr<scalar_t>()), false,
                       make_params<scalar_t>(y0c, {}, {}), kc, err_w, as_double(rtol),
                       as_double(atol), segments);
  });
  return at::scalar_tensor(ratio, y0.options().dtype(at::kDouble));
}

at::Tensor rk_interp_cpu(const at::Tensor& y0, at::TensorList k, at::ArrayRef<double> poly,
                         double dt, at::ArrayRef<double> x) {
  check_terms("rk_interp", y0, k, k.size(), "k");
  check_dense_poly("rk_interp", k, poly);
  const auto y0c = y0.contiguous();
  const auto kc = contiguous_terms(k);
  auto out = at::empty(dense_output_shape(y0, x.size()), y0.options());
  const int64_t n = y0.numel();
  ODECORE_DISPATCH(y0.scalar_type(), "rk_interp_cpu", [&] {
    scalar_t* out_p = out.mutable_data_ptr<scalar_t>();
    for (size_t p = 0; p < x.size(); ++p) {
      const auto w = dense_weights(poly, static_cast<int64_t>(kc.size()), x[p], dt);
      combine_cpu(out_p + p * n, make_params<scalar_t>(y0c, kc, w), n);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(odecore, CPU, m) {
  m.impl("rk_stage", &rk_stage_cpu);
  m.impl("rk_finish", &rk_finish_cpu);
  m.impl("rk_error_ratio", &rk_error_ratio_cpu);
  m.impl("rk_interp", &rk_interp_cpu);
}

}  // namespace odecore
