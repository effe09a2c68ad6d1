"""method='scipy_solver': torchdiffeq 0.2.5's wrapper of scipy.integrate.solve_ivp.

The same numbers as scipy called directly and as torchdiffeq's scipy_solver (the same
solve_ivp call: bitwise in practice, asserted to 1e-10), Radau/BDF/LSODA on stiff problems,
gradients through odeint_adjoint (the backward augmented system solved by scipy too)
against direct backprop through dopri5 at tight tolerances and against torchdiffeq, and the
option, warning and statistics semantics.
"""

import math
import warnings

import pytest
import torch

import odecore

from .problems import robertson, van_der_pol

scipy_integrate = pytest.importorskip("scipy.integrate")
torchdiffeq = pytest.importorskip("torchdiffeq")

SCIPY_METHODS = ["RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA"]


VAN_DER_POL = van_der_pol(1.0, dim=-1)


def time_scaled_van_der_pol(t, y):
    """Van der Pol (mu = 1) with its time scaled by 1 + 0.1 sin(t): func depends on t."""
    return VAN_DER_POL(t, y) * (1 + 0.1 * torch.sin(t))


def scipy_direct(f, y0, t, rtol, atol, solver):
    """torchdiffeq's call of solve_ivp, written out (increasing t)."""
    shape = y0.shape

    def fun(tt, y):
        with torch.no_grad():
            tt = torch.tensor(tt, dtype=torch.float64).to(y0.dtype)
            return f(tt, torch.tensor(y).to(y0.dtype).reshape(shape)).numpy().reshape(-1)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's "min_step has no effect" for the RK methods
        sol = scipy_integrate.solve_ivp(
            fun,
            [t.min(), t.max()],
            y0.numpy().reshape(-1),
            t_eval=t.numpy(),
            method=solver,
            rtol=rtol,
            atol=atol,
            min_step=0,
            max_step=math.inf,
        )
    assert sol.success
    return torch.tensor(sol.y).T.to(y0.dtype).reshape(-1, *shape)


