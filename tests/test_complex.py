"""Complex states (y0 complex64/complex128, t real), as torchdiffeq 0.2.5 integrates them.

odecore solves the real view (odecore.solvers.complex_state) with torchdiffeq's error norm
on complex moduli, so the adaptive methods take the same steps: closed forms (a rotation
exp(i w t), a complex linear system via matrix_exp), identical nfe/steps and values to
~1e-12 against torchdiffeq, tuple states, gradients of a real loss against finite
differences, and what func, norms and callbacks are given.
"""

import math
import warnings

import pytest
import torch

import odecore

torchdiffeq = pytest.importorskip("torchdiffeq")

FIXED = ["euler", "midpoint", "heun3", "rk4"]
# closed-form error bounds at rtol=1e-9, atol=1e-11 (complex128); the low-order pairs and
# dopri8's interpolant are less accurate at that tolerance
CLOSED_FORM_BOUND = {"dopri5": 1e-7, "tsit5": 1e-7, "rk4": 1e-7, "bosh3": 5e-6, "dopri8": 5e-6}
TOL = dict(rtol=1e-9, atol=1e-11)


def fixed_options(method):
    return dict(step_size=1e-3) if method in FIXED else None


@pytest.mark.parametrize("method", sorted(CLOSED_FORM_BOUND))
@pytest.mark.parametrize("dtype", [torch.complex128, torch.complex64])
def test_rotation_closed_form(method, dtype):
    omega = 2.5
    y0 = torch.tensor([1.0 + 0.5j, -0.3j], dtype=dtype)
    t = torch.linspace(0, 2, 6, dtype=torch.float64 if dtype == torch.complex128 else torch.float32)
    out = odecore.odeint(lambda tt, y: 1j * omega * y, y0, t, method=method, options=fixed_options(method), **TOL)
    assert out.dtype == dtype and out.shape == (6, 2)
    exact = y0 * torch.exp(1j * omega * t.to(dtype))[:, None]
    bound = 2e-5 if dtype == torch.complex64 else CLOSED_FORM_BOUND[method]
    assert (out - exact).abs().max().item() <= bound


def _linear_system(dtype=torch.complex128):
    g = torch.Generator().manual_seed(0)
    a = torch.complex(
        torch.randn(4, 4, generator=g, dtype=torch.float64), torch.randn(4, 4, generator=g, dtype=torch.float64)
    )
    a = (0.6 * a - 0.5 * torch.eye(4, dtype=torch.complex128)).to(dtype)
    y0 = torch.complex(
        torch.randn(4, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)
    )
    return a, y0.to(dtype)


@pytest.mark.parametrize("method", ["dopri5", "dopri8", "tsit5", "rk4"])
def test_linear_system_closed_form(method):
    a, y0 = _linear_system()
    t = torch.linspace(0, 1.5, 4, dtype=torch.float64)
    out = odecore.odeint(lambda tt, y: a @ y, y0, t, method=method, options=fixed_options(method), **TOL)
    exact = torch.stack([torch.linalg.matrix_exp(a * tt) @ y0 for tt in t])
    assert (out - exact).abs().max().item() <= CLOSED_FORM_BOUND[method] * exact.abs().max().item()


class Counting:
    def __init__(self, f):
        self.f, self.nfe = f, 0

    def __call__(self, t, y):
        self.nfe += 1
        return self.f(t, y)


def _nonlinear(a, c=1.0):
    return lambda t, y: y @ a.T + c * torch.sin(3 * t) * y**2


@pytest.mark.parametrize(
    "method", ["dopri5", "bosh3", "fehlberg2", "adaptive_heun", "dopri8", "rk4", "euler", "midpoint"]
)
def test_same_steps_and_values_as_torchdiffeq(method):
    a, y0 = _linear_system()
    t = torch.linspace(0, 2, 5, dtype=torch.float64)
    options = dict(step_size=0.1) if method in ("rk4", "euler", "midpoint") else None
    ftd, foc = Counting(_nonlinear(a)), Counting(_nonlinear(a))
    ref = torchdiffeq.odeint(ftd, y0, t, method=method, rtol=1e-6, atol=1e-8, options=options)
    out, st = odecore.odeint(
        foc, y0, t, method=method, rtol=1e-6, atol=1e-8, options=dict(options or {}, return_stats=True)
    )
    assert out.dtype == torch.complex128
    assert foc.nfe == ftd.nfe == st["nfe"]
    if method not in ("rk4", "euler", "midpoint"):
        assert st["n_rejected"] > 0  # the comparison covers rejected steps
    # dopri8's dense output differs from torchdiffeq's (theirs is a 4th order fit)
    bound = 1e-7 if method == "dopri8" else 1e-12
    assert (out - ref).abs().max().item() <= bound


