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

template <typename scalar_t, typename acc_type>
__global__ void combine_kernel(scalar_t* out, CombineParams<scalar_t, acc_type> p, int64_t n) {
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += stride) {
    out[i] = combine_at(p, i);
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
__global__ void error_partial_kernel(scalar_t* y1, bool write_y1, CombineParams<scalar_t, acc_t<scalar_t>> sol,
                                     CombineParams<scalar_t, double> err, NormParams norm, int segment,
                                     double* partials) {
  const int64_t begin = norm.segment_offset[segment];
  const int64_t end = begin + norm.segment_len[segment];
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  double sum = 0.0;
  for (int64_t i = begin + blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < end; i += stride) {
    if (write_y1) {
      y1[i] = combine_at(sol, i);
    }
    const double e = weighted_sum(err.k, err.w, err.m, i);
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

}  // namespace

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
cudaError_t launch_combine(scalar_t* out, const CombineParams<scalar_t, acc_t<scalar_t>>& p, int64_t n,
                           cudaStream_t stream) {
  if (n == 0) {
    return cudaSuccess;
  }
  combine_kernel<<<blocks_for(n), kThreads, 0, stream>>>(out, p, n);
  return cudaGetLastError();
}

template <typename scalar_t>
cudaError_t launch_error_ratio(scalar_t* y1, bool write_y1, const CombineParams<scalar_t, acc_t<scalar_t>>& sol,
                               const CombineParams<scalar_t, double>& err, const NormParams& norm, double* partials,
                               double* ratio, cudaStream_t stream) {
  for (int s = 0; s < norm.num_segments; ++s) {
    if (norm.segment_blocks[s] > 0) {
      error_partial_kernel<<<norm.segment_blocks[s], kThreads, 0, stream>>>(y1, write_y1, sol, err, norm, s, partials);
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
  template cudaError_t launch_combine<T>(T*, const CombineParams<T, acc_t<T>>&, int64_t, cudaStream_t);          \
  template cudaError_t launch_error_ratio<T>(T*, bool, const CombineParams<T, acc_t<T>>&,                       \
                                             const CombineParams<T, double>&, const NormParams&, double*, double*, \
                                             cudaStream_t);                                                     \
  template cudaError_t launch_sde_step<T>(T*, const T*, const T*, const T*, const T*, const T*, double, double, int64_t, \
                                          cudaStream_t);

ODECORE_INSTANTIATE(float)
ODECORE_INSTANTIATE(double)
ODECORE_INSTANTIATE(c10::Half)
ODECORE_INSTANTIATE(c10::BFloat16)

}  // namespace cuda
}  // namespace odecore
