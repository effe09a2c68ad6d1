"""The reference backend: the fused ops' arithmetic written with plain torch ops.

It is the oracle the kernels are tested against and the path odecore takes when the
extension is not built. Sums are formed in the same order as in the kernels.
"""
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
