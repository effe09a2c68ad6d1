// Schemas of the fused ops and the front end every backend shares.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "odecore/ops.h"
#include "odecore/rk_math.h"

namespace odecore {

void check_terms(const char* op, const at::Tensor& y0, at::TensorList k, size_t n_coeffs,
                 const char* coeff_name) {
  TORCH_CHECK_TYPE(at::isFloatingType(y0.scalar_type()), op,
                   ": y0 must be a floating point tensor, got dtype ", y0.scalar_type());
  TORCH_CHECK_VALUE(k.size() == n_coeffs, op, ": got ", k.size(), " stage tensors in k but ",
                    n_coeffs, " coefficients in ", coeff_name);
  TORCH_CHECK_VALUE(k.size() <= static_cast<size_t>(kMaxTerms), op, ": at most ", kMaxTerms,
                    " stage tensors are supported, got ", k.size());
  for (size_t j = 0; j < k.size(); ++j) {
    TORCH_CHECK_VALUE(k[j].defined(), op, ": k[", j, "] is undefined");
    TORCH_CHECK_VALUE(k[j].sizes() == y0.sizes(), op, ": k[", j, "] has shape ", k[j].sizes(),
                      " but y0 has shape ", y0.sizes());
    TORCH_CHECK_TYPE(k[j].scalar_type() == y0.scalar_type(), op, ": k[", j, "] has dtype ",
                     k[j].scalar_type(), " but y0 has dtype ", y0.scalar_type());
    TORCH_CHECK_VALUE(k[j].device() == y0.device(), op, ": k[", j, "] is on ", k[j].device(),
                      " but y0 is on ", y0.device());
  }
}

void check_same_as_y0(const char* op, const char* name, const at::Tensor& t, const at::Tensor& y0) {
  TORCH_CHECK_VALUE(t.sizes() == y0.sizes(), op, ": ", name, " has shape ", t.sizes(),
                    " but y0 has shape ", y0.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == y0.scalar_type(), op, ": ", name, " has dtype ",
                   t.scalar_type(), " but y0 has dtype ", y0.scalar_type());
  TORCH_CHECK_VALUE(t.device() == y0.device(), op, ": ", name, " is on ", t.device(),
                    " but y0 is on ", y0.device());
}

void check_tolerance(const char* op, const char* name, const at::Tensor& tol, const at::Tensor& y0) {
  TORCH_CHECK_TYPE(at::isFloatingType(tol.scalar_type()), op, ": ", name,
                   " must be a floating point tensor, got dtype ", tol.scalar_type());
  TORCH_CHECK_VALUE(tol.numel() == 1 || tol.numel() == y0.numel(), op, ": ", name,
                    " must have 1 element or as many as y0 (", y0.numel(), "), got ", tol.numel());
  TORCH_CHECK_VALUE(tol.device() == y0.device(), op, ": ", name, " is on ", tol.device(),
                    " but y0 is on ", y0.device());
}

void check_segments(const char* op, at::IntArrayRef segments, int64_t numel) {
  int64_t total = 0;
  for (const int64_t len : segments) {
    // each length is bounded first, so the total cannot overflow
    TORCH_CHECK_VALUE(len > -numel - 1 && len <= numel, op, ": a segment length of ", len,
                      " (negative: left out of the norm) does not fit in y0's ", numel, " elements");
    total += len < 0 ? -len : len;
    TORCH_CHECK_VALUE(total <= numel, op, ": the segment lengths (negative: left out of the norm) add up to more than y0's ",
                      numel, " elements");
  }
  TORCH_CHECK_VALUE(total == numel, op, ": the segment lengths (negative: left out of the norm) add up to ",
                    total, " but y0 has ", numel, " elements");
}

void check_per_sample_segments(const char* op, at::IntArrayRef segments, int64_t numel) {
  TORCH_CHECK_VALUE(segments.size() == 1 && segments[0] == numel, op,
                    ": with one dt per sample the error norm is per sample; segments must be [", numel,
                    "] (the whole state), got ", segments);
}

int64_t check_dense_poly(const char* op, at::TensorList k, at::ArrayRef<double> poly) {
  if (k.empty()) {
    TORCH_CHECK_VALUE(poly.empty(), op, ": poly must be empty when k is empty, got ", poly.size(),
                      " coefficients");
    return 0;
  }
  TORCH_CHECK_VALUE(poly.size() % k.size() == 0, op, ": poly has ", poly.size(),
                    " coefficients, not a multiple of the ", k.size(), " stage tensors in k");
  return static_cast<int64_t>(poly.size() / k.size());
}

std::vector<double> scaled_weights(at::ArrayRef<double> coeffs, double dt) {
  std::vector<double> w(coeffs.size());
  for (size_t j = 0; j < coeffs.size(); ++j) {
    w[j] = coeffs[j] * dt;
  }
  return w;
}

std::vector<double> dense_weights(at::ArrayRef<double> poly, int64_t m, double x, double dt) {
  std::vector<double> w(m);
  const int degree = m > 0 ? static_cast<int>(poly.size() / m) : 0;
  for (int64_t j = 0; j < m; ++j) {
    w[j] = dense_weight(poly.data(), degree, static_cast<int>(j), x, dt);
  }
  return w;
}

int64_t check_dt_tensor(const char* op, const at::Tensor& dt, const at::Tensor& y0) {
  TORCH_CHECK_TYPE(dt.scalar_type() == at::kDouble, op, ": dt must be a float64 tensor, got dtype ", dt.scalar_type());
  TORCH_CHECK_VALUE(dt.device() == y0.device(), op, ": dt is on ", dt.device(), " but y0 is on ", y0.device());
  const int64_t samples = dt.numel();
  TORCH_CHECK_VALUE(samples == 1 || (samples > 1 && y0.numel() % samples == 0 && dt.is_contiguous()), op,
                    ": dt must have one element, or one per sample (a contiguous tensor whose size divides y0's ",
                    y0.numel(), " elements), got ", samples, " elements");
  return samples;
}

double host_dt(const at::Tensor& dt) {
  return *dt.const_data_ptr<double>();
}

namespace {

// The state of one solve (kNumSlots,) or of B per-sample solves (B, kNumSlots); returns B.
int64_t check_state(const char* op, const at::Tensor& state) {
  TORCH_CHECK_TYPE(state.scalar_type() == at::kDouble, op, ": state must be a float64 tensor, got dtype ",
                   state.scalar_type());
  const bool ok = state.is_contiguous() && ((state.dim() == 1 && state.size(0) == kNumSlots) ||
                                            (state.dim() == 2 && state.size(1) == kNumSlots));
  TORCH_CHECK_VALUE(ok, op, ": state must be a contiguous tensor of shape (", static_cast<int>(kNumSlots), ",) or (B, ",
                    static_cast<int>(kNumSlots), "), got shape ", state.sizes());
  return state.dim() == 1 ? 1 : state.size(0);
}

// Output times shared by every sample (T,) or one row per sample (B, T); returns T.
int64_t check_times(const char* op, const at::Tensor& times, const at::Tensor& state, int64_t samples) {
  TORCH_CHECK_TYPE(times.scalar_type() == at::kDouble, op, ": times must be a float64 tensor, got dtype ",
                   times.scalar_type());
  const bool ok = times.is_contiguous() && (times.dim() == 1 || (times.dim() == 2 && times.size(0) == samples));
  TORCH_CHECK_VALUE(ok, op, ": times must be a contiguous tensor of shape (T,) or (B, T) with B = ", samples,
                    " samples, got shape ", times.sizes());
  TORCH_CHECK_VALUE(times.device() == state.device(), op, ": times is on ", times.device(), " but state is on ",
                    state.device());
  return times.size(times.dim() - 1);
}

}  // namespace

void check_control(const at::Tensor& state, const at::Tensor& accept, const at::Tensor& stage_t,
                   const at::Tensor& dt, const at::Tensor& ratio, const at::Tensor& times, at::ArrayRef<double> c,
                   at::ArrayRef<double> params) {
  const char* op = "rk_control";
  const int64_t samples = check_state(op, state);
  TORCH_CHECK_TYPE(dt.scalar_type() == at::kDouble, op, ": dt must be a float64 tensor, got dtype ", dt.scalar_type());
  TORCH_CHECK_VALUE(dt.numel() == samples && dt.is_contiguous() && dt.device() == state.device(), op,
                    ": dt must be a contiguous tensor with one element per sample (", samples,
                    ") on the state's device");
  check_times(op, times, state, samples);
  TORCH_CHECK_TYPE(accept.scalar_type() == at::kBool, op, ": accept must be a bool tensor, got dtype ",
                   accept.scalar_type());
  TORCH_CHECK_VALUE(accept.numel() == samples && accept.is_contiguous() && accept.device() == state.device(), op,
                    ": accept must be a contiguous tensor with one element per sample (", samples,
                    ") on the state's device");
  TORCH_CHECK_TYPE(stage_t.scalar_type() == at::kDouble || stage_t.scalar_type() == at::kFloat, op,
                   ": stage_t must be float32 or float64, got dtype ", stage_t.scalar_type());
  const int64_t nc = static_cast<int64_t>(c.size());
  const bool shape_ok = (stage_t.dim() == 1 && samples == 1 && stage_t.size(0) == nc) ||
                        (stage_t.dim() == 2 && stage_t.size(0) == samples && stage_t.size(1) == nc);
  TORCH_CHECK_VALUE(shape_ok && stage_t.is_contiguous(), op,
                    ": stage_t must be a contiguous tensor with one element per node in c (", c.size(),
                    ") per sample (", samples, "), got shape ", stage_t.sizes());
  TORCH_CHECK_VALUE(stage_t.device() == state.device(), op, ": stage_t is on ", stage_t.device(),
                    " but state is on ", state.device());
  TORCH_CHECK_TYPE(ratio.scalar_type() == at::kDouble, op, ": ratio must be a float64 tensor, got dtype ",
                   ratio.scalar_type());
  TORCH_CHECK_VALUE(ratio.numel() == samples && ratio.is_contiguous() && ratio.device() == state.device(), op,
                    ": ratio must be a contiguous tensor with one element per sample (", samples,
                    ") on the state's device");
  TORCH_CHECK_VALUE(params.size() == static_cast<size_t>(kControlParams), op, ": params must hold ", kControlParams,
                    " values (order, safety, ifactor, dfactor, min_step, max_step, max_num_steps, time_sign, "
                    "round_f32, prepare_only), got ",
                    params.size());
  TORCH_CHECK_VALUE(params[0] > 0.0, op, ": the order (params[0]) must be positive, got ", params[0]);
}

ControlParams control_params(at::ArrayRef<double> params) {
  ControlParams p{};
  p.order = params[0];
  p.safety = params[1];
  p.ifactor = params[2];
  p.dfactor = params[3];
  p.min_step = params[4];
  p.max_step = params[5];
  p.max_num_steps = params[6];
  p.time_sign = params[7];
  p.round_f32 = params[8] != 0.0;
  p.prepare_only = params[9] != 0.0;
  return p;
}

int64_t check_dense_into(const at::Tensor& out, const at::Tensor& times, const at::Tensor& state, const at::Tensor& y0,
                         const at::Tensor& y1, at::TensorList k, at::ArrayRef<double> poly) {
  const char* op = "rk_dense_into";
  const int64_t samples = check_state(op, state);
  const int64_t n_times = check_times(op, times, state, samples);
  check_terms(op, y0, k, k.size(), "k");
  check_dense_poly(op, k, poly);
  check_same_as_y0(op, "y1", y1, y0);
  TORCH_CHECK_VALUE(y0.device() == state.device(), op, ": y0 is on ", y0.device(), " but state is on ", state.device());
  TORCH_CHECK_VALUE(y0.numel() % samples == 0, op, ": y0's ", y0.numel(), " elements do not split into ", samples,
                    " samples");
  std::vector<int64_t> shape{n_times};
  shape.insert(shape.end(), y0.sizes().begin(), y0.sizes().end());
  TORCH_CHECK_VALUE(out.sizes() == at::IntArrayRef(shape), op, ": out must have shape ", at::IntArrayRef(shape),
                    " (T, *y0.shape), got ", out.sizes());
  TORCH_CHECK_TYPE(out.scalar_type() == y0.scalar_type(), op, ": out has dtype ", out.scalar_type(),
                   " but y0 has dtype ", y0.scalar_type());
  TORCH_CHECK_VALUE(out.is_contiguous() && out.device() == y0.device(), op,
                    ": out must be a contiguous tensor on y0's device");
  return samples;
}

void check_initial_dt(const at::Tensor& h0, const at::Tensor& d1, const at::Tensor& d2) {
  for (const auto* t : {&h0, &d1, &d2}) {
    TORCH_CHECK_TYPE(t->scalar_type() == at::kDouble, "rk_initial_dt: h0, d1 and d2 must be float64 tensors, got ",
                     t->scalar_type());
    TORCH_CHECK_VALUE(t->numel() == h0.numel() && t->is_contiguous() && t->device() == h0.device(),
                      "rk_initial_dt: h0, d1 and d2 must be contiguous tensors of the same size on one device");
  }
}

namespace {

std::vector<at::Tensor> contiguous_terms(at::TensorList k) {
  std::vector<at::Tensor> out;
  out.reserve(k.size());
  for (const auto& t : k) {
    out.push_back(t.contiguous());
  }
  return out;
}

at::Tensor empty_like_contiguous(const at::Tensor& y0) {
  return at::empty(y0.sizes(), y0.options().memory_format(at::MemoryFormat::Contiguous));
}

Prepared prepare_norm(const char* op, const at::Tensor& y0, at::TensorList k, at::ArrayRef<double> e,
                      double dt, const at::Tensor& rtol, const at::Tensor& atol,
                      at::IntArrayRef segments) {
  check_terms(op, y0, k, e.size(), "e");
  check_tolerance(op, "rtol", rtol, y0);
  check_tolerance(op, "atol", atol, y0);
  check_segments(op, segments, y0.numel());
  Prepared p;
  p.y0 = y0.contiguous();
  p.k = contiguous_terms(k);
  p.err_w = scaled_weights(e, dt);
  p.rtol = rtol.to(at::kDouble).contiguous();
  p.atol = atol.to(at::kDouble).contiguous();
  p.segments = segments.vec();
  return p;
}

}  // namespace

Prepared prepare_stage(const at::Tensor& y0, at::TensorList k, at::ArrayRef<double> a, double dt, const char* op) {
  check_terms(op, y0, k, a.size(), "a");
  Prepared p;
  p.y0 = y0.contiguous();
  p.k = contiguous_terms(k);
  p.w = scaled_weights(a, dt);
  p.y1 = empty_like_contiguous(y0);
  return p;
}

Prepared prepare_finish(const at::Tensor& y0, at::TensorList k, at::ArrayRef<double> b,
                        at::ArrayRef<double> e, double dt, const at::Tensor& rtol,
                        const at::Tensor& atol, at::IntArrayRef segments, const char* op) {
  TORCH_CHECK_VALUE(b.size() == e.size(), op, ": b has ", b.size(), " coefficients but e has ", e.size());
  Prepared p = prepare_norm(op, y0, k, e, dt, rtol, atol, segments);
  p.w = scaled_weights(b, dt);
  p.y1 = empty_like_contiguous(y0);
  return p;
}

Prepared prepare_error_ratio(const at::Tensor& y0, const at::Tensor& y1, at::TensorList k,
                             at::ArrayRef<double> e, double dt, const at::Tensor& rtol,
                             const at::Tensor& atol, at::IntArrayRef segments, const char* op) {
  check_same_as_y0(op, "y1", y1, y0);
  Prepared p = prepare_norm(op, y0, k, e, dt, rtol, atol, segments);
  p.y1 = y1.contiguous();
  p.write_y1 = false;
  return p;
}

Prepared prepare_interp(const at::Tensor& y0, at::TensorList k, at::ArrayRef<double> poly,
                        double dt, at::ArrayRef<double> x) {
  check_terms("rk_interp", y0, k, k.size(), "k");
  check_dense_poly("rk_interp", k, poly);
  Prepared p;
  p.y0 = y0.contiguous();
  p.k = contiguous_terms(k);
  for (const double xp : x) {
    p.point_w.push_back(dense_weights(poly, static_cast<int64_t>(k.size()), xp, dt));
  }
  std::vector<int64_t> shape{static_cast<int64_t>(x.size())};
  shape.insert(shape.end(), y0.sizes().begin(), y0.sizes().end());
  p.y1 = at::empty(shape, y0.options().memory_format(at::MemoryFormat::Contiguous));
  return p;
}

std::vector<at::Tensor> prepare_sde_step(const at::Tensor& y0, const at::Tensor& f, const at::Tensor& g,
                                         const at::Tensor& dw, const c10::optional<at::Tensor>& gdg) {
  TORCH_CHECK_TYPE(at::isFloatingType(y0.scalar_type()), "sde_step: y0 must be a floating point tensor, got dtype ",
                   y0.scalar_type());
  check_same_as_y0("sde_step", "f", f, y0);
  check_same_as_y0("sde_step", "g", g, y0);
  check_same_as_y0("sde_step", "dw", dw, y0);
  std::vector<at::Tensor> out{y0.contiguous(), f.contiguous(), g.contiguous(), dw.contiguous()};
  if (gdg.has_value() && gdg->defined()) {
    check_same_as_y0("sde_step", "gdg", *gdg, y0);
    out.push_back(gdg->contiguous());
  }
  out.push_back(empty_like_contiguous(y0));
  return out;
}

}  // namespace odecore

