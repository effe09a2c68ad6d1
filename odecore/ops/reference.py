"""The reference backend: the fused ops' arithmetic written with plain torch ops.

It is the oracle the kernels are tested against and the path odecore takes when the
extension is not built. Sums are formed in the same order as in the kernels.
"""

import torch

from . import control
from .control import Slot


def _weighted_sum(k, weights, dtype=None):
    acc = None
    for kj, wj in zip(k, weights):
        term = (kj if dtype is None else kj.to(dtype)) * wj
        acc = term if acc is None else acc + term
    return acc


def _combine(y0, k, weights):
    acc = _weighted_sum(k, weights)
    return y0.clone() if acc is None else y0 + acc


def rk_stage(y0, k, a, dt):
    return _combine(y0, k, [aj * dt for aj in a])


def _error_ratio(y0, y1, k, e, dt, rtol, atol, segments):
    with torch.no_grad():
        err = _weighted_sum(k, [ej * dt for ej in e], torch.float64)
        y0d = y0.detach().to(torch.float64).reshape(-1)
        y1d = y1.detach().to(torch.float64).reshape(-1)
        err = torch.zeros_like(y0d) if err is None else err.reshape(-1)
        tol = atol.to(torch.float64).reshape(-1) + rtol.to(torch.float64).reshape(-1) * torch.maximum(
            y0d.abs(), y1d.abs()
        )
        sq = torch.where(torch.isfinite(y1d), (err / tol) ** 2, torch.full_like(y0d, float("nan")))
        ratio = torch.zeros((), dtype=torch.float64, device=y0.device)
        for length, chunk in zip(segments, torch.split(sq, [abs(n) for n in segments])):
            if length > 0:  # a negative length is left out of the norm (a seminorm)
                ratio = torch.maximum(ratio, chunk.mean().sqrt())
        return ratio


def rk_finish(y0, k, b, e, dt, rtol, atol, segments):
    y1 = rk_stage(y0, k, b, dt)
    return y1, _error_ratio(y0, y1, k, e, dt, rtol, atol, segments)


def rk_error_ratio(y0, y1, k, e, dt, rtol, atol, segments):
    return _error_ratio(y0, y1, k, e, dt, rtol, atol, segments)


def dense_weights(poly, m, x, dt):
    """dt * P_j(x) for every stage j (Horner's rule, as the kernels)."""
    if m == 0:
        return []
    degree = len(poly) // m
    weights = []
    for j in range(m):
        acc = 0.0
        for d in range(degree - 1, -1, -1):
            acc = acc * x + poly[j * degree + d]
        weights.append(acc * x * dt)
    return weights


def rk_interp(y0, k, poly, dt, x):
    if len(x) == 0:
        return y0.new_empty((0, *y0.shape))
    return torch.stack([_combine(y0, k, dense_weights(poly, len(k), xp, dt)) for xp in x])


def sde_step(y0, f, g, dw, gdg, dt, correction):
    out = y0 + f * dt + g * dw
    if gdg is not None:
        out = out + 0.5 * gdg * (dw * dw - correction)
    return out


# --------------------------------------------------------------------------- #
# The device loop's ops (see odecore/solvers/adaptive.py): dt is a one-element float64
# tensor; the control state is a float64 tensor of 20 slots (csrc/include/odecore/rk_math.h).
# --------------------------------------------------------------------------- #


def _check_dt(op, dt, y0):
    n = dt.numel()
    if dt.dtype != torch.float64 or dt.device != y0.device or not (n == 1 or (n > 1 and y0.numel() % n == 0)):
        raise ValueError("%s: dt must be a float64 tensor on y0's device with one element, or one per sample" % op)


def _per_sample(op, y0, dt):
    _check_dt(op, dt, y0)
    samples = dt.numel()
    return samples, y0.numel() // samples


def rk_stage_dt(y0, k, a, dt):
    samples, per = _per_sample("rk_stage_dt", y0, dt)
    if samples == 1:
        return rk_stage(y0, k, a, dt.item())
    flat = [
        rk_stage(y0.reshape(-1)[b * per : (b + 1) * per], [kj.reshape(-1)[b * per : (b + 1) * per] for kj in k], a, d)
        for b, d in enumerate(dt.tolist())
    ]
    return torch.cat(flat).view(y0.shape)


