"""odeint_dense: the interpolant agrees with odeint (identical at step ends, to rounding inside
a step), is continuous across steps, is as accurate as each method's dense output against
the analytic solution, runs in either direction, evaluates many times at once, rejects
times outside [t0, t1], and matches torchdiffeq 0.2.5's dopri5-only odeint_dense."""

import math

import pytest
import torch

import odecore

F64 = torch.float64


def oscillator(t, y):
    """y = (sin t, cos t) from y(0) = (0, 1)."""
    return torch.stack([y[1], -y[0]])


def exact(t):
    t = torch.as_tensor(t, dtype=F64)
    return torch.stack([torch.sin(t), torch.cos(t)], dim=-1)


# method -> (rtol = atol, bound on |sol(t) - exact| over [0, 3]); the low-order methods and
# dopri8 interpolate with a quartic fit, so their dense output is less accurate than their steps
# (measured: dopri5 9e-9, tsit5 2e-9, dopri8 1.1e-5 from 6 steps, bosh3 5e-5, fehlberg2 6e-5,
# adaptive_heun 6e-6: the global error of the low-order methods grows past their tolerance)
ADAPTIVE = {
    "dopri5": (1e-8, 3e-8),
    "tsit5": (1e-8, 3e-8),
    "dopri8": (1e-8, 3e-5),
    "bosh3": (1e-7, 1.5e-4),
    "fehlberg2": (1e-7, 2e-4),
    "adaptive_heun": (1e-6, 2e-5),
}
FIXED = {"euler": (0.01, 5e-2), "midpoint": (0.01, 2e-4), "rk4": (0.01, 5e-9), "implicit_adams": (0.01, 5e-9)}


def between(ts, lo, hi):
    return ts[(ts >= lo) & (ts <= hi)]


@pytest.mark.parametrize("method", ADAPTIVE)
def test_adaptive_methods_agree_with_odeint_and_the_exact_solution(method):
    tol, bound = ADAPTIVE[method]
    y0 = torch.tensor([0.0, 1.0], dtype=F64)
    sol = odecore.odeint_dense(oscillator, y0, 0.0, 3.0, rtol=tol, atol=tol, method=method)
    kw = dict(rtol=tol, atol=tol, method=method)
    # step ends: the solver's own states, bit for bit
    ends = between(sol.ts, 0.0, 3.0)
    ends = torch.cat([ends, torch.tensor([3.0], dtype=F64)]) if ends[-1] != 3.0 else ends
    torch.testing.assert_close(sol(ends[:-1]), odecore.odeint(oscillator, y0, ends, **kw)[:-1], rtol=0, atol=0)
    # inside steps: the same polynomial (rounding apart)
    inside = torch.cat(
        [torch.tensor([0.0], dtype=F64), torch.linspace(0.01, 2.99, 97, dtype=F64), torch.tensor([3.0], dtype=F64)]
    )
    torch.testing.assert_close(sol(inside), odecore.odeint(oscillator, y0, inside, **kw), rtol=1e-13, atol=1e-14)
    fine = torch.linspace(0.0, 3.0, 2001, dtype=F64)
    assert (sol(fine) - exact(fine)).abs().max().item() < bound


@pytest.mark.parametrize("method", ["dopri5", "bosh3", "dopri8"])
def test_continuous_at_step_boundaries(method):
    sol = odecore.odeint_dense(
        oscillator, torch.tensor([0.0, 1.0], dtype=F64), 0.0, 3.0, rtol=1e-7, atol=1e-7, method=method
    )
    inner = sol.ts[1:-1]
    inner = inner[inner < 3.0]
    left = torch.tensor([math.nextafter(v, -math.inf) for v in inner.tolist()], dtype=F64)
    right = torch.tensor([math.nextafter(v, math.inf) for v in inner.tolist()], dtype=F64)
    at = sol(inner)
    # each step's polynomial ends on its solution, which the next step starts from
    torch.testing.assert_close(sol(left), at, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sol(right), at, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("interp", ["linear", "cubic"])
@pytest.mark.parametrize("method", FIXED)
def test_fixed_grid_methods(method, interp):
    step, bound = FIXED[method]
    options = {"step_size": step, "interp": interp}
    y0 = torch.tensor([0.0, 1.0], dtype=F64)
    sol = odecore.odeint_dense(oscillator, y0, 0.0, 3.0, method=method, options=options)
    assert sol.ts[0].item() == 0.0 and sol.ts[-1].item() == 3.0 and sol.n_steps == 300
    # the grid depends on t[0], t[-1] and step_size only: odeint's outputs are the same interpolant
    t = torch.cat(
        [torch.tensor([0.0], dtype=F64), torch.linspace(0.005, 2.995, 51, dtype=F64), torch.tensor([3.0], dtype=F64)]
    )
    torch.testing.assert_close(
        sol(t), odecore.odeint(oscillator, y0, t, method=method, options=options), rtol=1e-13, atol=1e-14
    )
    grid = sol.ts[::7]
    torch.testing.assert_close(
        sol(grid), odecore.odeint(oscillator, y0, sol.ts, method=method, options=options)[::7], rtol=0, atol=0
    )
    if interp == "cubic" or method == "euler":
        fine = torch.linspace(0.0, 3.0, 1001, dtype=F64)
        assert (sol(fine) - exact(fine)).abs().max().item() < max(bound, 5e-6 if interp == "cubic" else 0)


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "rk4"])
def test_reverse_direction(method):
    options = {"step_size": 0.01, "interp": "cubic"} if method == "rk4" else None
    y0 = exact(3.0)
    sol = odecore.odeint_dense(oscillator, y0, 3.0, 0.0, rtol=1e-9, atol=1e-9, method=method, options=options)
    assert sol.ts[0].item() == 3.0 and bool((sol.ts[1:] < sol.ts[:-1]).all())
    t = torch.linspace(3.0, 0.0, 41, dtype=F64)
    torch.testing.assert_close(
        sol(t),
        odecore.odeint(oscillator, y0, t, rtol=1e-9, atol=1e-9, method=method, options=options),
        rtol=1e-13,
        atol=1e-14,
    )
    fine = torch.linspace(0.0, 3.0, 1001, dtype=F64)
    assert (sol(fine) - exact(fine)).abs().max().item() < 1e-6
    # any order of evaluation times
    torch.testing.assert_close(sol(fine.flip(0)), sol(fine).flip(0), rtol=0, atol=0)


