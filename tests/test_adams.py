"""Fixed-grid Adams methods: explicit_adams, implicit_adams and fixed_adams.

torchdiffeq 0.2.5 is the reference: the same values (~1e-12 in float64) at the same times
passed to func, with interp='cubic', perturb=True, decreasing t, tuple states, every
max_order regime (rk4 below 4) and non-converging corrector iterations (the same warnings,
after which the history loses its oldest derivative). The coefficients are checked against
their defining property (exact for polynomials) and the orders measured: the one AB3 (AM4)
step after the rk4 warm-up bounds explicit_adams at order min(max_order - 1, 4) and
implicit_adams at min(max_order, 5).
"""

import math
import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch

import odecore
from odecore.solvers.adams import (
    BASHFORTH,
    MAX_ORDER,
    MOULTON,
    AdamsBashforth,
    AdamsBashforthMoulton,
    _adams_coefficients,
)

from .problems import get_problem, van_der_pol
from .testing import ADAMS_METHODS, CountingFunc, backends, dtypes, product, require_backend


def test_registry():
    assert odecore.SOLVERS["explicit_adams"] is AdamsBashforth
    assert odecore.SOLVERS["implicit_adams"] is AdamsBashforthMoulton
    assert odecore.SOLVERS["fixed_adams"] is AdamsBashforthMoulton
    assert AdamsBashforth.order == AdamsBashforthMoulton.order == 4  # torchdiffeq's attribute


# --------------------------------------------------------------------------- #
# Coefficients
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("k", range(1, MAX_ORDER + 1))
def test_coefficients_integrate_polynomials_exactly(k):
    """k-step Adams-Bashforth: int_0^1 p = sum_j beta_j p(-j) for deg p < k (not deg k);
    k-value Adams-Moulton: int_0^1 p = sum_j m_j p(1 - j), likewise."""
    for shift in (0, 1):
        coeffs = _adams_coefficients(k, shift)
        for q in range(k + 1):
            quadrature = sum(c * Fraction(shift - j) ** q for j, c in enumerate(coeffs))
            exact = Fraction(1, q + 1)
            assert (quadrature == exact) == (q < k), (k, shift, q, quadrature)
    if k < MAX_ORDER:
        assert BASHFORTH[k] == tuple(float(v) for v in _adams_coefficients(k, 0))
    assert MOULTON[k] == tuple(float(v) for v in _adams_coefficients(k, 1))


def test_coefficients_match_torchdiffeq():
    fixed_adams = pytest.importorskip("torchdiffeq._impl.fixed_adams")
    for k in range(2, MAX_ORDER):
        assert list(BASHFORTH[k]) == fixed_adams._BASHFORTH_DIVISOR[k].tolist(), k
    for k in range(2, MAX_ORDER + 1):
        # (torchdiffeq's Moulton row 1 is 1/11, a typo it never uses)
        assert list(MOULTON[k]) == fixed_adams._MOULTON_DIVISOR[k].tolist(), k


# --------------------------------------------------------------------------- #
# Parity with torchdiffeq 0.2.5
# --------------------------------------------------------------------------- #

OPTION_SETS = [
    dict(step_size=0.001),  # default max_order 12 (AB11 / AM12)
    dict(step_size=0.01, max_order=6),
    dict(step_size=0.05, max_order=4),  # correctors that do not converge
    dict(step_size=0.05, max_order=5, interp="cubic", perturb=True),
    dict(step_size=0.2, max_order=5, max_iters=1),  # PEC: never "converged"
    dict(step_size=0.07, max_order=3),  # rk4 throughout
]


def _solve_both(method, f, y0, t, **kwargs):
    td = pytest.importorskip("torchdiffeq")
    results = []
    for odeint in (td.odeint, odecore.odeint):
        func = CountingFunc(f)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = odeint(func, y0, t, method=method, **kwargs)
        results.append((out, func, [str(w.message) for w in caught]))
    return results


@pytest.mark.parametrize("method,options,tol", product(ADAMS_METHODS, OPTION_SETS, [1e-7, 1e-12]))
def test_parity_float64(method, options, tol):
    f = van_der_pol(1.0)
    y0 = torch.tensor([2.0, 0.0], dtype=torch.float64)
    t = torch.linspace(0.0, 3.0, 7, dtype=torch.float64)
    (out_td, f_td, warn_td), (out_oc, f_oc, warn_oc) = _solve_both(
        method, f, y0, t, rtol=tol, atol=tol, options=options
    )
    assert torch.isfinite(out_oc).all()
    assert (out_td - out_oc).abs().max().item() <= 1e-12
    assert warn_oc == warn_td  # the same warnings, as often
    if options.get("interp", "linear") == "linear":  # (cubic: torchdiffeq evaluates f(t1) per output)
        assert f_oc.times() == f_td.times()


