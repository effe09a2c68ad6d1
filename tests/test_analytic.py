"""Every method on problems with closed-form solutions, float32 and float64,
forward and backward in time, for both backends; plus a tuple-state version."""

import pytest
import torch

import odecore

from .problems import PROBLEM_NAMES, get_problem
from .testing import (
    EXPLICIT_RK_METHODS,
    FIXED_METHODS,
    CountingFunc,
    backends,
    devices,
    dtypes,
    max_rel_err,
    product,
    require_backend,
    solver_tol,
    time_grid,
)

# Step sizes for the fixed-grid methods (powers of two: exactly representable).
FIXED_STEP = {"euler": 2**-10, "midpoint": 2**-7, "heun2": 2**-7, "heun3": 2**-6, "rk4": 2**-5}

# Bounds on max |y - y_exact| / max(|y_exact|, 1).  Calibrated at ~5x what
# torchdiffeq 0.2.5 achieves with the same settings (torchdiffeq's dense output
# for dopri8/bosh3 is only 4th order / crude, hence their looser bounds).
ERROR_BOUND = {
    torch.float64: {
        "dopri5": 1e-6,
        "tsit5": 1e-6,
        "dopri8": 2e-4,
        "bosh3": 2e-4,
        "fehlberg2": 5e-5,
        "adaptive_heun": 5e-5,
        "euler": 6e-3,
        "midpoint": 3e-4,
        "heun2": 3e-4,
        "heun3": 1e-5,
        "rk4": 1e-6,
    },
    torch.float32: {
        "dopri5": 3e-4,
        "tsit5": 3e-4,
        "dopri8": 1e-2,
        "bosh3": 1e-2,
        "fehlberg2": 2e-2,
        "adaptive_heun": 5e-4,
        "euler": 6e-3,
        "midpoint": 3e-4,
        "heun2": 3e-4,
        "heun3": 1e-5,
        "rk4": 3e-6,
    },
}


def tolerance_for(method, dtype):
    # adaptive_heun needs ~1e4 steps per unit time at 1e-8: use 1e-6 to keep the suite fast.
    if method == "adaptive_heun" and dtype == torch.float64:
        return 1e-6
    return solver_tol(dtype)


def solve(func, y0, t, method, dtype, backend, **extra_options):
    options = dict(backend=backend, **extra_options)
    if method in FIXED_METHODS:
        options["step_size"] = FIXED_STEP[method]
        return odecore.odeint(func, y0, t, method=method, options=options)
    tol = tolerance_for(method, dtype)
    return odecore.odeint(func, y0, t, rtol=tol, atol=tol, method=method, options=options)


@pytest.mark.parametrize(
    "method,dtype,problem,direction,backend,device",
    product(EXPLICIT_RK_METHODS, dtypes, PROBLEM_NAMES, ["forward", "backward"], backends, devices),
)
def test_analytic(method, dtype, problem, direction, backend, device):
    require_backend(backend, device)
    prob = get_problem(problem)
    y0 = prob.y0(dtype, device)
    t = time_grid(direction, dtype, device)
    func = CountingFunc(prob.func)

    out = solve(func, y0, t, method, dtype, backend)

    assert isinstance(out, torch.Tensor)
    assert out.shape == (len(t), *y0.shape)
    assert out.dtype == dtype and out.device == y0.device
    assert torch.equal(out[0], y0)
    assert torch.isfinite(out).all()
    err = max_rel_err(out, prob.exact(t, y0))
    assert err <= ERROR_BOUND[dtype][method], "max relative error {:.3e}".format(err)

    # func sees a 0-d time tensor of y's dtype.  No evaluation lies before t0
    # (in the direction of integration); fixed-grid methods stay inside the
    # output interval.  (Adaptive methods may step past the last output time
    # and interpolate back.)  Slack: a few ulps for perturbed evaluations.
    assert func.nfe > 0
    assert all(s == () for s in func.t_shapes)
    assert all(d == dtype for d in func.t_dtypes)
    assert all(ti.device == y0.device for ti in func.ts)
    times = torch.stack(func.ts).double().cpu()
    slack = 1e-6
    t0 = float(t[0])
    if direction == "forward":
        assert times.min() >= t0 - slack
    else:
        assert times.max() <= t0 + slack
    if method in FIXED_METHODS:
        assert times.min() >= float(t.min()) - slack and times.max() <= float(t.max()) + slack


