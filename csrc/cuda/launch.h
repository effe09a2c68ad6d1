// Kernel launchers of the CUDA backend. Plain pointers and POD parameters only, so
// that the .cu translation unit stays on light headers (no ATen, no torch).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "odecore/acc_type.h"
#include "odecore/rk_math.h"

namespace odecore {
namespace cuda {

// Most segments (tuple entries) one error norm reduces on the device.
constexpr int kMaxSegments = 64;

struct NormParams {
  const double* rtol;
  const double* atol;
  int64_t rtol_stride;  // 0: one value for every element
  int64_t atol_stride;
  int num_segments;
  int64_t segment_len[kMaxSegments];
  int64_t segment_offset[kMaxSegments];  // first element of each segment
  int segment_blocks[kMaxSegments];      // blocks reducing each segment
  int block_offset[kMaxSegments];        // first partial sum of each segment
};

// Blocks a segment of `len` elements is reduced with (the partial-sum count).
int segment_blocks(int64_t len);

template <typename scalar_t>
cudaError_t launch_combine(scalar_t* out, const CombineParams<scalar_t, acc_t<scalar_t>>& p, int64_t n,
                           cudaStream_t stream);

// Writes y1 (when write_y1) and the error ratio to *ratio, using `partials`
// (sum of segment_blocks over segments doubles) as workspace. No host sync.
template <typename scalar_t>
cudaError_t launch_error_ratio(scalar_t* y1, bool write_y1, const CombineParams<scalar_t, acc_t<scalar_t>>& sol,
                               const CombineParams<scalar_t, double>& err, const NormParams& norm, double* partials,
                               double* ratio, cudaStream_t stream);

// out = sde_update(y0, f, g, dw, gdg) elementwise; gdg may be null.
template <typename scalar_t>
cudaError_t launch_sde_step(scalar_t* out, const scalar_t* y0, const scalar_t* f, const scalar_t* g, const scalar_t* dw,
                            const scalar_t* gdg, double dt, double correction, int64_t n, cudaStream_t stream);

}  // namespace cuda
}  // namespace odecore