TORCH_LIBRARY(odecore, m) {
  // y0 + dt * sum_j a[j] * k[j]
  m.def("rk_stage(Tensor y0, Tensor[] k, float[] a, float dt) -> Tensor");
  // (y1 = y0 + dt * sum_j b[j] * k[j], error ratio of err = dt * sum_j e[j] * k[j])
  m.def(
      "rk_finish(Tensor y0, Tensor[] k, float[] b, float[] e, float dt, Tensor rtol, "
      "Tensor atol, int[] segments) -> (Tensor, Tensor)");
  // error ratio when y1 is already known (first-same-as-last methods)
  m.def(
      "rk_error_ratio(Tensor y0, Tensor y1, Tensor[] k, float[] e, float dt, Tensor rtol, "
      "Tensor atol, int[] segments) -> Tensor");
  // dense output: out[n] = y0 + dt * sum_j P_j(x[n]) * k[j]
  m.def("rk_interp(Tensor y0, Tensor[] k, float[] poly, float dt, float[] x) -> Tensor");
  // y0 + f dt + g dW + 1/2 gdg (dW^2 - correction): one SDE step with diagonal noise
  // The same three with the step size as a float64 tensor on y0's device, so that a
  // device-resident loop never reads it back to the host: one element, or one per sample
  // (B elements: sample b is elements [b N/B, (b+1) N/B) of the flattened state, and
  // the error ratio is then one RMS per sample, shape (B,)).
  m.def("rk_stage_dt(Tensor y0, Tensor[] k, float[] a, Tensor dt) -> Tensor");
  m.def(
      "rk_finish_dt(Tensor y0, Tensor[] k, float[] b, float[] e, Tensor dt, Tensor rtol, "
      "Tensor atol, int[] segments) -> (Tensor, Tensor)");
  m.def(
      "rk_error_ratio_dt(Tensor y0, Tensor y1, Tensor[] k, float[] e, Tensor dt, Tensor rtol, "
      "Tensor atol, int[] segments) -> Tensor");
  // Step control on the state's device: accept/reject, next step, stage times (rk_math.h).
  m.def(
      "rk_control(Tensor(a!) state, Tensor(b!) accept, Tensor(c!) stage_t, Tensor(d!) dt, Tensor ratio, "
      "Tensor times, float[] c, float[] params) -> ()");
  // Writes the output rows [state[FirstOut], state[NextOut]) from the accepted step's dense output.
  m.def(
      "rk_dense_into(Tensor(a!) out, Tensor times, Tensor state, Tensor y0, Tensor y1, Tensor[] k, "
      "float[] poly) -> ()");
  // min(100 h0, h1) of the initial step, elementwise (per-sample solves).
  m.def("rk_initial_dt(Tensor h0, Tensor d1, Tensor d2, float order, float round_f32) -> Tensor");
  m.def("sde_step(Tensor y0, Tensor f, Tensor g, Tensor dw, Tensor? gdg, float dt, float correction) -> Tensor");
}
