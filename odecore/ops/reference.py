"""The reference backend: the fused ops' arithmetic written with plain torch ops.

It is the oracle the kernels are tested against and the path odecore takes when the
extension is not built. Sums are formed in the same order as in the kernels.
"""
import math

import torch


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
        tol = atol.to(torch.float64).reshape(-1) + rtol.to(torch.float64).reshape(-1) * torch.maximum(y0d.abs(), y1d.abs())
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
    if dt.dtype != torch.float64 or dt.numel() != 1 or dt.device != y0.device:
        raise ValueError("%s: dt must be a one-element float64 tensor on y0's device" % op)


def rk_stage_dt(y0, k, a, dt):
    _check_dt("rk_stage_dt", dt, y0)
    return rk_stage(y0, k, a, dt.item())


def rk_finish_dt(y0, k, b, e, dt, rtol, atol, segments):
    _check_dt("rk_finish_dt", dt, y0)
    return rk_finish(y0, k, b, e, dt.item(), rtol, atol, segments)


def rk_error_ratio_dt(y0, y1, k, e, dt, rtol, atol, segments):
    _check_dt("rk_error_ratio_dt", dt, y0)
    return rk_error_ratio(y0, y1, k, e, dt.item(), rtol, atol, segments)


(_T, _DT, _STATUS, _N_STEPS, _N_ACCEPTED, _STEPS_HERE, _NEXT_OUT, _FIRST_OUT, _T0, _T1, _DT_USED, _RATIO, _ERR_T, _ERR_DT,
 _OUT_T0, _OUT_T1, _OUT_DT) = range(17)


def _round_time(v, f32):
    return float(torch.tensor(v, dtype=torch.float32).item()) if f32 else v


def _time_before(t, dtype):
    import numpy as np

    if dtype == torch.float32:
        return float(np.nextafter(np.float32(t), np.float32(-math.inf)))
    return math.nextafter(t, -math.inf)


def rk_control(state, accept, stage_t, ratio, times, c, params):
    """The host loop's step control on the state tensor (in place); see rk_math.h."""
    order, safety, ifactor, dfactor, min_step, max_step, max_num_steps, time_sign, round_f32 = params
    s = state.tolist()
    s[_FIRST_OUT] = s[_NEXT_OUT]
    ok = False
    stage = None
    if s[_STATUS] == 0:
        dt = s[_DT_USED]
        r = float(ratio.item())
        s[_RATIO] = r
        ok = r <= 1.0
        if dt > max_step:
            ok = False
        if dt <= min_step:
            ok = True
        if r != r or (ok and math.isinf(r)):
            s[_STATUS], s[_ERR_T], s[_ERR_DT] = 2, s[_T0], dt
            ok = False
        else:
            s[_N_STEPS] += 1
            s[_STEPS_HERE] += 1
            if ok:
                s[_OUT_T0], s[_OUT_T1], s[_OUT_DT] = s[_T0], s[_T1], dt
                s[_N_ACCEPTED] += 1
                s[_T] = t1 = s[_T1]
                nxt = first = int(s[_NEXT_OUT])
                tl = times.tolist()
                while nxt < len(tl) and tl[nxt] <= t1:
                    nxt += 1
                if nxt != first:
                    s[_STEPS_HERE] = 0
                s[_NEXT_OUT] = nxt
            if r == 0.0:
                factor = ifactor
            else:
                factor = min(ifactor, max(safety / r ** (1.0 / order), dfactor if r >= 1.0 else 1.0))
            s[_DT] = _round_time(min(max(dt * factor, min_step), max_step), round_f32)
            if int(s[_NEXT_OUT]) >= len(times):
                s[_STATUS] = 1
            else:
                t0, dt = s[_T], s[_DT]
                if s[_STEPS_HERE] >= max_num_steps:
                    s[_STATUS] = 4
                elif not t0 + dt > t0:
                    s[_STATUS] = 3
                if s[_STATUS] != 0:
                    s[_ERR_T], s[_ERR_DT] = t0, dt
                else:
                    t1 = _round_time(t0 + dt, round_f32)
                    s[_T0], s[_T1], s[_DT_USED] = t0, t1, dt
                    stage = [time_sign * (_time_before(t1, stage_t.dtype) if ci == 1.0 else t0 + ci * dt) for ci in c]
    state.copy_(torch.tensor(s, dtype=torch.float64))
    accept.fill_(ok)
    if s[_STATUS] != 0:  # stopped: queued attempts evaluate func at the current time
        stage = [time_sign * s[_T]] * len(c)
    if stage is not None:
        stage_t.copy_(torch.tensor(stage, dtype=stage_t.dtype))


def rk_dense_into(out, times, state, y0, y1, k, poly):
    """Writes the output rows the last accepted step covers (in place)."""
    s = state.tolist()
    first, last = int(s[_FIRST_OUT]), int(s[_NEXT_OUT])
    t0, span, dt = s[_OUT_T0], s[_OUT_T1] - s[_OUT_T0], s[_OUT_DT]
    for row, time in zip(range(first, last), times[first:last].tolist()):
        x = (time - t0) / span
        out[row] = y1 if x == 1.0 else rk_interp(y0, k, poly, dt, [x])[0]