def _ratios(y0, y1, k, e, dt, rtol, atol, per):
    def part(x, b):
        return x.reshape(-1)[b * per : (b + 1) * per] if x.numel() > 1 else x

    return torch.stack(
        [
            _error_ratio(part(y0, b), part(y1, b), [part(kj, b) for kj in k], e, d, part(rtol, b), part(atol, b), [per])
            for b, d in enumerate(dt.tolist())
        ]
    )


def rk_finish_dt(y0, k, b, e, dt, rtol, atol, segments):
    samples, per = _per_sample("rk_finish_dt", y0, dt)
    if samples == 1:
        return rk_finish(y0, k, b, e, dt.item(), rtol, atol, segments)
    y1 = rk_stage_dt(y0, k, b, dt)
    return y1, _ratios(y0, y1, k, e, dt, rtol, atol, per)


def rk_error_ratio_dt(y0, y1, k, e, dt, rtol, atol, segments):
    samples, per = _per_sample("rk_error_ratio_dt", y0, dt)
    if samples == 1:
        return rk_error_ratio(y0, y1, k, e, dt.item(), rtol, atol, segments)
    return _ratios(y0, y1, k, e, dt, rtol, atol, per)


def _time_rows(times):
    """Output times (T,) or (B, T) as a list of rows (T may be 0)."""
    return [times.tolist()] if times.dim() == 1 else times.tolist()


def rk_control(state, accept, stage_t, dt, ratio, times, c, params):
    """The step control of odecore.ops.control on the state tensor (in place), per sample."""
    rows = state.reshape(-1, state.shape[-1]).tolist()
    ratios = ratio.reshape(-1).tolist()
    time_rows = _time_rows(times)
    stage_rows = stage_t.reshape(len(rows), -1)
    p = control.ControlParams(*params)
    oks, dts = [], []
    for b, s in enumerate(rows):
        row_times = time_rows[b if len(time_rows) > 1 else 0]
        ok, stage, dt_used = control.update(s, ratios[b], row_times, len(row_times), c, p, stage_t.dtype)
        oks.append(ok)
        dts.append(dt_used)
        stage_rows[b].copy_(torch.tensor(stage, dtype=stage_t.dtype))
    state.copy_(torch.tensor(rows, dtype=torch.float64).reshape(state.shape))
    accept.copy_(torch.tensor(oks, dtype=torch.bool).reshape(accept.shape))
    dt.copy_(torch.tensor(dts, dtype=torch.float64).reshape(dt.shape))


def rk_initial_dt(h0, d1, d2, order, round_f32):
    out = [control.initial_dt(h, a, b, order, round_f32) for h, a, b in zip(h0.tolist(), d1.tolist(), d2.tolist())]
    return torch.tensor(out, dtype=torch.float64, device=h0.device).reshape(h0.shape)


def rk_dense_into(out, times, state, y0, y1, k, poly):
    """Writes the output rows the last accepted step of each sample covers (in place)."""
    rows = state.reshape(-1, state.shape[-1]).tolist()
    samples = len(rows)
    time_rows = _time_rows(times)
    per = y0.numel() // samples
    flat_out = out.view(out.shape[0], y0.numel())
    y0f, y1f, kf = y0.reshape(-1), y1.reshape(-1), [kj.reshape(-1) for kj in k]
    for b, s in enumerate(rows):
        first, last = int(s[Slot.FIRST_OUT]), int(s[Slot.NEXT_OUT])
        t0, span, dt = s[Slot.OUT_T0], s[Slot.OUT_T1] - s[Slot.OUT_T0], s[Slot.OUT_DT]
        part = slice(b * per, (b + 1) * per)
        for row in range(first, last):
            x = control.divide(time_rows[b if len(time_rows) > 1 else 0][row] - t0, span)
            flat_out[row, part] = (
                y1f[part] if x == 1.0 else rk_interp(y0f[part], [kj[part] for kj in kf], poly, dt, [x])[0]
            )
