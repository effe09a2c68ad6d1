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

// This thread's sum of squared scaled errors over elements start, start + stride, ... < end,
// writing y1 there first when write_y1 (weights already in shared memory).
template <typename scalar_t>
__device__ double error_sum(scalar_t* y1, bool write_y1, const CombineParams<scalar_t, double>& sol,
                            const acc_t<scalar_t>* sol_w, const CombineParams<scalar_t, double>& err,
                            const double* err_w, const NormParams& norm, int64_t start, int64_t end, int64_t stride) {
  double sum = 0.0;
  for (int64_t i = start; i < end; i += stride) {
    if (write_y1) {
      y1[i] = combine_with(sol, sol_w, i);
    }
    const double e = weighted_sum(err.k, err_w, err.m, i);
    sum += scaled_error_sq(e, static_cast<double>(sol.y0[i]), static_cast<double>(y1[i]),
                           norm.rtol[i * norm.rtol_stride], norm.atol[i * norm.atol_stride]);
  }
  return sum;
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
  const double total = block_sum(error_sum(y1, write_y1, sol, sol_w, err, err_w, norm,
                                           begin + blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x,
                                           begin + norm.segment_len[segment],
                                           static_cast<int64_t>(blockDim.x) * gridDim.x));
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
__global__ void control_kernel(double* state, bool* accept, time_t* stage_t, double* dt, const double* ratio,
                               const double* times, int64_t n_times, int64_t times_stride, int64_t samples, Nodes nodes,
                               ControlParams params) {
  const int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (b < samples) {
    control_update(state + b * kNumSlots, accept + b, stage_t + b * nodes.n, dt + b, ratio[b], times + b * times_stride,
                   n_times, nodes.c, nodes.n, params);
  }
}

template <typename scalar_t>
__global__ void combine_per_sample_kernel(scalar_t* out, CombineParams<scalar_t, double> p, const double* dts,
                                          int64_t per, int64_t n) {
  using acc = acc_t<scalar_t>;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += stride) {
    const double dt = dts[i / per];
    acc sum = acc(0);
    for (int j = 0; j < p.m; ++j) {
      sum += static_cast<acc>(dmul(p.w[j], dt)) * static_cast<acc>(p.k[j][i]);
    }
    out[i] = static_cast<scalar_t>(static_cast<acc>(p.y0[i]) + sum);
  }
}

template <typename scalar_t>
__global__ void error_per_sample_kernel(scalar_t* y1, bool write_y1, CombineParams<scalar_t, double> sol,
                                        CombineParams<scalar_t, double> err, const double* dts, NormParams norm,
                                        int64_t per, double* ratios) {
  __shared__ acc_t<scalar_t> sol_w[kMaxTerms];
  __shared__ double err_w[kMaxTerms];
  const int64_t b = blockIdx.x;
  load_weights(sol_w, sol, dts + b);
  load_weights(err_w, err, dts + b);
  const double total = block_sum(error_sum(y1, write_y1, sol, sol_w, err, err_w, norm, b * per + threadIdx.x,
                                           (b + 1) * per, static_cast<int64_t>(blockDim.x)));
  if (threadIdx.x == 0) {
    ratios[b] = rms_of_sum(total, per);
  }
}

template <typename scalar_t>
__global__ void dense_into_per_sample_kernel(scalar_t* out, const double* times, int64_t times_stride,
                                             const double* state, int64_t n_rows, CombineParams<scalar_t, double> p,
                                             const scalar_t* y1, DensePoly poly, int64_t per, int64_t n) {
  using acc = acc_t<scalar_t>;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += stride) {
    const int64_t b = i / per;
    const double* st = state + b * kNumSlots;
    const int64_t first = max(static_cast<int64_t>(st[kFirstOut]), int64_t(0));
    const int64_t last = min(static_cast<int64_t>(st[kNextOut]), n_rows);
    const double t0 = st[kOutT0];
    const double span = st[kOutT1] - t0;
    const double dt = st[kOutDt];
    for (int64_t row = first; row < last; ++row) {
      const double x = (times[b * times_stride + row] - t0) / span;
      if (x == 1.0) {
        out[row * n + i] = y1[i];
        continue;
      }
      acc sum = acc(0);
      for (int j = 0; j < p.m; ++j) {
        sum += static_cast<acc>(dense_weight(poly.poly, poly.degree, j, x, dt)) * static_cast<acc>(p.k[j][i]);
      }
      out[row * n + i] = static_cast<scalar_t>(static_cast<acc>(p.y0[i]) + sum);
    }
  }
}

