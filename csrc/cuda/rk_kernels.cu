// CUDA kernels of the fused Runge-Kutta ops: grid-stride loops on the caller's
// stream, element math from rk_math.h, deterministic two-pass reductions.
#include "launch.h"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

namespace odecore {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxBlocks = 1024;

int blocks_for(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<int>(blocks < kMaxBlocks ? (blocks > 0 ? blocks : 1) : kMaxBlocks);
}

// The block's weights in its shared memory: p.w, or p.w scaled by *dt (see launch.h).
template <typename scalar_t, typename acc_type>
__device__ void load_weights(acc_type* w, const CombineParams<scalar_t, double>& p, const double* dt) {
  if (threadIdx.x < p.m) {
    w[threadIdx.x] = static_cast<acc_type>(dt != nullptr ? dmul(p.w[threadIdx.x], *dt) : p.w[threadIdx.x]);
  }
  __syncthreads();
}

// y0[i] + sum_j w[j] k[j][i] as combine_at (y0 left out when null).
template <typename scalar_t, typename acc_type>
__device__ scalar_t combine_with(const CombineParams<scalar_t, double>& p, const acc_type* w, int64_t i) {
  const acc_type sum = weighted_sum(p.k, w, p.m, i);
  return static_cast<scalar_t>(p.y0 != nullptr ? static_cast<acc_type>(p.y0[i]) + sum : sum);
}

template <typename scalar_t>
__global__ void combine_kernel(scalar_t* out, CombineParams<scalar_t, double> p, const double* dt, int64_t n) {
  using acc = acc_t<scalar_t>;
  __shared__ acc w[kMaxTerms];
  load_weights(w, p, dt);
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += stride) {
    out[i] = combine_with(p, w, i);
  }
}

// Tree sum of one value per thread; the order is fixed, so the result is too.
__device__ double block_sum(double v) {
  __shared__ double shared[kThreads];
  shared[threadIdx.x] = v;
  __syncthreads();
  for (int width = kThreads / 2; width > 0; width /= 2) {
    if (threadIdx.x < width) {
      shared[threadIdx.x] += shared[threadIdx.x + width];
    }
    __syncthreads();
  }
  const double total = shared[0];
  __syncthreads();
  return total;
}

// Pass 1: y1 (optionally) and one partial sum of squared scaled errors per block.
template <typename scalar_t>
__global__ void error_partial_kernel(scalar_t* y1, bool write_y1, CombineParams<scalar_t, double> sol,
                                     CombineParams<scalar_t, double> err, const double* dt, NormParams norm,
                                     int segment, double* partials) {
  __shared__ acc_t<scalar_t> sol_w[kMaxTerms];
  __shared__ double err_w[kMaxTerms];
  load_weights(sol_w, sol, dt);
  load_weights(err_w, err, dt);
  const int64_t begin = norm.segment_offset[segment];
  const int64_t end = begin + norm.segment_len[segment];
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  double sum = 0.0;
  for (int64_t i = begin + blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < end; i += stride) {
    if (write_y1) {
      y1[i] = combine_with(sol, sol_w, i);
    }
    const double e = weighted_sum(err.k, err_w, err.m, i);
    sum += scaled_error_sq(e, static_cast<double>(sol.y0[i]), static_cast<double>(y1[i]),
                           norm.rtol[i * norm.rtol_stride], norm.atol[i * norm.atol_stride]);
  }
  const double total = block_sum(sum);
  if (threadIdx.x == 0) {
    partials[norm.block_offset[segment] + blockIdx.x] = total;
  }
}

// Pass 2 (one block): each segment's RMS from its partial sums, the largest over segments.
__global__ void error_ratio_kernel(NormParams norm, const double* partials, double* ratio) {
  double result = 0.0;
  for (int s = 0; s < norm.num_segments; ++s) {
    double v = 0.0;
    for (int b = threadIdx.x; b < norm.segment_blocks[s]; b += blockDim.x) {
      v += partials[norm.block_offset[s] + b];
    }
    const double total = block_sum(v);
    result = nan_max(result, rms_of_sum(total, norm.segment_len[s]));
  }
  if (threadIdx.x == 0) {
    *ratio = result;
  }
}

template <typename scalar_t>
__global__ void sde_step_kernel(scalar_t* out, const scalar_t* y0, const scalar_t* f, const scalar_t* g,
                                const scalar_t* dw, const scalar_t* gdg, double dt, double correction, int64_t n) {
  using acc = acc_t<scalar_t>;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += stride) {
    out[i] = static_cast<scalar_t>(sde_update<acc>(y0[i], f[i], g[i], dw[i], gdg != nullptr ? acc(gdg[i]) : acc(0),
                                                   gdg != nullptr, static_cast<acc>(dt), static_cast<acc>(correction)));
  }
}

template <typename time_t>
__global__ void control_kernel(double* state, bool* accept, time_t* stage_t, const double* ratio, const double* times,
                               int64_t n_times, Nodes nodes, ControlParams params) {
  control_update(state, accept, stage_t, *ratio, times, n_times, nodes.c, nodes.n, params);
}

