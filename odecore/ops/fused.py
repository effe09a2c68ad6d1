"""The fused backend: the ops of torch.ops.odecore, and their fake kernels.

The solver calls them through odecore._C's direct entry points, which enter the same
dispatcher (autograd, fake tensors, CPU/CUDA kernels) as ``torch.ops.odecore.<op>`` but
skip its boxed argument conversion; use ``torch.ops.odecore.*`` under torch.compile.
"""

import torch

from .._extension import extension

rk_stage = extension.rk_stage
rk_finish = extension.rk_finish
rk_error_ratio = extension.rk_error_ratio
rk_interp = extension.rk_interp
rk_stage_dt = extension.rk_stage_dt
rk_finish_dt = extension.rk_finish_dt
rk_error_ratio_dt = extension.rk_error_ratio_dt
rk_control = extension.rk_control
rk_dense_into = extension.rk_dense_into
# AdaptiveRKSolver's host loop in C++ (csrc/host_loop.cpp); not an op: it calls the ops above
host_loop = extension.host_loop
# odeint_adjoint's augmented dynamics in C++ (csrc/adjoint_dynamics.cpp; odecore/adjoint.py)
AdjointDynamics = extension.AdjointDynamics


def _check_terms(op, y0, k, n_coeffs):
    torch._check(len(k) == n_coeffs, lambda: "%s: got %d stage tensors but %d coefficients" % (op, len(k), n_coeffs))
    for j, kj in enumerate(k):
        torch._check(
            kj.shape == y0.shape,
            lambda j=j, kj=kj: "%s: k[%d] has shape %s but y0 has %s" % (op, j, kj.shape, y0.shape),
        )
        torch._check(
            kj.dtype == y0.dtype,
            lambda j=j, kj=kj: "%s: k[%d] has dtype %s but y0 has %s" % (op, j, kj.dtype, y0.dtype),
        )


def _ratio_like(y0, dt):
    """The error ratio: 0-d, or one per sample for a *_dt op given one dt per sample."""
    per_sample = isinstance(dt, torch.Tensor) and dt.numel() > 1
    return y0.new_empty((dt.numel(),) if per_sample else (), dtype=torch.float64)


def _stage_fake(op):
    def fake(y0, k, a, dt):
        _check_terms(op, y0, k, len(a))
        return torch.empty_like(y0, memory_format=torch.contiguous_format)

    return fake


def _finish_fake(op):
    def fake(y0, k, b, e, dt, rtol, atol, segments):
        _check_terms(op, y0, k, len(e))
        return torch.empty_like(y0, memory_format=torch.contiguous_format), _ratio_like(y0, dt)

    return fake


def _error_ratio_fake(op):
    def fake(y0, y1, k, e, dt, rtol, atol, segments):
        _check_terms(op, y0, k, len(e))
        return _ratio_like(y0, dt)

    return fake


# each op and its *_dt twin (dt a float64 tensor of one element or one per sample)
for _name, _make in (("rk_stage", _stage_fake), ("rk_finish", _finish_fake), ("rk_error_ratio", _error_ratio_fake)):
    for _op in (_name, _name + "_dt"):
        torch.library.register_fake("odecore::" + _op)(_make(_op))


@torch.library.register_fake("odecore::rk_interp")
def _(y0, k, poly, dt, x):
    _check_terms("rk_interp", y0, k, len(k))
    return y0.new_empty((len(x), *y0.shape))


@torch.library.register_fake("odecore::rk_control")
def _(state, accept, stage_t, dt, ratio, times, c, params):
    return None


@torch.library.register_fake("odecore::rk_initial_dt")
def _(h0, d1, d2, order, round_f32):
    return torch.empty_like(h0)


rk_initial_dt = extension.rk_initial_dt


@torch.library.register_fake("odecore::rk_dense_into")
def _(out, times, state, y0, y1, k, poly):
    return None


sde_step = torch.ops.odecore.sde_step.default


@torch.library.register_fake("odecore::sde_step")
def _(y0, f, g, dw, gdg, dt, correction):
    return torch.empty_like(y0, memory_format=torch.contiguous_format)


def _sde_step_setup(ctx, inputs, output):
    y0, f, g, dw, gdg, dt, correction = inputs
    ctx.save_for_backward(g, dw, gdg)
    ctx.dt, ctx.correction = dt, correction


def _sde_step_backward(ctx, grad):
    g, dw, gdg = ctx.saved_tensors
    grad_dw = grad * g if gdg is None else grad * (g + gdg * dw)
    grad_gdg = None if gdg is None else grad * (0.5 * (dw * dw - ctx.correction))
    return grad, grad * ctx.dt, grad * dw, grad_dw, grad_gdg, None, None


torch.library.register_autograd("odecore::sde_step", _sde_step_backward, setup_context=_sde_step_setup)