def solve(lib, f, y0, t, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return lib.odeint(f, y0, t, method="scipy_solver", **kwargs)


def torchdiffeq_bound(solver, dtype):
    """torchdiffeq makes func's time with torch.tensor(t): scipy's LSODA passes t as a Python
    float, which that rounds to float32 (the default dtype) before the cast to y's dtype, so
    with a float64 state torchdiffeq's LSODA evaluates func at slightly wrong times. odecore
    passes the exact time (and agrees with scipy called directly)."""
    return 1e-5 if solver == "LSODA" and dtype == torch.float64 else 1e-10


@pytest.mark.parametrize("solver", SCIPY_METHODS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_scipy_and_torchdiffeq(solver, dtype):
    y0 = torch.tensor([[2.0, 0.0], [0.5, -1.0]], dtype=dtype)
    t = torch.tensor([0.0, 0.3, 1.1, 2.5], dtype=dtype)
    opts = {"solver": solver}
    out = solve(odecore, time_scaled_van_der_pol, y0, t, rtol=1e-7, atol=1e-9, options=opts)
    assert out.dtype == dtype and out.shape == (4, 2, 2) and not out.requires_grad
    direct = scipy_direct(time_scaled_van_der_pol, y0, t, 1e-7, 1e-9, solver)
    td = solve(torchdiffeq, time_scaled_van_der_pol, y0, t, rtol=1e-7, atol=1e-9, options=opts)
    assert (out.double() - direct.double()).abs().max().item() <= 1e-10
    assert (out.double() - td.double()).abs().max().item() <= torchdiffeq_bound(solver, dtype)


@pytest.mark.parametrize("solver", ["RK45", "LSODA"])
def test_decreasing_time_and_tuple_state(solver):
    y0 = (torch.tensor([2.0], dtype=torch.float64), torch.tensor([[0.0]], dtype=torch.float64))
    t = torch.tensor([1.0, 0.2, -0.7], dtype=torch.float64)

    def f(tt, y):
        a, b = y
        return b.reshape(1), (1 - a**2) * b - a.reshape(1, 1) * torch.cos(tt)

    kwargs = dict(rtol=1e-8, atol=1e-10, options={"solver": solver})
    out = solve(odecore, f, y0, t, **kwargs)
    td = solve(torchdiffeq, f, y0, t, **kwargs)
    assert isinstance(out, tuple) and out[0].shape == (3, 1) and out[1].shape == (3, 1, 1)
    for a, b in zip(out, td):
        assert (a - b).abs().max().item() <= torchdiffeq_bound(solver, torch.float64)
    # and the same as a forward solve of the time-reversed problem agrees to the tolerance
    ref = odecore.odeint(f, y0, t, rtol=1e-11, atol=1e-12)
    for a, b in zip(out, ref):
        assert (a - b).abs().max().item() <= 1e-6


def test_rtol_atol_pass_through():
    """Per-element atol reaches scipy as one value per element, as in torchdiffeq."""
    y0 = torch.tensor([2.0, 0.0], dtype=torch.float64)
    t = torch.linspace(0, 3, 4, dtype=torch.float64)
    atol = torch.tensor([1e-6, 1e-10], dtype=torch.float64)
    out = solve(odecore, time_scaled_van_der_pol, y0, t, rtol=1e-5, atol=atol, options={"solver": "RK45"})
    td = solve(torchdiffeq, time_scaled_van_der_pol, y0, t, rtol=1e-5, atol=atol, options={"solver": "RK45"})
    assert (out - td).abs().max().item() <= 1e-12
    loose = solve(odecore, time_scaled_van_der_pol, y0, t, rtol=1e-5, atol=1e-6, options={"solver": "RK45"})
    assert (out - loose).abs().max().item() > 0


def test_min_max_step_reach_scipy(monkeypatch):
    """options['min_step'] and ['max_step'] reach LSODA exactly as solve_ivp would get them, and a
    min_step changes the solve exactly as it changes scipy's own (torchdiffeq's test_min_max_step
    problem: a linear system on [1, 8]). scipy >= 1.15's LSODA ignores min_step, so the count may
    not drop with it; what is checked is that odecore adds or loses nothing on the way."""
    seen = []
    real = scipy_integrate._ivp.lsoda.LSODA.__init__

    def recording(self, *args, **kwargs):
        seen.append((kwargs.get("min_step"), kwargs.get("max_step")))
        real(self, *args, **kwargs)

    monkeypatch.setattr(scipy_integrate._ivp.lsoda.LSODA, "__init__", recording)
    A = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=torch.float64)
    y0 = torch.tensor([2.0, 0.0], dtype=torch.float64)
    t = torch.linspace(1.0, 8.0, 10, dtype=torch.float64)
    for min_step, max_step in [(0, math.inf), (2.0, math.inf), (0, 5.0), (2.0, 5.0)]:
        calls = [0]

        def f(tt, y):
            calls[0] += 1
            return y @ A.T

        options = {"solver": "LSODA", "min_step": min_step, "max_step": max_step}
        odecore.odeint(f, y0, t, method="scipy_solver", options=options)
        direct = scipy_integrate.solve_ivp(
            lambda tt, y: y @ A.numpy().T,
            [1.0, 8.0],
            y0.numpy(),
            t_eval=t.numpy(),
            method="LSODA",
            rtol=1e-7,
            atol=1e-9,
            min_step=min_step,
            max_step=max_step,
        )
        assert seen[-1] == (min_step, max_step)
        assert calls[0] == direct.nfev


ROBERTSON_T40 = [0.7158270687, 9.185534764e-6, 0.2841637457]  # Hairer & Wanner's reference values at t = 40


@pytest.mark.parametrize("solver", ["Radau", "BDF", "LSODA"])
def test_stiff_robertson(solver):
    y0 = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    t = torch.tensor([0.0, 40.0], dtype=torch.float64)
    out, st = solve(odecore, robertson, y0, t, rtol=1e-8, atol=1e-12, options={"solver": solver, "return_stats": True})
    ref = torch.tensor(ROBERTSON_T40, dtype=torch.float64)
    assert ((out[-1] - ref).abs() / ref).max().item() <= 1e-5
    assert abs(out[-1].sum().item() - 1.0) <= 1e-9  # mass is conserved
    assert st["n_accepted"] < 1000  # an explicit method needs ~1e5 steps here
    td = solve(torchdiffeq, robertson, y0, t, rtol=1e-8, atol=1e-12, options={"solver": solver})
    assert (out - td).abs().max().item() <= (1e-6 if solver == "LSODA" else 1e-10)


def test_stiff_linear_radau_vs_closed_form():
    lam = 1e4

    def f(t, y):
        return -lam * (y - torch.cos(t)) - torch.sin(t)

    y0 = torch.tensor([2.0, 0.0], dtype=torch.float64)
    t = torch.linspace(0, 2, 5, dtype=torch.float64)
    exact = torch.cos(t)[:, None] + (y0 - 1) * torch.exp(-lam * t)[:, None]
    out, st = solve(odecore, f, y0, t, rtol=1e-8, atol=1e-10, options={"solver": "Radau", "return_stats": True})
    assert (out - exact).abs().max().item() <= 1e-6
    assert st["n_accepted"] < 500 and st["njev"] >= 1 and st["nlu"] >= 1


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.l1 = torch.nn.Linear(2, 8)
        self.l2 = torch.nn.Linear(8, 2)

    def forward(self, t, y):
        return self.l2(torch.tanh(self.l1(y))) * (1 + 0.1 * t)


def _gradients(lib, fn, func, **kwargs):
    y0 = torch.tensor([[1.0, 0.5], [0.2, -0.3]], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 0.5, 1.2], dtype=torch.float64, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = getattr(lib, fn)(func, y0, t, **kwargs)
    loss = (out**2).sum() + out[1].sin().sum()
    grads = torch.autograd.grad(loss, (y0, t) + tuple(func.parameters()))
    return torch.cat([g.reshape(-1) for g in grads])


@pytest.mark.parametrize("solver", ["RK45", "DOP853", "Radau", "LSODA"])
def test_adjoint_gradients(solver):
    func = MLP().double()
    ref = _gradients(odecore, "odeint", func, method="dopri5", rtol=1e-12, atol=1e-12)
    kwargs = dict(method="scipy_solver", rtol=1e-10, atol=1e-10, options={"solver": solver})
    grads = _gradients(odecore, "odeint_adjoint", func, **kwargs)
    td = _gradients(torchdiffeq, "odeint_adjoint", func, **kwargs)
    bound = 2e-9 if solver == "LSODA" else 2e-10
    assert (grads - ref).abs().max().item() <= bound
    assert (grads - td).abs().max().item() <= bound


def test_adjoint_gradient_finite_differences():
    """d loss / d y0 by central differences of scipy solves, against the adjoint."""
    func = MLP().double()
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    y0 = torch.tensor([0.3, -0.8], dtype=torch.float64)
    kwargs = dict(method="scipy_solver", rtol=1e-11, atol=1e-12, options={"solver": "DOP853"})

    def loss(y):
        return (solve(odecore, func, y, t, **{k: v for k, v in kwargs.items() if k != "method"})[-1] ** 2).sum()

    y = y0.clone().requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = odecore.odeint_adjoint(func, y, t, **kwargs)
    (grad,) = torch.autograd.grad((out[-1] ** 2).sum(), y)
    eps = 1e-5
    fd = torch.stack([(loss(y0 + eps * e) - loss(y0 - eps * e)) / (2 * eps) for e in torch.eye(2, dtype=torch.float64)])
    assert (grad - fd).abs().max().item() <= 1e-7


def test_adjoint_with_another_backward_method():
    """scipy forward, dopri5 backward (and the reverse): gradients agree with direct backprop."""
    func = MLP().double()
    ref = _gradients(odecore, "odeint", func, method="dopri5", rtol=1e-12, atol=1e-12)
    a = _gradients(
        odecore,
        "odeint_adjoint",
        func,
        method="scipy_solver",
        rtol=1e-10,
        atol=1e-10,
        options={"solver": "RK45"},
        adjoint_method="dopri5",
        adjoint_options={},
    )
    b = _gradients(
        odecore,
        "odeint_adjoint",
        func,
        method="dopri5",
        rtol=1e-10,
        atol=1e-10,
        adjoint_method="scipy_solver",
        adjoint_options={"solver": "DOP853"},
    )
    assert (a - ref).abs().max().item() <= 1e-8
    assert (b - ref).abs().max().item() <= 1e-8


def test_stats():
    y0 = torch.tensor([2.0, 0.0], dtype=torch.float64)
    t = torch.linspace(0, 3, 4, dtype=torch.float64)
    calls = []

    def f(tt, y):
        calls.append(1)
        return time_scaled_van_der_pol(tt, y)

    for solver in SCIPY_METHODS:
        calls.clear()
        _, st = solve(odecore, f, y0, t, options={"solver": solver, "return_stats": True})
        assert st["nfe"] == len(calls) > 0
        assert st["n_accepted"] > 0 and st["final_dt"] > 0
        if solver in ("RK23", "RK45", "DOP853"):
            assert st["n_steps"] == st["n_accepted"] + st["n_rejected"] and st["n_rejected"] >= 0
        else:  # scipy does not expose the rejected attempts of these
            assert st["n_steps"] is None and st["n_rejected"] is None
    # a too-large first attempt of RK45 shows as a rejection (max_step bounds nothing here)
    _, st = solve(
        odecore,
        lambda tt, y: -50 * y,
        torch.ones(1, dtype=torch.float64),
        torch.tensor([0.0, 1.0], dtype=torch.float64),
        rtol=1e-3,
        atol=1e-6,
        options={"solver": "RK45", "return_stats": True},
    )
    assert st["n_steps"] == st["n_accepted"] + st["n_rejected"]


def test_adjoint_stats_with_unknown_rejections():
    func = MLP().double()
    y0 = torch.tensor([1.0, 0.5], dtype=torch.float64, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out, st = odecore.odeint_adjoint(
            func,
            y0,
            torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64),
            method="scipy_solver",
            options={"solver": "LSODA", "return_stats": True},
        )
    out.sum().backward()
    assert st["backward_nfe"] > 0 and st["backward_n_accepted"] > 0 and st["backward_final_dt"] > 0
    assert st["backward_n_rejected"] is None and st["backward_n_steps"] is None


def test_options_and_warnings():
    y0 = torch.tensor([1.0], dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    f = lambda tt, y: -y  # noqa: E731
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        odecore.odeint(
            f, y0, t, method="scipy_solver", options={"solver": "LSODA", "norm": None, "grid_points": 1, "eps": 0.1}
        )
    assert not caught  # norm, grid_points and eps are ignored silently, as in torchdiffeq
    with pytest.warns(UserWarning, match=r"ScipyWrapperODESolver: Unexpected arguments \{'foo': 1\}"):
        odecore.odeint(f, y0, t, method="scipy_solver", options={"foo": 1})
    with pytest.raises(ValueError, match="solver"):
        odecore.odeint(f, y0, t, method="scipy_solver", options={"solver": "nope"})
    with pytest.raises(ValueError, match="checkpoint"):
        odecore.odeint(f, y0.clone().requires_grad_(), t, method="scipy_solver", options={"checkpoint": 4})
    # an OdeSolver subclass is accepted, as solve_ivp accepts it
    out = odecore.odeint(f, y0, t, method="scipy_solver", options={"solver": scipy_integrate.LSODA})
    assert abs(out[-1].item() - math.exp(-1)) < 1e-6
    # one output time: y0 back, no solve
    out = odecore.odeint(f, y0, t[:1], method="scipy_solver")
    assert out.shape == (1, 1) and out[0].item() == 1.0


def test_solver_failure_raises():
    # blows up at t = 1: scipy stops with a step size too small
    with pytest.raises(RuntimeError, match="scipy_solver"):
        solve(
            odecore,
            lambda tt, y: y**2,
            torch.ones(1, dtype=torch.float64),
            torch.tensor([0.0, 2.0], dtype=torch.float64),
            options={"solver": "RK45"},
        )


def test_no_gradient_through_odeint():
    """As torchdiffeq: scipy's result is a constant for autograd (use odeint_adjoint)."""
    y0 = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64, requires_grad=True)
    out = odecore.odeint(lambda tt, y: -y, y0, t, method="scipy_solver")
    assert not out.requires_grad
