// CUDA backend of the fused ops: arguments from the shared front end, kernels from
// rk_kernels.cu, on the current stream of y0's device, with no host synchronisation.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
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

// Runs both reduction passes; y1 is written first when p.write_y1.
at::Tensor error_ratio_cuda(const Prepared& p) {
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
    const auto sol = make_params<scalar_t>(&p.y0, p.write_y1 ? p.k : std::vector<at::Tensor>{}, p.w);
    const auto err = make_params<scalar_t, double>(nullptr, p.k, p.err_w);
    C10_CUDA_CHECK(cuda::launch_error_ratio<scalar_t>(y1, p.write_y1, sol, err, norm, partials.mutable_data_ptr<double>(),
                                                      ratio.mutable_data_ptr<double>(), current_stream()));
    if (p.write_y1) {
      for (const auto& [start, len] : excluded) {  // the solution there, without the norm
        auto part = sol;
        part.y0 += start;
        for (int j = 0; j < part.m; ++j) {
          part.k[j] += start;
        }
        C10_CUDA_CHECK(cuda::launch_combine<scalar_t>(y1 + start, part, len, current_stream()));
      }
    }
  });
  return ratio;
}

at::Tensor rk_stage_cuda(const at::Tensor& y0, at::TensorList k, at::ArrayRef<double> a, double dt) {
  const c10::cuda::CUDAGuard guard(y0.device());
  const Prepared p = prepare_stage(y0, k, a, dt);
  ODECORE_DISPATCH(y0.scalar_type(), "rk_stage_cuda", [&] {
    C10_CUDA_CHECK(cuda::launch_combine<scalar_t>(p.y1.mutable_data_ptr<scalar_t>(), make_params<scalar_t>(&p.y0, p.k, p.w),
                                                  y0.numel(), current_stream()));
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
      C10_CUDA_CHECK(cuda::launch_combine<scalar_t>(out + q * n, make_params<scalar_t>(&p.y0, p.k, p.point_w[q]), n,
                                                    current_stream()));
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

}  // namespace

TORCH_LIBRARY_IMPL(odecore, CUDA, m) {
  m.impl("sde_step", &sde_step_cuda);
  m.impl("rk_stage", &rk_stage_cuda);
  m.impl("rk_finish", &rk_finish_cuda);
  m.impl("rk_error_ratio", &rk_error_ratio_cuda);
  m.impl("rk_interp", &rk_interp_cuda);
}

}  // namespace odecore