@pytest.mark.parametrize("method,dtype", product(EXPLICIT_RK_METHODS, dtypes))
def test_matches_forward_when_reversed(method, dtype):
    """Solving backwards from y(T) recovers y(t0) (time-reversibility of the
    exact flow; checks the sign handling of backward solves)."""
    prob = get_problem("linear")
    t = time_grid("forward", dtype)
    y0 = prob.y0(dtype)
    fwd = solve(prob.func, y0, t, method, dtype, "reference")
    bwd = solve(prob.func, fwd[-1], t.flip(0), method, dtype, "reference")
    err = max_rel_err(bwd[-1], y0.double())
    assert err <= 3 * ERROR_BOUND[dtype][method]
    # Intermediate outputs agree as well.
    assert max_rel_err(bwd.flip(0), fwd) <= 3 * ERROR_BOUND[dtype][method]


@pytest.mark.parametrize("method,dtype,direction", product(EXPLICIT_RK_METHODS, dtypes, ["forward", "backward"]))
def test_tuple_state(method, dtype, direction):
    """Tuple in -> tuple out; each element has its own shape."""
    exp_prob = get_problem("exponential")  # shape (2, 3)
    sin_prob = get_problem("sine")  # shape (2,)
    lin_prob = get_problem("linear")  # shape (3,)

    y0 = (exp_prob.y0(dtype), sin_prob.y0(dtype), lin_prob.y0(dtype)[None, :])  # (2,3), (2,), (1,3)
    seen = []

    def func(t, y):
        assert isinstance(y, tuple) and len(y) == 3
        seen.append(tuple(yi.shape for yi in y))
        return (exp_prob.func(t, y[0]), sin_prob.func(t, y[1]), lin_prob.func(t, y[2][0])[None, :])

    t = time_grid(direction, dtype)
    out = solve(func, y0, t, method, dtype, "reference")

    assert isinstance(out, tuple) and len(out) == 3
    for o, y in zip(out, y0):
        assert o.shape == (len(t), *y.shape)
        assert o.dtype == dtype
        assert torch.equal(o[0], y)
    assert all(s == ((2, 3), (2,), (1, 3)) for s in seen)

    bound = ERROR_BOUND[dtype][method]
    assert max_rel_err(out[0], exp_prob.exact(t, y0[0])) <= bound
    assert max_rel_err(out[1], sin_prob.exact(t, y0[1])) <= bound
    assert max_rel_err(out[2][:, 0], lin_prob.exact(t, y0[2][0])) <= bound


def test_default_method_is_dopri5():
    prob = get_problem("linear")
    t = time_grid("forward", torch.float64)
    y0 = prob.y0(torch.float64)
    a, sa = odecore.odeint(prob.func, y0, t, rtol=1e-6, atol=1e-6, options=dict(return_stats=True))
    b, sb = odecore.odeint(prob.func, y0, t, rtol=1e-6, atol=1e-6, method="dopri5", options=dict(return_stats=True))
    c, sc = odecore.odeint(prob.func, y0, t, rtol=1e-6, atol=1e-6, method="bosh3", options=dict(return_stats=True))
    assert torch.equal(a, b)
    assert all(sa[k] == sb[k] for k in ("nfe", "n_steps", "n_accepted", "n_rejected"))
    assert sa["nfe"] != sc["nfe"]  # sanity: a different method really takes different steps


def test_no_grad_and_grad_mode_agree(dtype):
    prob = get_problem("exponential")
    t = time_grid("forward", dtype)
    y0 = prob.y0(dtype)
    with torch.no_grad():
        a = odecore.odeint(prob.func, y0.clone().requires_grad_(), t, rtol=1e-6, atol=1e-6)
    b = odecore.odeint(prob.func, y0.clone().requires_grad_(), t, rtol=1e-6, atol=1e-6)
    assert a.grad_fn is None and b.grad_fn is not None
    # Same algorithm either way; allow only rounding-level differences.
    torch.testing.assert_close(a, b, rtol=1e-12 if dtype == torch.float64 else 1e-5, atol=1e-12)
