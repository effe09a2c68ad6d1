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


(
    _T,
    _DT,
    _STATUS,
    _N_STEPS,
    _N_ACCEPTED,
    _STEPS_HERE,
    _NEXT_OUT,
    _FIRST_OUT,
    _T0,
    _T1,
    _DT_USED,
    _RATIO,
    _ERR_T,
    _ERR_DT,
    _OUT_T0,
    _OUT_T1,
    _OUT_DT,
) = range(17)


def _round_time(v, f32):
    return float(torch.tensor(v, dtype=torch.float32).item()) if f32 else v


def _time_before(t, dtype):
    import numpy as np

    if dtype == torch.float32:
        return float(np.nextafter(np.float32(t), np.float32(-math.inf)))
    return math.nextafter(t, -math.inf)


def _control_one(s, r, tl, c, params, stage_dtype):
    """The host loop's step control on one sample's state list `s` (see rk_math.h);
    returns (accept, stage times or None)."""
    order, safety, ifactor, dfactor, min_step, max_step, max_num_steps, time_sign, round_f32, prepare_only = params
    s[_FIRST_OUT] = s[_NEXT_OUT]
    ok = False
    prepare = False
    if s[_STATUS] == 0 and prepare_only:
        prepare = True
    elif s[_STATUS] == 0:
        dt = s[_DT_USED]
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
            if int(s[_NEXT_OUT]) >= len(tl):
                s[_STATUS] = 1
            else:
                prepare = True
    stage = None
    if prepare:
        t0, dt = s[_T], s[_DT]
        t1 = _round_time(t0 + dt, round_f32)  # in the time dtype
        if s[_STEPS_HERE] >= max_num_steps:
            s[_STATUS] = 4
        elif not t1 > t0:
            s[_STATUS] = 3
        if s[_STATUS] != 0:
            s[_ERR_T], s[_ERR_DT] = t0, dt
        else:
            s[_T0], s[_T1], s[_DT_USED] = t0, t1, dt
            stage = [time_sign * (_time_before(t1, stage_dtype) if ci == 1.0 else t0 + ci * dt) for ci in c]
    if s[_STATUS] != 0:  # stopped: queued attempts evaluate func at the current time
        stage = [time_sign * s[_T]] * len(c)
    return ok, stage


def _ieee_div(a, b):
    """a / b with the kernels' IEEE semantics (inf or NaN, not ZeroDivisionError, for b = 0)."""
    if b != 0 or a != a:
        return a / b if b != 0 else a
    return math.nan if a == 0 else math.copysign(math.inf, a) * math.copysign(1.0, b)


def _time_rows(times):
    """Output times (T,) or (B, T) as a list of rows (T may be 0)."""
    return [times.tolist()] if times.dim() == 1 else times.tolist()


def rk_control(state, accept, stage_t, dt, ratio, times, c, params):
    """The host loop's step control on the state tensor (in place), per sample; see rk_math.h."""
    rows = state.reshape(-1, state.shape[-1]).tolist()
    ratios = ratio.reshape(-1).tolist()
    time_rows = _time_rows(times)
    stage_rows = stage_t.reshape(len(rows), -1)
    oks, dts = [], []
    for b, s in enumerate(rows):
        ok, stage = _control_one(s, ratios[b], time_rows[b if len(time_rows) > 1 else 0], c, params, stage_t.dtype)
        oks.append(ok)
        dts.append(s[_DT_USED])
        if stage is not None:
            stage_rows[b].copy_(torch.tensor(stage, dtype=stage_t.dtype))
    state.copy_(torch.tensor(rows, dtype=torch.float64).reshape(state.shape))
    accept.copy_(torch.tensor(oks, dtype=torch.bool).reshape(accept.shape))
    dt.copy_(torch.tensor(dts, dtype=torch.float64).reshape(dt.shape))


def rk_initial_dt(h0, d1, d2, order, round_f32):
    out = []
    for h, a, b in zip(h0.tolist(), d1.tolist(), d2.tolist()):
        h1 = max(1e-6, h * 1e-3) if a <= 1e-15 and b <= 1e-15 else _ieee_div(0.01, max(a, b)) ** (1.0 / order)
        out.append(_round_time(min(100 * h, h1), round_f32))
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
        first, last = int(s[_FIRST_OUT]), int(s[_NEXT_OUT])
        t0, span, dt = s[_OUT_T0], s[_OUT_T1] - s[_OUT_T0], s[_OUT_DT]
        part = slice(b * per, (b + 1) * per)
        for row in range(first, last):
            x = _ieee_div(time_rows[b if len(time_rows) > 1 else 0][row] - t0, span)
            flat_out[row, part] = (
                y1f[part] if x == 1.0 else rk_interp(y0f[part], [kj[part] for kj in kf], poly, dt, [x])[0]
            )