@pytest.mark.parametrize("method", ["dopri5", "rk4"])
def test_per_element_tolerances_and_decreasing_time(method):
    a, y0 = _linear_system()
    t = torch.tensor([1.0, 0.4, -0.5], dtype=torch.float64)
    atol = torch.tensor([1e-6, 1e-9, 1e-9, 1e-6], dtype=torch.float64)
    options = dict(step_size=0.05) if method == "rk4" else None
    ftd, foc = Counting(_nonlinear(a, 0.1)), Counting(_nonlinear(a, 0.1))
    ref = torchdiffeq.odeint(ftd, y0, t, method=method, rtol=1e-5, atol=atol, options=options)
    out = odecore.odeint(foc, y0, t, method=method, rtol=1e-5, atol=atol, options=options)
    assert foc.nfe == ftd.nfe
    assert (out - ref).abs().max().item() <= 1e-12


def test_tuple_state():
    def f(t, y):
        u, v = y
        return 1j * u + v.sum(), -v * (1 + 0.5j) + u[:1].reshape(1, 1)

    y0 = (
        torch.tensor([1.0 + 1.0j, 2.0j], dtype=torch.complex128),
        torch.tensor([[0.5 - 0.25j]], dtype=torch.complex128),
    )
    t = torch.linspace(0, 1, 3, dtype=torch.float64)
    ftd, foc = Counting(f), Counting(f)
    ref = torchdiffeq.odeint(ftd, y0, t, rtol=1e-7, atol=1e-9)
    out = odecore.odeint(foc, y0, t, rtol=1e-7, atol=1e-9)
    assert foc.nfe == ftd.nfe
    assert [o.shape for o in out] == [(3, 2), (3, 1, 1)] and all(o.dtype == torch.complex128 for o in out)
    for o, r in zip(out, ref):
        assert (o - r).abs().max().item() <= 1e-12


def test_func_norm_and_callbacks_see_complex():
    seen = {"func": set(), "norm": set(), "callback": set()}

    class F(torch.nn.Module):
        def forward(self, t, y):
            seen["func"].add((y.dtype, t.dtype, tuple(y.shape)))
            return -1j * y

        def callback_accept_step(self, t0, y0, dt):
            seen["callback"].add((y0.dtype, tuple(y0.shape)))

    def norm(x):
        seen["norm"].add((x.dtype, tuple(x.shape)))
        return x.abs().max()

    y0 = torch.ones(2, 3, dtype=torch.complex64)
    out = odecore.odeint(F(), y0, torch.tensor([0.0, 1.0]), options=dict(norm=norm))
    assert seen["func"] == {(torch.complex64, torch.float32, (2, 3))}
    assert seen["callback"] == {(torch.complex64, (2, 3))}
    assert {d for d, _ in seen["norm"]} <= {torch.complex64, torch.complex128} and {s for _, s in seen["norm"]} == {
        (2, 3)
    }
    # the same steps as torchdiffeq with that norm
    f_td, f_oc = Counting(lambda t, y: -1j * y), Counting(lambda t, y: -1j * y)
    ref = torchdiffeq.odeint(f_td, y0, torch.tensor([0.0, 1.0]), options=dict(norm=lambda x: x.abs().max()))
    odecore.odeint(f_oc, y0, torch.tensor([0.0, 1.0]), options=dict(norm=lambda x: x.abs().max()))
    assert f_oc.nfe == f_td.nfe
    assert (out - ref).abs().max().item() <= 1e-6


def _loss(out):
    return (out.abs() ** 2).sum() + out.real[-1].sum() - 0.5 * out.imag.sum()


