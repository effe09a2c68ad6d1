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

// Weights are passed in double: p.w holds the weights themselves when dt is null, or the
// coefficients that the step size *dt (device memory) scales on the device. Each block
// forms acc_t weights from them once (the same double product and rounding as the host).

// out = p.y0 + sum_j w[j] * p.k[j] (no y0 term when p.y0 is null).
template <typename scalar_t>
cudaError_t launch_combine(scalar_t* out, const CombineParams<scalar_t, double>& p, const double* dt, int64_t n,
                           cudaStream_t stream);

// Writes y1 (when write_y1) and the error ratio to *ratio, using `partials`
// (sum of segment_blocks over segments doubles) as workspace. No host sync.
template <typename scalar_t>
cudaError_t launch_error_ratio(scalar_t* y1, bool write_y1, const CombineParams<scalar_t, double>& sol,
                               const CombineParams<scalar_t, double>& err, const double* dt, const NormParams& norm,
                               double* partials, double* ratio, cudaStream_t stream);

// out = sde_update(y0, f, g, dw, gdg) elementwise; gdg may be null.
template <typename scalar_t>
cudaError_t launch_sde_step(scalar_t* out, const scalar_t* y0, const scalar_t* f, const scalar_t* g, const scalar_t* dw,
                            const scalar_t* gdg, double dt, double correction, int64_t n, cudaStream_t stream);

// The nodes c_1.. of a tableau, for rk_control.
struct Nodes {
  double c[kMaxTerms];
  int n;
};

// One thread per sample runs control_update (rk_math.h) on its row of the device state;
// times_stride is 0 (output times shared) or n_times (one row per sample).
template <typename time_t>
cudaError_t launch_control(double* state, bool* accept, time_t* stage_t, double* dt, const double* ratio,
                           const double* times,
                           int64_t n_times, int64_t times_stride, int64_t samples, const Nodes& nodes,
                           const ControlParams& params, cudaStream_t stream);

// Per-sample steps: sample b (elements [b per, (b+1) per)) scaled by dts[b].
template <typename scalar_t>
cudaError_t launch_combine_per_sample(scalar_t* out, const CombineParams<scalar_t, double>& p, const double* dts,
                                      int64_t per, int64_t n, cudaStream_t stream);

// One block per sample: y1 (when write_y1) and ratios[b], the RMS of sample b's scaled error.
template <typename scalar_t>
cudaError_t launch_error_per_sample(scalar_t* y1, bool write_y1, const CombineParams<scalar_t, double>& sol,
                                    const CombineParams<scalar_t, double>& err, const double* dts,
                                    const NormParams& norm, int64_t per, int64_t samples, double* ratios,
                                    cudaStream_t stream);

// initial_dt (rk_math.h) elementwise.
cudaError_t launch_initial_dt(double* out, const double* h0, const double* d1, const double* d2, int64_t n, double order,
                              bool round_f32, cudaStream_t stream);

// Most dense-output polynomial coefficients (stages x degree) rk_dense_into takes.
constexpr int kMaxPoly = 192;

struct DensePoly {
  double poly[kMaxPoly];
  int degree;
};

// Output rows [state[kFirstOut], state[kNextOut]) of `out` (rows of n elements) from the
// dense output of the step described in `state`; p holds y0 and the stages (p.w unused).
template <typename scalar_t>
cudaError_t launch_dense_into(scalar_t* out, const double* times, const double* state, int64_t n_rows,
                              const CombineParams<scalar_t, double>& p, const scalar_t* y1, const DensePoly& poly,
                              int64_t n, cudaStream_t stream);

// The same for B per-sample solves (state (B, kNumSlots), sample b = elements
// [b per, (b+1) per) of each row of n elements; times_stride 0 or n_rows).
template <typename scalar_t>
cudaError_t launch_dense_into_per_sample(scalar_t* out, const double* times, int64_t times_stride, const double* state,
                                         int64_t n_rows, const CombineParams<scalar_t, double>& p, const scalar_t* y1,
                                         const DensePoly& poly, int64_t per, int64_t n, cudaStream_t stream);

}  // namespace cuda
}  // namespace odecore