// Rows are few (usually none) per step: every block walks them, all of its threads
// taking the same branches, and writes its share of each row.
template <typename scalar_t>
__global__ void dense_into_kernel(scalar_t* out, const double* times, const double* state,
                                  int64_t n_rows, CombineParams<scalar_t, double> p, const scalar_t* y1, DensePoly poly,
                                  int64_t n) {
  using acc = acc_t<scalar_t>;
  __shared__ acc w[kMaxTerms];
  const int64_t first = max(static_cast<int64_t>(state[kFirstOut]), int64_t(0));
  const int64_t last = min(static_cast<int64_t>(state[kNextOut]), n_rows);
  const double t0 = state[kOutT0];
  const double span = state[kOutT1] - t0;
  const double dt = state[kOutDt];
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  const int64_t start = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  for (int64_t row = first; row < last; ++row) {
    scalar_t* o = out + row * n;
    const double x = (times[row] - t0) / span;
    if (x == 1.0) {  // the step's end: the solution itself, as the host loop
      for (int64_t i = start; i < n; i += stride) {
        o[i] = y1[i];
      }
      continue;
    }
    if (threadIdx.x < p.m) {
      w[threadIdx.x] = static_cast<acc>(dense_weight(poly.poly, poly.degree, threadIdx.x, x, dt));
    }
    __syncthreads();
    for (int64_t i = start; i < n; i += stride) {
      o[i] = combine_with(p, w, i);
    }
    __syncthreads();
  }
}

}  // namespace

template <typename time_t>
cudaError_t launch_control(double* state, bool* accept, time_t* stage_t, const double* ratio, const double* times,
                           int64_t n_times, const Nodes& nodes, const ControlParams& params, cudaStream_t stream) {
  control_kernel<<<1, 1, 0, stream>>>(state, accept, stage_t, ratio, times, n_times, nodes, params);
  return cudaGetLastError();
}

template <typename scalar_t>
cudaError_t launch_dense_into(scalar_t* out, const double* times, const double* state, int64_t n_rows,
                              const CombineParams<scalar_t, double>& p, const scalar_t* y1, const DensePoly& poly,
                              int64_t n, cudaStream_t stream) {
  if (n == 0) {
    return cudaSuccess;
  }
  dense_into_kernel<<<blocks_for(n), kThreads, 0, stream>>>(out, times, state, n_rows, p, y1, poly, n);
  return cudaGetLastError();
}

template <typename scalar_t>
cudaError_t launch_sde_step(scalar_t* out, const scalar_t* y0, const scalar_t* f, const scalar_t* g, const scalar_t* dw,
                            const scalar_t* gdg, double dt, double correction, int64_t n, cudaStream_t stream) {
  if (n == 0) {
    return cudaSuccess;
  }
  sde_step_kernel<<<blocks_for(n), kThreads, 0, stream>>>(out, y0, f, g, dw, gdg, dt, correction, n);
  return cudaGetLastError();
}

int segment_blocks(int64_t len) {
  return len > 0 ? blocks_for(len) : 0;
}

template <typename scalar_t>
cudaError_t launch_combine(scalar_t* out, const CombineParams<scalar_t, double>& p, const double* dt, int64_t n,
                           cudaStream_t stream) {
  if (n == 0) {
    return cudaSuccess;
  }
  combine_kernel<<<blocks_for(n), kThreads, 0, stream>>>(out, p, dt, n);
  return cudaGetLastError();
}

template <typename scalar_t>
cudaError_t launch_error_ratio(scalar_t* y1, bool write_y1, const CombineParams<scalar_t, double>& sol,
                               const CombineParams<scalar_t, double>& err, const double* dt, const NormParams& norm,
                               double* partials, double* ratio, cudaStream_t stream) {
  for (int s = 0; s < norm.num_segments; ++s) {
    if (norm.segment_blocks[s] > 0) {
      error_partial_kernel<<<norm.segment_blocks[s], kThreads, 0, stream>>>(y1, write_y1, sol, err, dt, norm, s,
                                                                            partials);
      const cudaError_t status = cudaGetLastError();
      if (status != cudaSuccess) {
        return status;
      }
    }
  }
  error_ratio_kernel<<<1, kThreads, 0, stream>>>(norm, partials, ratio);
  return cudaGetLastError();
}

#define ODECORE_INSTANTIATE(T)                                                                                  \
  template cudaError_t launch_combine<T>(T*, const CombineParams<T, double>&, const double*, int64_t, cudaStream_t); \
  template cudaError_t launch_error_ratio<T>(T*, bool, const CombineParams<T, double>&, const CombineParams<T, double>&, \
                                             const double*, const NormParams&, double*, double*, cudaStream_t);      \
  template cudaError_t launch_sde_step<T>(T*, const T*, const T*, const T*, const T*, const T*, double, double, int64_t, \
                                          cudaStream_t);                                                         \
  template cudaError_t launch_dense_into<T>(T*, const double*, const double*, int64_t, const CombineParams<T, double>&, \
                                            const T*,                                                           \
                                            const DensePoly&, int64_t, cudaStream_t);

ODECORE_INSTANTIATE(float)
ODECORE_INSTANTIATE(double)
ODECORE_INSTANTIATE(c10::Half)
ODECORE_INSTANTIATE(c10::BFloat16)

template cudaError_t launch_control<float>(double*, bool*, float*, const double*, const double*, int64_t, const Nodes&,
                                           const ControlParams&, cudaStream_t);
template cudaError_t launch_control<double>(double*, bool*, double*, const double*, const double*, int64_t,
                                            const Nodes&, const ControlParams&, cudaStream_t);

}  // namespace cuda
}  // namespace odecore