__global__ void initial_dt_kernel(double* out, const double* h0, const double* d1, const double* d2, int64_t n,
                                  double order, bool round_f32) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) {
    out[i] = initial_dt(h0[i], d1[i], d2[i], order, round_f32);
  }
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
cudaError_t launch_control(double* state, bool* accept, time_t* stage_t, double* dt, const double* ratio,
                           const double* times, int64_t n_times, int64_t times_stride, int64_t samples,
                           const Nodes& nodes, const ControlParams& params, cudaStream_t stream) {
  if (samples == 0) {
    return cudaSuccess;
  }
  const int threads = samples < kThreads ? static_cast<int>(samples) : kThreads;
  const int64_t blocks = (samples + threads - 1) / threads;
  control_kernel<<<static_cast<unsigned>(blocks), threads, 0, stream>>>(state, accept, stage_t, dt, ratio, times,
                                                                       n_times, times_stride, samples, nodes, params);
  return cudaGetLastError();
}

template <typename scalar_t>
cudaError_t launch_combine_per_sample(scalar_t* out, const CombineParams<scalar_t, double>& p, const double* dts,
                                      int64_t per, int64_t n, cudaStream_t stream) {
  if (n == 0) {
    return cudaSuccess;
  }
  combine_per_sample_kernel<<<blocks_for(n), kThreads, 0, stream>>>(out, p, dts, per, n);
  return cudaGetLastError();
}

template <typename scalar_t>
cudaError_t launch_error_per_sample(scalar_t* y1, bool write_y1, const CombineParams<scalar_t, double>& sol,
                                    const CombineParams<scalar_t, double>& err, const double* dts,
                                    const NormParams& norm, int64_t per, int64_t samples, double* ratios,
                                    cudaStream_t stream) {
  if (samples == 0) {
    return cudaSuccess;
  }
  error_per_sample_kernel<<<static_cast<unsigned>(samples), kThreads, 0, stream>>>(y1, write_y1, sol, err, dts, norm,
                                                                                 per, ratios);
  return cudaGetLastError();
}

template <typename scalar_t>
cudaError_t launch_dense_into_per_sample(scalar_t* out, const double* times, int64_t times_stride, const double* state,
                                         int64_t n_rows, const CombineParams<scalar_t, double>& p, const scalar_t* y1,
                                         const DensePoly& poly, int64_t per, int64_t n, cudaStream_t stream) {
  if (n == 0) {
    return cudaSuccess;
  }
  dense_into_per_sample_kernel<<<blocks_for(n), kThreads, 0, stream>>>(out, times, times_stride, state, n_rows, p, y1,
                                                                       poly, per, n);
  return cudaGetLastError();
}

cudaError_t launch_initial_dt(double* out, const double* h0, const double* d1, const double* d2, int64_t n, double order,
                              bool round_f32, cudaStream_t stream) {
  if (n == 0) {
    return cudaSuccess;
  }
  initial_dt_kernel<<<static_cast<unsigned>((n + kThreads - 1) / kThreads), kThreads, 0, stream>>>(out, h0, d1, d2, n,
                                                                                                   order, round_f32);
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
                                            const DensePoly&, int64_t, cudaStream_t);                           \
  template cudaError_t launch_combine_per_sample<T>(T*, const CombineParams<T, double>&, const double*, int64_t, int64_t, \
                                                    cudaStream_t);                                              \
  template cudaError_t launch_error_per_sample<T>(T*, bool, const CombineParams<T, double>&,                      \
                                                  const CombineParams<T, double>&, const double*, const NormParams&, \
                                                  int64_t, int64_t, double*, cudaStream_t);                     \
  template cudaError_t launch_dense_into_per_sample<T>(T*, const double*, int64_t, const double*, int64_t,        \
                                                       const CombineParams<T, double>&, const T*, const DensePoly&, \
                                                       int64_t, int64_t, cudaStream_t);

ODECORE_INSTANTIATE(float)
ODECORE_INSTANTIATE(double)
ODECORE_INSTANTIATE(c10::Half)
ODECORE_INSTANTIATE(c10::BFloat16)

template cudaError_t launch_control<float>(double*, bool*, float*, double*, const double*, const double*, int64_t,
                                           int64_t, int64_t, const Nodes&, const ControlParams&, cudaStream_t);
template cudaError_t launch_control<double>(double*, bool*, double*, double*, const double*, const double*, int64_t,
                                            int64_t, int64_t, const Nodes&, const ControlParams&, cudaStream_t);

}  // namespace cuda
}  // namespace odecore