@pytest.mark.parametrize("method,dtype", product(["explicit_adams", "implicit_adams"], dtypes))
def test_parity_decreasing_time_and_dtypes(method, dtype):
    prob = get_problem("linear")
    t = torch.linspace(1.8, 0.3, 5, dtype=dtype)
    options = dict(step_size=0.01, max_order=6)
    (out_td, _, warn_td), (out_oc, _, warn_oc) = _solve_both(method, prob.func, prob.y0(dtype), t, options=options)
    assert out_oc.dtype == dtype
    assert (out_td - out_oc).abs().max().item() <= (1e-12 if dtype == torch.float64 else 1e-5)
    # (the outputs are off the grid: linear interpolation, O(h^2))
    assert (out_oc.double() - prob.exact(t, prob.y0(torch.float64))).abs().max().item() <= 1e-4


def test_parity_tuple_state():
    def f(t, y):
        a, b = y
        return (b.sum() * torch.ones_like(a) - a, -a.sum() * torch.ones_like(b) * 0.5 + torch.cos(t))

    y0 = (torch.tensor([1.0, 0.5], dtype=torch.float64), torch.tensor([[0.2], [-0.3]], dtype=torch.float64))
    t = torch.linspace(0.0, 2.0, 4, dtype=torch.float64)
    for method in ("explicit_adams", "implicit_adams"):
        (out_td, _, _), (out_oc, _, _) = _solve_both(
            method, f, y0, t, rtol=1e-9, atol=1e-9, options=dict(step_size=0.01, max_order=7)
        )
        assert isinstance(out_oc, tuple) and out_oc[1].shape == (4, 2, 1)
        for a, b in zip(out_td, out_oc):
            assert (a - b).abs().max().item() <= 1e-12


# --------------------------------------------------------------------------- #
# Convergence orders
# --------------------------------------------------------------------------- #

T_END = 2.0
EXACT = math.exp(math.sin(T_END))

# (method, max_order): (expected order, step sizes)
ORDER_CASES = {
    ("explicit_adams", 4): (3, [2**-5, 2**-6, 2**-7, 2**-8]),
    ("explicit_adams", 6): (4, [2**-4, 2**-5, 2**-6, 2**-7]),
    ("explicit_adams", 12): (4, [2**-7, 2**-8, 2**-9]),
    ("implicit_adams", 4): (4, [2**-4, 2**-5, 2**-6, 2**-7]),
    ("implicit_adams", 5): (5, [2**-4, 2**-5, 2**-6, 2**-7]),
    ("implicit_adams", 12): (5, [2**-5, 2**-6, 2**-7, 2**-8]),
    ("explicit_adams", 3): (4, [2**-4, 2**-5, 2**-6]),  # rk4
}


def _final_error(method, h, max_order, backend="fused"):
    y0 = torch.tensor([1.0], dtype=torch.float64)
    t = torch.tensor([0.0, T_END], dtype=torch.float64)
    out, stats = odecore.odeint(
        lambda t, y: y * torch.cos(t),
        y0,
        t,
        rtol=1e-14,
        atol=1e-14,
        method=method,
        options=dict(step_size=h, max_order=max_order, max_iters=20, backend=backend, return_stats=True),
    )
    assert stats["n_steps"] == round(T_END / h)
    return abs(out[-1].item() - EXACT)


@pytest.mark.parametrize("case", sorted(ORDER_CASES))
def test_convergence_order(case):
    method, max_order = case
    order, hs = ORDER_CASES[case]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every corrector converges
        if max_order < 4:
            warnings.filterwarnings("ignore", "max_order is below")
        errs = [_final_error(method, h, max_order) for h in hs]
    assert all(e > 1e-13 for e in errs), errs
    slope = np.polyfit(np.log(hs), np.log(errs), 1)[0]
    assert abs(slope - order) <= 0.3, (slope, errs)