def test_out_of_range_and_bad_times_raise():
    sol = odecore.odeint_dense(oscillator, torch.tensor([0.0, 1.0], dtype=F64), 0.0, 1.0)
    for bad in [-1e-9, 1.0 + 1e-9, float("nan"), torch.tensor([0.5, 2.0], dtype=F64)]:
        with pytest.raises(ValueError, match="outside the solved interval"):
            sol(bad)
    with pytest.raises(ValueError, match="0-d or a 1-D"):
        sol(torch.zeros(2, 2, dtype=F64))
    back = odecore.odeint_dense(oscillator, torch.tensor([0.0, 1.0], dtype=F64), 1.0, 0.0)
    with pytest.raises(ValueError, match="outside the solved interval"):
        back(1.5)
    with pytest.raises(ValueError, match="t1 != t0"):
        odecore.odeint_dense(oscillator, torch.tensor([0.0, 1.0], dtype=F64), 1.0, 1.0)


def test_shapes_tuples_and_batches():
    y0 = torch.randn(2, 3, dtype=F64)
    sol = odecore.odeint_dense(lambda t, y: -y, y0, 0.0, 2.0)
    assert sol(1.0).shape == (2, 3)
    assert sol(torch.tensor(1.0)).shape == (2, 3)
    assert sol([0.5, 1.0, 1.5]).shape == (3, 2, 3)
    many = torch.rand(5000, dtype=F64) * 2
    values = sol(many)
    assert values.shape == (5000, 2, 3)
    torch.testing.assert_close(values, y0 * torch.exp(-many)[:, None, None], rtol=1e-7, atol=1e-8)
    assert sol(torch.empty(0, dtype=F64)).shape == (0, 2, 3)

    sol = odecore.odeint_dense(
        lambda t, y: (y[1][0], -y[0].reshape(1)),
        (torch.tensor(0.0, dtype=F64), torch.tensor([1.0], dtype=F64)),
        0.0,
        2.0,
        rtol=1e-9,
        atol=1e-9,
    )
    a, b = sol(torch.tensor([0.5, 1.0], dtype=F64))
    assert a.shape == (2,) and b.shape == (2, 1)
    torch.testing.assert_close(a, torch.sin(torch.tensor([0.5, 1.0], dtype=F64)), rtol=1e-7, atol=1e-8)
    a, b = sol(1.0)
    assert a.shape == () and b.shape == (1,)


def test_stats_and_steps_match_odeint():
    y0 = torch.tensor([0.0, 1.0], dtype=F64)
    sol = odecore.odeint_dense(oscillator, y0, 0.0, 3.0, rtol=1e-6, atol=1e-6)
    _, stats = odecore.odeint(
        oscillator, y0, torch.tensor([0.0, 3.0], dtype=F64), rtol=1e-6, atol=1e-6, options={"return_stats": True}
    )
    for key in ("nfe", "n_steps", "n_accepted", "n_rejected"):
        assert sol.stats[key] == stats[key]
    assert sol.n_steps == stats["n_accepted"] == len(sol.ts) - 1
    assert sol.ts[-2].item() < 3.0 <= sol.ts[-1].item()  # the last step may end past t1, as odeint's


def test_gradients():
    y0 = torch.tensor([0.0, 1.0], dtype=F64, requires_grad=True)
    sol = odecore.odeint_dense(oscillator, y0, 0.0, 3.0, rtol=1e-9, atol=1e-9)
    t = torch.tensor([0.7, 2.2], dtype=F64, requires_grad=True)
    values = sol(t)
    ref = odecore.odeint(oscillator, y0, torch.tensor([0.0, 0.7, 2.2, 3.0], dtype=F64), rtol=1e-9, atol=1e-9)[1:3]
    g_dense = torch.autograd.grad(values[:, 0].sum(), (y0, t), retain_graph=True)
    g_ref = torch.autograd.grad(ref[:, 0].sum(), y0)[0]
    torch.testing.assert_close(g_dense[0], g_ref, rtol=1e-12, atol=1e-12)
    # d/dt of the interpolant: the derivative of the polynomial, close to f = cos t
    torch.testing.assert_close(g_dense[1], torch.cos(t.detach()), rtol=1e-6, atol=1e-6)


def test_matches_torchdiffeq_odeint_dense():
    torchdiffeq = pytest.importorskip("torchdiffeq")
    y0 = torch.tensor([0.0, 1.0], dtype=F64)
    theirs = torchdiffeq.odeint_dense(
        oscillator, y0, torch.tensor(0.0, dtype=F64), torch.tensor(3.0, dtype=F64), rtol=1e-8, atol=1e-8
    )
    ours = odecore.odeint_dense(
        oscillator, y0, torch.tensor(0.0, dtype=F64), torch.tensor(3.0, dtype=F64), rtol=1e-8, atol=1e-8
    )
    for t in [0.1, 0.77, 1.5, 2.999]:  # torchdiffeq's evaluates one time at a time
        torch.testing.assert_close(ours(t), theirs(torch.tensor(t, dtype=F64)), rtol=1e-13, atol=1e-14)
