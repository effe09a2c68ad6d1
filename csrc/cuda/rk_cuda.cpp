// CUDA backend of the fused ops: arguments from the shared front end, kernels from
// rk_kernels.cu, on the current stream of y0's device, with no host synchronisation.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>
#include <utility>
#include <vector>

#include "launch.h"
#include "odecore/ops.h"

namespace odecore {
namespace {

cudaStream_t current_stream() {
  return c10::cuda::getCurrentCUDAStream().stream();
}

// Runs both reduction passes; y1 is written first when p.write_y1. With a step-size
// tensor dt, p's weights are the unscaled coefficients (prepared with dt = 1).
at::Tensor error_ratio_cuda(const Prepared& p, const double* dt = nullptr) {
  TORCH_CHECK_VALUE(p.segments.size() <= static_cast<size_t>(cuda::kMaxSegments), "odecore: the CUDA error norm takes at most ",
                    cuda::kMaxSegments, " segments (tensors of a tuple state), got ", p.segments.size());
  cuda::NormParams norm{};
  norm.rtol = p.rtol.const_data_ptr<double>();
  norm.atol = p.atol.const_data_ptr<double>();
  norm.rtol_stride = p.rtol.numel() == 1 ? 0 : 1;
  norm.atol_stride = p.atol.numel() == 1 ? 0 : 1;
  int64_t offset = 0;
  int blocks = 0;
  int n = 0;
  std::vector<std::pair<int64_t, int64_t>> excluded;  // (offset, length) left out of the norm
  for (const int64_t len : p.segments) {
    if (len < 0) {
      excluded.emplace_back(offset, -len);
      offset -= len;
      continue;
    }
    norm.segment_len[n] = len;
    norm.segment_offset[n] = offset;
    norm.segment_blocks[n] = cuda::segment_blocks(len);
    norm.block_offset[n] = blocks;
    offset += len;
    blocks += norm.segment_blocks[n];
    ++n;
  }
  norm.num_segments = n;
  const auto opts = p.y0.options().dtype(at::kDouble);
  auto partials = at::empty({blocks > 0 ? blocks : 1}, opts);
  auto ratio = at::empty({}, opts);
  ODECORE_DISPATCH(p.y0.scalar_type(), "rk_error_ratio_cuda", [&] {
    auto* y1 = const_cast<scalar_t*>(p.y1.const_data_ptr<scalar_t>());  // written only if write_y1
    const auto sol = make_params<scalar_t, double>(&p.y0, p.write_y1 ? p.k : std::vector<at::Tensor>{}, p.w);
    const auto err = make_params<scalar_t, double>(nullptr, p.k, p.err_w);
    C10_CUDA_CHECK(cuda::launch_error_ratio<scalar_t>(y1, p.write_y1, sol, err, dt, norm,
                                                      partials.mutable_data_ptr<double>(),
                                                      ratio.mutable_data_ptr<double>(), current_stream()));
    if (p.write_y1) {
      for (const auto& [start, len] : excluded) {  // the solution there, without the norm
        auto part = sol;
        part.y0 += start;
        for (int j = 0; j < part.m; ++j) {
          part.k[j] += start;
        }
        C10_CUDA_CHECK(cuda::launch_combine<scalar_t>(y1 + start, part, dt, len, current_stream()));
      }
    }
  });
  return ratio;
}

at::Tensor rk_stage_cuda(const at::Tensor& y0, at::TensorList k, at::ArrayRef<double> a, double dt) {
  const c10::cuda::CUDAGuard guard(y0.device());
  const Prepared p = prepare_stage(y0, k, a, dt);
  ODECORE_DISPATCH(y0.scalar_type(), "rk_stage_cuda", [&] {
    C10_CUDA_CHECK(cuda::launch_combine<scalar_t>(p.y1.mutable_data_ptr<scalar_t>(),
                                                  make_params<scalar_t, double>(&p.y0, p.k, p.w), nullptr, y0.numel(),
                                                  current_stream()));
  });
  return p.y1;
}

std::tuple<at::Tensor, at::Tensor> rk_finish_cuda(const at::Tensor& y0, at::TensorList k, at::ArrayRef<double> b,
                                                  at::ArrayRef<double> e, double dt, const at::Tensor& rtol,
                                                  const at::Tensor& atol, at::IntArrayRef segments) {
  const c10::cuda::CUDAGuard guard(y0.device());
  const Prepared p = prepare_finish(y0, k, b, e, dt, rtol, atol, segments);
  return {p.y1, error_ratio_cuda(p)};
}

at::Tensor rk_error_ratio_cuda(const at::Tensor& y0, const at::Tensor& y1, at::TensorList k, at::ArrayRef<double> e,
                               double dt, const at::Tensor& rtol, const at::Tensor& atol, at::IntArrayRef segments) {
  const c10::cuda::CUDAGuard guard(y0.device());
  return error_ratio_cuda(prepare_error_ratio(y0, y1, k, e, dt, rtol, atol, segments));
}

at::Tensor rk_interp_cuda(const at::Tensor& y0, at::TensorList k, at::ArrayRef<double> poly, double dt,
                          at::ArrayRef<double> x) {
  const c10::cuda::CUDAGuard guard(y0.device());
  const Prepared p = prepare_interp(y0, k, poly, dt, x);
  const int64_t n = y0.numel();
  ODECORE_DISPATCH(y0.scalar_type(), "rk_interp_cuda", [&] {
    scalar_t* out = p.y1.mutable_data_ptr<scalar_t>();
    for (size_t q = 0; q < p.point_w.size(); ++q) {
      C10_CUDA_CHECK(cuda::launch_combine<scalar_t>(out + q * n, make_params<scalar_t, double>(&p.y0, p.k, p.point_w[q]),
                                                    nullptr, n, current_stream()));
    }
  });
  return p.y1;
}

at::Tensor sde_step_cuda(const at::Tensor& y0, const at::Tensor& f, const at::Tensor& g, const at::Tensor& dw,
                         const c10::optional<at::Tensor>& gdg, double dt, double correction) {
  const c10::cuda::CUDAGuard guard(y0.device());
  const auto t = prepare_sde_step(y0, f, g, dw, gdg);
  const bool has_gdg = t.size() == 6;
  ODECORE_DISPATCH(y0.scalar_type(), "sde_step_cuda", [&] {
    C10_CUDA_CHECK(cuda::launch_sde_step<scalar_t>(
        const_cast<scalar_t*>(t.back().const_data_ptr<scalar_t>()), t[0].const_data_ptr<scalar_t>(),
        t[1].const_data_ptr<scalar_t>(), t[2].const_data_ptr<scalar_t>(), t[3].const_data_ptr<scalar_t>(),
        has_gdg ? t[4].const_data_ptr<scalar_t>() : nullptr, dt, correction, y0.numel(), current_stream()));
  });
  return t.back();
}

// The *_dt ops: the weights are formed on the device from the coefficients and *dt
// (one dt, or one per sample).
at::Tensor rk_stage_dt_cuda(const at::Tensor& y0, at::TensorList k, at::ArrayRef<double> a, const at::Tensor& dt) {
  const c10::cuda::CUDAGuard guard(y0.device());
  const int64_t samples = check_dt_tensor("rk_stage_dt", dt, y0);
  const Prepared p = prepare_stage(y0, k, a, 1.0, "rk_stage_dt");
  ODECORE_DISPATCH(y0.scalar_type(), "rk_stage_dt_cuda", [&] {
    const auto params = make_params<scalar_t, double>(&p.y0, p.k, p.w);
    if (samples == 1) {
      C10_CUDA_CHECK(cuda::launch_combine<scalar_t>(p.y1.mutable_data_ptr<scalar_t>(), params,
                                                    dt.const_data_ptr<double>(), y0.numel(), current_stream()));
    } else {
      C10_CUDA_CHECK(cuda::launch_combine_per_sample<scalar_t>(p.y1.mutable_data_ptr<scalar_t>(), params,
                                                               dt.const_data_ptr<double>(), y0.numel() / samples,
                                                               y0.numel(), current_stream()));
    }
  });
  return p.y1;
}

// Per-sample error ratios (B,) of a prepared with unscaled coefficients.
at::Tensor error_per_sample_cuda(const Prepared& p, const at::Tensor& dt, int64_t samples, const char* op) {
  check_per_sample_segments(op, p.segments, p.y0.numel());
  cuda::NormParams norm{};
  norm.rtol = p.rtol.const_data_ptr<double>();
  norm.atol = p.atol.const_data_ptr<double>();
  norm.rtol_stride = p.rtol.numel() == 1 ? 0 : 1;
  norm.atol_stride = p.atol.numel() == 1 ? 0 : 1;
  auto ratios = at::empty({samples}, p.y0.options().dtype(at::kDouble));
  ODECORE_DISPATCH(p.y0.scalar_type(), "rk_error_per_sample_cuda", [&] {
    auto* y1 = const_cast<scalar_t*>(p.y1.const_data_ptr<scalar_t>());
    const auto sol = make_params<scalar_t, double>(&p.y0, p.write_y1 ? p.k : std::vector<at::Tensor>{}, p.w);
    const auto err = make_params<scalar_t, double>(nullptr, p.k, p.err_w);
    C10_CUDA_CHECK(cuda::launch_error_per_sample<scalar_t>(y1, p.write_y1, sol, err, dt.const_data_ptr<double>(), norm,
                                                           p.y0.numel() / samples, samples,
                                                           ratios.mutable_data_ptr<double>(), current_stream()));
  });
  return ratios;
}

std::tuple<at::Tensor, at::Tensor> rk_finish_dt_cuda(const at::Tensor& y0, at::TensorList k, at::ArrayRef<double> b,
                                                     at::ArrayRef<double> e, const at::Tensor& dt,
                                                     const at::Tensor& rtol, const at::Tensor& atol,
                                                     at::IntArrayRef segments) {
  const c10::cuda::CUDAGuard guard(y0.device());
  const int64_t samples = check_dt_tensor("rk_finish_dt", dt, y0);
  const Prepared p = prepare_finish(y0, k, b, e, 1.0, rtol, atol, segments, "rk_finish_dt");
  if (samples > 1) {
    return {p.y1, error_per_sample_cuda(p, dt, samples, "rk_finish_dt")};
  }
  return {p.y1, error_ratio_cuda(p, dt.const_data_ptr<double>())};
}

at::Tensor rk_error_ratio_dt_cuda(const at::Tensor& y0, const at::Tensor& y1, at::TensorList k, at::ArrayRef<double> e,
                                  const at::Tensor& dt, const at::Tensor& rtol, const at::Tensor& atol,
                                  at::IntArrayRef segments) {
  const c10::cuda::CUDAGuard guard(y0.device());
  const int64_t samples = check_dt_tensor("rk_error_ratio_dt", dt, y0);
  const Prepared p = prepare_error_ratio(y0, y1, k, e, 1.0, rtol, atol, segments, "rk_error_ratio_dt");
  if (samples > 1) {
    return error_per_sample_cuda(p, dt, samples, "rk_error_ratio_dt");
  }
  return error_ratio_cuda(p, dt.const_data_ptr<double>());
}

void rk_control_cuda(const at::Tensor& state, const at::Tensor& accept, const at::Tensor& stage_t, const at::Tensor& dt,
                     const at::Tensor& ratio, const at::Tensor& times, at::ArrayRef<double> c,
                     at::ArrayRef<double> params) {
  check_control(state, accept, stage_t, dt, ratio, times, c, params);
  TORCH_CHECK_VALUE(c.size() <= static_cast<size_t>(kMaxTerms), "rk_control: at most ", kMaxTerms, " nodes, got ",
                    c.size());
  const c10::cuda::CUDAGuard guard(state.device());
  cuda::Nodes nodes{};
  nodes.n = static_cast<int>(c.size());
  for (size_t i = 0; i < c.size(); ++i) {
    nodes.c[i] = c[i];
  }
  const int64_t samples = state.dim() == 1 ? 1 : state.size(0);
  const int64_t n_times = times.size(times.dim() - 1);
  AT_DISPATCH_FLOATING_TYPES(stage_t.scalar_type(), "rk_control_cuda", [&] {
    C10_CUDA_CHECK(cuda::launch_control<scalar_t>(state.mutable_data_ptr<double>(), accept.mutable_data_ptr<bool>(),
                                                  stage_t.mutable_data_ptr<scalar_t>(), dt.mutable_data_ptr<double>(),
                                                  ratio.const_data_ptr<double>(),
                                                  times.const_data_ptr<double>(), n_times,
                                                  times.dim() == 1 ? 0 : n_times, samples, nodes,
                                                  control_params(params), current_stream()));
  });
}

void rk_dense_into_cuda(const at::Tensor& out, const at::Tensor& times, const at::Tensor& state, const at::Tensor& y0,
                        const at::Tensor& y1, at::TensorList k, at::ArrayRef<double> poly) {
  const int64_t samples = check_dense_into(out, times, state, y0, y1, k, poly);
  TORCH_CHECK_VALUE(poly.size() <= static_cast<size_t>(cuda::kMaxPoly), "rk_dense_into: at most ", cuda::kMaxPoly,
                    " polynomial coefficients on CUDA, got ", poly.size());
  const c10::cuda::CUDAGuard guard(y0.device());
  cuda::DensePoly dense{};
  dense.degree = k.empty() ? 0 : static_cast<int>(poly.size() / k.size());
  for (size_t i = 0; i < poly.size(); ++i) {
    dense.poly[i] = poly[i];
  }
  const at::Tensor y0c = y0.contiguous();
  const at::Tensor y1c = y1.contiguous();
  std::vector<at::Tensor> kc;
  for (const auto& t : k) {
    kc.push_back(t.contiguous());
  }
  const std::vector<double> unused(kc.size(), 0.0);  // the kernel forms the weights from the state
  const int64_t n_times = times.size(times.dim() - 1);
  ODECORE_DISPATCH(y0.scalar_type(), "rk_dense_into_cuda", [&] {
    const auto params = make_params<scalar_t, double>(&y0c, kc, unused);
    if (samples == 1 && times.dim() == 1) {
      C10_CUDA_CHECK(cuda::launch_dense_into<scalar_t>(out.mutable_data_ptr<scalar_t>(), times.const_data_ptr<double>(),
                                                       state.const_data_ptr<double>(), n_times, params,
                                                       y1c.const_data_ptr<scalar_t>(), dense, y0.numel(),
                                                       current_stream()));
    } else {
      C10_CUDA_CHECK(cuda::launch_dense_into_per_sample<scalar_t>(
          out.mutable_data_ptr<scalar_t>(), times.const_data_ptr<double>(), times.dim() == 1 ? 0 : n_times,
          state.const_data_ptr<double>(), n_times, params, y1c.const_data_ptr<scalar_t>(), dense, y0.numel() / samples,
          y0.numel(), current_stream()));
    }
  });
}

at::Tensor rk_initial_dt_cuda(const at::Tensor& h0, const at::Tensor& d1, const at::Tensor& d2, double order,
                              double round_f32) {
  check_initial_dt(h0, d1, d2);
  const c10::cuda::CUDAGuard guard(h0.device());
  at::Tensor out = at::empty_like(h0);
  C10_CUDA_CHECK(cuda::launch_initial_dt(out.mutable_data_ptr<double>(), h0.const_data_ptr<double>(),
                                         d1.const_data_ptr<double>(), d2.const_data_ptr<double>(), h0.numel(), order,
                                         round_f32 != 0.0, current_stream()));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(odecore, CUDA, m) {
  m.impl("rk_stage_dt", &rk_stage_dt_cuda);
  m.impl("rk_finish_dt", &rk_finish_dt_cuda);
  m.impl("rk_error_ratio_dt", &rk_error_ratio_dt_cuda);
  m.impl("rk_control", &rk_control_cuda);
  m.impl("rk_dense_into", &rk_dense_into_cuda);
  m.impl("rk_initial_dt", &rk_initial_dt_cuda);
  m.impl("sde_step", &sde_step_cuda);
  m.impl("rk_stage", &rk_stage_cuda);
  m.impl("rk_finish", &rk_finish_cuda);
  m.impl("rk_error_ratio", &rk_error_ratio_cuda);
  m.impl("rk_interp", &rk_interp_cuda);
}

}  // namespace odecore