# --------------------------------------------------------------------------- #
# Options and errors
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("method,backend", product(["explicit_adams", "implicit_adams"], backends))
def test_low_max_order_is_rk4(method, backend):
    require_backend(backend)
    prob = get_problem("exponential")
    t = torch.linspace(0.0, 1.0, 5, dtype=torch.float64)
    with pytest.warns(UserWarning, match="max_order is below 4, so the solver reduces to `rk4`"):
        out = odecore.odeint(
            prob.func,
            prob.y0(torch.float64),
            t,
            method=method,
            options=dict(step_size=0.1, max_order=2, backend=backend),
        )
    rk4 = odecore.odeint(prob.func, prob.y0(torch.float64), t, method="rk4", options=dict(step_size=0.1))
    assert (out - rk4).abs().max().item() <= 1e-14
    with pytest.warns(UserWarning, match="max_order is below 4"):  # torchdiffeq fails on max_order=1
        out1 = odecore.odeint(
            prob.func, prob.y0(torch.float64), t, method=method, options=dict(step_size=0.1, max_order=1)
        )
    assert (out1 - rk4).abs().max().item() <= 1e-14


@pytest.mark.parametrize("options", [dict(max_order=13), dict(max_order=0), dict(max_order=4.5), dict(max_iters=0)])
def test_bad_options(options):
    prob = get_problem("constant")
    with pytest.raises(ValueError, match="max_order|max_iters"):
        odecore.odeint(
            prob.func,
            prob.y0(torch.float64),
            torch.tensor([0.0, 1.0], dtype=torch.float64),
            method="implicit_adams",
            options=dict(step_size=0.1, **options),
        )


def test_unknown_option_warns_as_torchdiffeq():
    prob = get_problem("constant")
    with pytest.warns(UserWarning, match="AdamsBashforth: Unexpected arguments {'foo': 1}"):
        odecore.odeint(
            prob.func,
            prob.y0(torch.float64),
            torch.tensor([0.0, 1.0], dtype=torch.float64),
            method="explicit_adams",
            options=dict(step_size=0.1, foo=1),
        )


def test_grid_constructor_and_backends_agree():
    prob = get_problem("sine")
    t = torch.tensor([0.0, 0.35, 1.0], dtype=torch.float64)

    def grid(func, y0, t):  # (uniform: the coefficients are those of a constant step, as in torchdiffeq)
        return torch.linspace(0.0, 1.0, 41, dtype=t.dtype)

    outs = [
        odecore.odeint(
            prob.func,
            prob.y0(torch.float64),
            t,
            method="implicit_adams",
            options=dict(grid_constructor=grid, max_order=6, backend=b, interp="cubic"),
        )
        for b in ("fused", "reference")
    ]
    assert (outs[0] - outs[1]).abs().max().item() <= 1e-14
    assert (outs[0] - prob.exact(t, prob.y0(torch.float64))).abs().max().item() <= 1e-7


# --------------------------------------------------------------------------- #
# Gradients
# --------------------------------------------------------------------------- #


class _Func(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([[-1.0, 0.7], [-0.6, -0.4]], dtype=torch.float64))

    def forward(self, t, y):
        return self.w @ torch.tanh(y) + 0.1 * torch.cos(t)


def _grads(func, method, options):
    y0 = torch.tensor([1.0, -0.5], dtype=torch.float64, requires_grad=True)
    t = torch.linspace(0.0, 1.5, 4, dtype=torch.float64)
    func.zero_grad()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = odecore.odeint(func, y0, t, method=method, options=options)
    (out * torch.arange(8.0, dtype=torch.float64).view(4, 2)).sum().backward()
    return out.detach(), y0.grad.clone(), func.w.grad.clone()


@pytest.mark.parametrize("method,checkpoint", product(["explicit_adams", "implicit_adams"], [1, 3, 7]))
def test_checkpointed_gradients_equal_direct_backprop(method, checkpoint):
    """The Adams history is part of the checkpointed state."""
    func = _Func()
    options = dict(step_size=0.05, max_order=6)
    direct = _grads(func, method, options)
    replayed = _grads(func, method, dict(options, checkpoint=checkpoint))
    for a, b in zip(direct, replayed):
        assert (a - b).abs().max().item() <= 1e-12


def test_gradcheck_explicit_adams():
    w = torch.tensor([[-1.0, 0.7], [-0.6, -0.4]], dtype=torch.float64, requires_grad=True)
    y0 = torch.tensor([1.0, -0.5], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 0.5], dtype=torch.float64)

    def solve(y0, w):
        return odecore.odeint(
            lambda t, y: w @ torch.tanh(y), y0, t, method="explicit_adams", options=dict(step_size=0.05, max_order=5)
        )

    assert torch.autograd.gradcheck(solve, (y0, w))