@pytest.mark.parametrize("fn,method", [("odeint", "dopri5"), ("odeint", "rk4"), ("odeint_adjoint", "dopri5")])
def test_gradients_match_finite_differences(fn, method):
    """A real loss of the complex output: PyTorch's gradient for a complex leaf is
    dL/dRe + i dL/dIm, checked by central differences; and a real parameter's gradient."""
    a, y0 = _linear_system()
    scale = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    t = torch.linspace(0, 1, 3, dtype=torch.float64)
    kwargs = dict(method=method, rtol=1e-11, atol=1e-12, options=dict(step_size=1e-3) if method == "rk4" else None)

    def solve(y, s):
        f = lambda tt, yy: s * (a @ yy) + 0.1 * yy**2  # noqa: E731
        if fn == "odeint_adjoint":
            return odecore.odeint_adjoint(f, y, t, adjoint_params=(s,), **kwargs)
        return odecore.odeint(f, y, t, **kwargs)

    y = y0.clone().requires_grad_()
    grad_y, grad_s = torch.autograd.grad(_loss(solve(y, scale)), (y, scale))
    eps = 1e-6
    with torch.no_grad():
        for k in range(len(y0)):
            for unit, part in ((1.0, "real"), (1j, "imag")):
                e = torch.zeros_like(y0)
                e[k] = unit * eps
                fd = (_loss(solve(y0 + e, scale)) - _loss(solve(y0 - e, scale))).item() / (2 * eps)
                assert getattr(grad_y[k], part).item() == pytest.approx(fd, rel=1e-6, abs=1e-6)
        fd = (_loss(solve(y0, scale + eps)) - _loss(solve(y0, scale - eps))).item() / (2 * eps)
        assert grad_s.item() == pytest.approx(fd, rel=1e-6, abs=1e-6)


def test_direct_and_adjoint_gradients_agree_with_torchdiffeq():
    a, y0 = _linear_system()
    t = torch.linspace(0, 1, 3, dtype=torch.float64)
    f = _nonlinear(a)
    grads = []
    for lib in (odecore, torchdiffeq):
        y = y0.clone().requires_grad_()
        grads.append(torch.autograd.grad(_loss(lib.odeint(f, y, t, rtol=1e-10, atol=1e-12)), y)[0])
        y = y0.clone().requires_grad_()
        grads.append(
            torch.autograd.grad(_loss(lib.odeint_adjoint(f, y, t, rtol=1e-10, atol=1e-12, adjoint_params=())), y)[0]
        )
    for g in grads[1:]:
        assert (g - grads[0]).abs().max().item() <= 1e-8


def test_scipy_solver_complex():
    a, y0 = _linear_system()
    t = torch.linspace(0, 1, 3, dtype=torch.float64)
    f = _nonlinear(a)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = odecore.odeint(f, y0, t, method="scipy_solver", options=dict(solver="RK45"))
        ref = torchdiffeq.odeint(f, y0, t, method="scipy_solver", options=dict(solver="RK45"))
    assert out.dtype == torch.complex128
    assert (out - ref).abs().max().item() <= 1e-12


def test_errors():
    y0 = torch.ones(2, dtype=torch.complex128)
    with pytest.raises(TypeError, match="dtype"):
        odecore.odeint(lambda t, y: y.real, y0, torch.tensor([0.0, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="shape"):
        odecore.odeint(lambda t, y: y[:1], y0, torch.tensor([0.0, 1.0], dtype=torch.float64))
    with pytest.raises(TypeError, match="y0"):
        odecore.odeint(lambda t, y: y, y0.to(torch.complex32), torch.tensor([0.0, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="NaN"):
        odecore.odeint(lambda t, y: y, torch.tensor([complex(math.nan, 0)]), torch.tensor([0.0, 1.0]))


def test_stats_and_single_time():
    y0 = torch.ones(3, dtype=torch.complex64)
    out, st = odecore.odeint(lambda t, y: 1j * y, y0, torch.tensor([0.5]), options=dict(return_stats=True))
    assert out.dtype == torch.complex64 and out.shape == (1, 3) and torch.equal(out[0], y0)
    _, st = odecore.odeint(lambda t, y: 1j * y, y0, torch.tensor([0.0, 1.0]), options=dict(return_stats=True))
    assert st["loop"] == "host" and st["n_accepted"] > 0 and st["final_dt"] > 0
