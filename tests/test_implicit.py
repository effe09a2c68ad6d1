"""Implicit Runge-Kutta methods on the fixed grid (torchdiffeq main branch's names):
implicit_euler, implicit_midpoint, trapezoid, gl4, gl6, radauIIA3, radauIIA5, sdirk2, trbdf2.

- every tableau satisfies the rooted-tree order conditions up to its order and fails one of
  the next order (odecore.solvers.order_conditions, itself checked on known trees and on the
  explicit tableaus); torchdiffeq's gl4 nodes are wrong and fail them;
- stiff problems: a step at which rk4 explodes is accurate here; Robertson's kinetics
  against scipy's Radau on a geometric grid;
- the measured convergence order of every method;
- Newton's method: the error when it does not converge names t and dt; a func without a
  graph (finite-difference Jacobian); float32/float64, tuple states, decreasing time;
- gradients: direct backprop matches finite differences and checkpointed backprop.
"""

import copy
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

import odecore
from odecore.solvers.fixed_grid_implicit import FixedGridImplicitRKSolver
from odecore.solvers.order_conditions import (
    check_order,
    order_residuals,
    rooted_trees,
    tableau_order,
    tree_density,
    tree_order,
)
from odecore.solvers.tableau import ImplicitTableau

from .problems import robertson
from .testing import IMPLICIT_METHODS, ORDERS, dtypes, product


def test_registry():
    for method in IMPLICIT_METHODS:
        cls = odecore.SOLVERS[method]
        assert issubclass(cls, FixedGridImplicitRKSolver)
        assert cls.order == ORDERS[method] and cls.name == method


# --------------------------------------------------------------------------- #
# Order conditions
# --------------------------------------------------------------------------- #


def test_rooted_trees():
    assert [len(rooted_trees(p)) for p in range(1, 10)] == [1, 1, 2, 4, 9, 20, 48, 115, 286]  # OEIS A000081
    for p in range(1, 8):
        assert all(tree_order(tree) == p for tree in rooted_trees(p))
    leaf = ()
    # the order-3 and order-4 trees and their densities (Hairer, Norsett & Wanner, Table II.2.1)
    assert {tree: tree_density(tree) for tree in rooted_trees(3)} == {(leaf, leaf): 3, ((leaf,),): 6}
    assert sorted(tree_density(tree) for tree in rooted_trees(4)) == [4, 8, 12, 24]
    # the tall tree (a path) of p vertices has density p!
    tall = leaf
    for p in range(2, 8):
        tall = (tall,)
        assert tree_density(tall) == math.factorial(p)


def test_order_conditions_by_hand():
    """The residuals up to order 4 are the classic conditions, for a random tableau."""
    rng = np.random.default_rng(0)
    s = 3
    a = rng.normal(size=(s, s))
    b = rng.normal(size=s)
    c = a.sum(1)
    res = {tree: r for tree, r, _ in order_residuals(a.tolist(), b.tolist(), c.tolist(), 4)}
    leaf = ()
    expected = {
        leaf: b.sum() - 1,
        (leaf,): b @ c - 1 / 2,
        (leaf, leaf): b @ c**2 - 1 / 3,
        ((leaf,),): b @ a @ c - 1 / 6,
        (leaf, leaf, leaf): b @ c**3 - 1 / 4,
        (leaf, (leaf,)): b @ (c * (a @ c)) - 1 / 8,
        ((leaf, leaf),): b @ a @ c**2 - 1 / 12,
        (((leaf,),),): b @ a @ a @ c - 1 / 24,
    }
    assert set(expected) <= set(res)
    for tree, value in expected.items():
        assert abs(res[tree] - value) < 1e-12, tree


def test_explicit_tableaus_have_their_order():
    """The checker on every explicit tableau of odecore (solution weights, and the embedded
    ones one order lower)."""
    for name, cls in odecore.SOLVERS.items():
        tab = getattr(cls, "tableau", None)
        if not hasattr(tab, "stage_terms"):
            continue
        assert tableau_order(tab.a, tab.b, tab.c, max_order=cls.order + 1) == cls.order, name
        if tab.e is not None:
            b_hat = [bi - ei for bi, ei in zip(tab.b, tab.e)]
            assert tableau_order(tab.a, b_hat, tab.c, max_order=cls.order) == cls.order - 1, name


@pytest.mark.parametrize("method", IMPLICIT_METHODS)
def test_implicit_tableau_order(method):
    cls = odecore.SOLVERS[method]
    tab, order = cls.tableau, cls.order
    assert check_order(tab.a, tab.b, tab.c, order) == []
    failing = check_order(tab.a, tab.b, tab.c, order + 1)
    assert failing and all(tree_order(tree) == order + 1 for tree, _ in failing)
    assert tableau_order(tab.a, tab.b, tab.c, max_order=8) == order


def test_rational_tableaus_exactly():
    F = Fraction
    exact = {
        "implicit_euler": ([[F(1)]], [F(1)], [F(1)], 1),
        "implicit_midpoint": ([[F(1, 2)]], [F(1)], [F(1, 2)], 2),
        "trapezoid": ([[F(0), F(0)], [F(1, 2), F(1, 2)]], [F(1, 2), F(1, 2)], [F(0), F(1)], 2),
        "radauIIA3": ([[F(5, 12), F(-1, 12)], [F(3, 4), F(1, 4)]], [F(3, 4), F(1, 4)], [F(1, 3), F(1)], 3),
    }
    for method, (a, b, c, order) in exact.items():
        tab = odecore.SOLVERS[method].tableau
        assert np.allclose(np.array(tab.a, dtype=float), np.array(a, dtype=float), rtol=0, atol=1e-16)
        assert all(abs(x - float(y)) < 1e-16 for x, y in zip(tab.b + tab.c, b + c))
        assert all(r == 0 for _, r, _ in order_residuals(a, b, c, order))
        assert any(r != 0 for _, r, _ in order_residuals(a, b, c, order + 1))


SQRT3 = math.sqrt(3.0)
# torchdiffeq main, fixed_grid_implicit.py: alpha (the nodes) of its Gauss-Legendre 4
TORCHDIFFEQ_GL4 = dict(
    c=(0.5 - SQRT3 / 6, 0.5 - SQRT3 / 6), a=((0.25, 0.25 - SQRT3 / 6), (0.25 + SQRT3 / 6, 0.25)), b=(0.5, 0.5)
)


def test_torchdiffeq_gl4_nodes_are_wrong():
    """torchdiffeq has c = (1/2 - sqrt3/6, 1/2 - sqrt3/6); the Gauss points are 1/2 -+ sqrt3/6."""
    tab = odecore.SOLVERS["gl4"].tableau
    assert tab.c == (0.5 - SQRT3 / 6, 0.5 + SQRT3 / 6)
    assert np.allclose(np.polynomial.legendre.leggauss(2)[0] / 2 + 0.5, tab.c, rtol=0, atol=1e-15)
    failing = dict(check_order(**TORCHDIFFEQ_GL4, order=4))
    assert "row sums" in failing and ((),) in failing  # c != A 1 and b.c != 1/2
    with pytest.raises(ValueError, match="row 1 of a sums to"):
        ImplicitTableau(**TORCHDIFFEQ_GL4)


def test_torchdiffeq_gl4_is_first_order_on_a_non_autonomous_problem():
    bad = copy.copy(odecore.SOLVERS["gl4"].tableau)
    object.__setattr__(bad, "c", TORCHDIFFEQ_GL4["c"])  # past the validation, to see the effect

    class TorchdiffeqGL4(odecore.SOLVERS["gl4"]):
        tableau = bad

    hs = [2**-3, 2**-4, 2**-5]
    errors = {}
    for name in ("gl4", "torchdiffeq_gl4"):
        odecore.SOLVERS["torchdiffeq_gl4"] = TorchdiffeqGL4
        try:
            errors[name] = [_final_error(name, h) for h in hs]
        finally:
            del odecore.SOLVERS["torchdiffeq_gl4"]
    assert abs(_slope(hs, errors["torchdiffeq_gl4"]) - 1) <= 0.3, errors
    assert abs(_slope(hs, errors["gl4"]) - 4) <= 0.3, errors


def test_tableau_validation():
    with pytest.raises(ValueError, match="sums to"):
        ImplicitTableau(c=(0.5,), a=((1.0,),), b=(1.0,))
    with pytest.raises(ValueError, match="b must sum to 1"):
        ImplicitTableau(c=(1.0,), a=((1.0,),), b=(0.5,))
    with pytest.raises(ValueError, match="only the first stage may be explicit"):
        ImplicitTableau(c=(1.0, 0.0), a=((1.0, 0.0), (0.0, 0.0)), b=(0.5, 0.5))
    with pytest.raises(ValueError, match="invertible"):
        ImplicitTableau(c=(1.0, 1.0), a=((0.5, 0.5), (0.5, 0.5)), b=(0.5, 0.5))


# --------------------------------------------------------------------------- #
# Convergence orders on a smooth problem
# --------------------------------------------------------------------------- #

T_END = 2.0
EXACT = math.exp(math.sin(T_END))

# step sizes (powers of two, so the grid ends on T_END) with errors well above rounding
STEPS = {
    "implicit_euler": [2**-4, 2**-5, 2**-6],
    "implicit_midpoint": [2**-3, 2**-4, 2**-5],
    "trapezoid": [2**-3, 2**-4, 2**-5],
    "sdirk2": [2**-4, 2**-5, 2**-6],
    "trbdf2": [2**-3, 2**-4, 2**-5],
    "radauIIA3": [2**-2, 2**-3, 2**-4],
    "gl4": [2**-1, 2**-2, 2**-3],
    "radauIIA5": [2**-1, 2**-2, 2**-3],  # errors 2e-5 .. 2e-8
    "gl6": [2**-0, 2**-1, 2**-2],  # errors 6e-5 .. 1e-8
}


def _final_error(method, h):
    y0 = torch.tensor([1.0], dtype=torch.float64)
    t = torch.tensor([0.0, T_END], dtype=torch.float64)
    with torch.no_grad():
        out, stats = odecore.odeint(
            lambda t, y: y * torch.cos(t),
            y0,
            t,
            rtol=1e-13,
            atol=1e-13,
            method=method,
            options=dict(step_size=h, return_stats=True),
        )
    assert stats["n_steps"] == round(T_END / h) == stats["n_jacobians"]
    return abs(out[-1].item() - EXACT)


def _slope(hs, errs):
    return np.polyfit(np.log(hs), np.log(errs), 1)[0]


@pytest.mark.parametrize("method", IMPLICIT_METHODS)
def test_convergence_order(method):
    hs = STEPS[method]
    errs = [_final_error(method, h) for h in hs]
    assert all(e > 1e-12 for e in errs), errs
    assert errs[0] > errs[1] > errs[2], errs
    slope = _slope(hs, errs)
    assert abs(slope - ORDERS[method]) <= 0.3, (slope, errs)


# --------------------------------------------------------------------------- #
# Stiff problems
# --------------------------------------------------------------------------- #

STIFF_A = torch.tensor([[-500.5, 499.5], [499.5, -500.5]], dtype=torch.float64)  # eigenvalues -1, -1000


def _stiff_linear(t, y):
    return STIFF_A.to(y) @ y


# |error| at t = 0.5, 1 with dt = 0.01 (dt * 1000 = 10): the slow mode's error of each order
STIFF_BOUNDS = {
    "implicit_euler": 3e-3,
    "implicit_midpoint": 2e-5,
    "trapezoid": 2e-5,
    "sdirk2": 2e-5,
    "trbdf2": 2e-5,
    "radauIIA3": 1e-7,
    "gl4": 1e-8,
    "radauIIA5": 1e-10,
    "gl6": 1e-10,
}


@pytest.mark.parametrize("method,dtype", product(IMPLICIT_METHODS, dtypes))
def test_stiff_linear_system(method, dtype):
    """y' = A y with eigenvalues -1 and -1000 and both modes excited: rk4 at dt = 0.01
    explodes, every implicit method is accurate (the A-stable but not L-stable ones damp the
    stiff mode slowly, so the outputs are taken from t = 0.5)."""
    y0 = torch.tensor([2.0, 0.0], dtype=dtype)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=dtype)
    exact = torch.stack([torch.linalg.matrix_exp(STIFF_A * float(ti)) @ y0.double() for ti in t])
    rk4 = odecore.odeint(_stiff_linear, y0.double(), t.double(), method="rk4", options=dict(step_size=0.01))
    assert not (rk4.abs().max() < 1e10)
    out = odecore.odeint(_stiff_linear, y0, t, method=method, options=dict(step_size=0.01))
    assert out.dtype == dtype
    bound = STIFF_BOUNDS[method] if dtype == torch.float64 else max(STIFF_BOUNDS[method], 1e-5)
    assert (out.double() - exact)[1:].abs().max().item() <= bound


@pytest.mark.parametrize("method", ["implicit_euler", "sdirk2", "trbdf2", "radauIIA3", "radauIIA5"])
def test_stiff_transient_l_stable(method):
    """y' = -1000 (y - cos t) from y = 0: the L-stable methods kill the transient in a step."""
    lam = 1000.0
    t = torch.linspace(0.0, 1.0, 11, dtype=torch.float64)
    out = odecore.odeint(
        lambda t, y: -lam * (y - torch.cos(t)),
        torch.zeros(1, dtype=torch.float64),
        t,
        method=method,
        options=dict(step_size=0.01),
    )
    a, b = lam**2 / (lam**2 + 1), lam / (lam**2 + 1)
    exact = a * torch.cos(t) + b * torch.sin(t) - a * torch.exp(-lam * t)
    assert (out[1:, 0] - exact[1:]).abs().max().item() <= 1e-5


ROBERTSON_T = [0.0, 1e-3, 0.4, 4.0, 40.0]
# largest relative error of any component at ROBERTSON_T[1:] on the 200-point grid
ROBERTSON_BOUNDS = {
    "implicit_euler": 0.1,
    "implicit_midpoint": 3e-3,
    "trapezoid": 2e-3,
    "sdirk2": 1e-3,
    "trbdf2": 1e-3,
    "gl4": 2e-3,
    "radauIIA3": 5e-5,
    "gl6": 1e-6,
    "radauIIA5": 1e-8,
}


@pytest.fixture(scope="module")
def robertson_reference():
    scipy_integrate = pytest.importorskip("scipy.integrate")

    def f(t, y):
        return robertson(t, torch.as_tensor(y)).numpy()

    sol = scipy_integrate.solve_ivp(
        f, (0.0, ROBERTSON_T[-1]), [1.0, 0.0, 0.0], method="Radau", rtol=1e-10, atol=1e-12, t_eval=ROBERTSON_T
    )
    assert sol.success
    return torch.tensor(sol.y.T)


def _geometric_grid(func, y0, t):
    """0, 199 times from 1e-6 to t[-1] geometrically, and the output times."""
    grid = torch.logspace(-6, math.log10(float(t[-1])), 199, dtype=torch.float64).to(t.dtype)
    grid = grid[grid < t[-1]]
    return torch.unique(torch.cat([torch.zeros(1, dtype=t.dtype), grid, t]))


@pytest.mark.parametrize("method,dtype", product(IMPLICIT_METHODS, dtypes))
def test_robertson_against_scipy_radau(method, dtype, robertson_reference):
    """Robertson's kinetics (k1 = 0.04, k2 = 3e7, k3 = 1e4) to t = 40 on ~200 steps."""
    tol = dict(rtol=1e-10, atol=1e-14) if dtype == torch.float64 else dict(rtol=1e-6, atol=1e-10)
    with torch.no_grad():
        out, stats = odecore.odeint(
            robertson,
            torch.tensor([1.0, 0.0, 0.0], dtype=dtype),
            torch.tensor(ROBERTSON_T, dtype=dtype),
            method=method,
            options=dict(grid_constructor=_geometric_grid, return_stats=True),
            **tol,
        )
    assert stats["n_steps"] <= 204
    rel = ((out.double() - robertson_reference) / robertson_reference.abs().clamp_min(1e-30))[1:]
    bound = ROBERTSON_BOUNDS[method] if dtype == torch.float64 else max(ROBERTSON_BOUNDS[method], 1e-5)
    assert rel.abs().max().item() <= bound, rel.abs().max(0)
    assert abs(out[-1].sum().item() - 1.0) <= (1e-12 if dtype == torch.float64 else 1e-6)  # mass is conserved


# --------------------------------------------------------------------------- #
# Newton's method
# --------------------------------------------------------------------------- #


def test_non_convergence_names_t_and_dt():
    y0 = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    t = torch.tensor([0.0, 10.0, 40.0], dtype=torch.float64)
    with pytest.raises(
        RuntimeError,
        match=r"radauIIA5: Newton's method .* did not converge in 1 iterations at "
        r"t=0\.0, dt=10\.0 .*max_iters",
    ):
        odecore.odeint(robertson, y0, t, method="radauIIA5", options=dict(max_iters=1))
    # decreasing time: t and dt as the user sees them
    with pytest.raises(RuntimeError, match=r"did not converge in 2 iterations at t=40\.0, dt=-30\.0"):
        odecore.odeint(robertson, y0, t.flip(0), method="implicit_euler", options=dict(max_iters=2))


def test_non_finite_iterates_are_reported():
    def f(t, y):
        return torch.where(y > 2.0, torch.full_like(y, float("nan")), -1e3 * y**3)

    with pytest.raises(RuntimeError, match=r"gl4: Newton's method .* non-finite values at t=0\.0, dt=1\.0"):
        odecore.odeint(
            f, torch.tensor([1.0], dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64), method="gl4"
        )


@pytest.mark.parametrize("value", [0, -1, 2.5, True])
def test_bad_max_iters(value):
    with pytest.raises(ValueError, match="max_iters"):
        odecore.odeint(
            _stiff_linear,
            torch.ones(2, dtype=torch.float64),
            torch.tensor([0.0, 1.0], dtype=torch.float64),
            method="trbdf2",
            options=dict(max_iters=value),
        )


def test_unknown_option_warns():
    with pytest.warns(UserWarning, match="SDIRK2: Unexpected arguments {'foo': 1}"):
        odecore.odeint(
            _stiff_linear,
            torch.ones(2, dtype=torch.float64),
            torch.tensor([0.0, 1.0], dtype=torch.float64),
            method="sdirk2",
            options=dict(foo=1, step_size=0.5),
        )


def test_newton_iterations_and_evaluations():
    """Linear problem: the first iteration solves it, the second confirms; one evaluation for
    the Jacobian (and f0) per step, one per implicit stage per iteration."""
    y0 = torch.tensor([2.0, 0.0], dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    for method, stages in [("implicit_euler", 1), ("trapezoid", 1), ("radauIIA5", 3), ("trbdf2", 2)]:
        with torch.no_grad():
            _, stats = odecore.odeint(
                _stiff_linear, y0, t, method=method, options=dict(step_size=0.1, return_stats=True)
            )
        assert stats["n_steps"] == stats["n_jacobians"] == 10
        assert stats["n_newton_iters"] == 20
        assert stats["nfe"] == 10 + 20 * stages


def test_func_without_graph_uses_finite_differences():
    """A func whose output carries no graph (computed under no_grad, as the adjoint's
    augmented dynamics): the Jacobian by forward differences, the same solution."""

    def detached(t, y):
        with torch.no_grad():
            return _stiff_linear(t, y)

    y0 = torch.tensor([2.0, 0.0], dtype=torch.float64)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    a = odecore.odeint(_stiff_linear, y0, t, method="radauIIA5", options=dict(step_size=0.05))
    b, stats = odecore.odeint(detached, y0, t, method="radauIIA5", options=dict(step_size=0.05, return_stats=True))
    assert (a - b).abs().max().item() <= 1e-12
    assert stats["nfe"] == 20 * (1 + 2) + stats["n_newton_iters"] * 3  # + 2 differences per Jacobian


def test_solution_needs_no_grad_when_nothing_does():
    out = odecore.odeint(
        _stiff_linear,
        torch.ones(2, dtype=torch.float64),
        torch.tensor([0.0, 1.0], dtype=torch.float64),
        method="gl6",
        options=dict(step_size=0.25),
    )
    assert not out.requires_grad


# --------------------------------------------------------------------------- #
# State forms, time direction, interpolation
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("method", ["trapezoid", "radauIIA5", "trbdf2"])
def test_tuple_state_is_flattened(method):
    def f_tuple(t, y):
        a, b = y
        return (-3.0 * a + b.reshape(-1)[:2], -50.0 * b + a.sum() * torch.cos(t))

    def f_flat(t, y):
        a, b = y[:2], y[2:].view(2, 1)
        da, db = f_tuple(t, (a, b))
        return torch.cat([da, db.reshape(-1)])

    y0 = (torch.tensor([1.0, -1.0], dtype=torch.float64), torch.tensor([[0.5], [2.0]], dtype=torch.float64))
    t = torch.linspace(0.0, 1.0, 5, dtype=torch.float64)
    out = odecore.odeint(f_tuple, y0, t, method=method, options=dict(step_size=0.05))
    flat = odecore.odeint(f_flat, torch.cat([y0[0], y0[1].reshape(-1)]), t, method=method, options=dict(step_size=0.05))
    assert isinstance(out, tuple) and out[0].shape == (5, 2) and out[1].shape == (5, 2, 1)
    assert (torch.cat([out[0], out[1].reshape(5, -1)], dim=1) - flat).abs().max().item() <= 1e-14


@pytest.mark.parametrize("method", ["gl4", "trbdf2"])
def test_decreasing_time(method):
    """Backwards in t equals forwards in s = -t on g(s, y) = -f(-s, y)."""

    def f(t, y):
        return _stiff_linear(t, y) + torch.sin(3 * t)

    y0 = torch.tensor([1.0, 0.5], dtype=torch.float64)
    t = torch.tensor([1.0, 0.6, 0.0], dtype=torch.float64)
    back = odecore.odeint(f, y0, t, method=method, options=dict(step_size=0.05))
    fwd = odecore.odeint(lambda s, y: -f(-s, y), y0, -t, method=method, options=dict(step_size=0.05))
    assert (back - fwd).abs().max().item() <= 1e-13


def test_cubic_interpolation_and_perturb():
    prob_t = torch.linspace(0.0, 2.0, 9, dtype=torch.float64)  # off the 0.3 grid
    exact = torch.exp(torch.sin(prob_t))
    errors = {}
    for interp in ("linear", "cubic"):
        out = odecore.odeint(
            lambda t, y: y * torch.cos(t),
            torch.ones(1, dtype=torch.float64),
            prob_t,
            method="gl6",
            rtol=1e-12,
            atol=1e-12,
            options=dict(step_size=0.3, interp=interp, perturb=True),
        )
        errors[interp] = (out[:, 0] - exact).abs().max().item()
    assert errors["cubic"] < 1e-3 < errors["linear"] and errors["cubic"] < errors["linear"] / 10


# --------------------------------------------------------------------------- #
# Gradients
# --------------------------------------------------------------------------- #


class _Func(torch.nn.Module):
    def __init__(self, dtype=torch.float64):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([[-20.0, 1.0], [-1.0, -3.0]], dtype=dtype))

    def forward(self, t, y):
        return self.w @ torch.tanh(y) + 0.1 * torch.cos(t)


_T = torch.linspace(0.0, 1.0, 5, dtype=torch.float64)
_WEIGHTS = torch.arange(10.0, dtype=torch.float64).view(5, 2)


def _loss(func, y0, method, **options):
    out = odecore.odeint(func, y0, _T, rtol=1e-12, atol=1e-12, method=method, options=dict(step_size=0.05, **options))
    return (out * _WEIGHTS).sum()


@pytest.mark.parametrize("method", IMPLICIT_METHODS)
def test_gradients_match_finite_differences(method):
    func = _Func()
    y0 = torch.tensor([1.0, -0.5], dtype=torch.float64, requires_grad=True)
    _loss(func, y0, method).backward()
    eps = 1e-6
    with torch.no_grad():
        for i in range(2):
            e = torch.zeros(2, dtype=torch.float64)
            e[i] = eps
            fd = (_loss(func, y0 + e, method) - _loss(func, y0 - e, method)) / (2 * eps)
            assert abs(y0.grad[i].item() - fd.item()) <= 1e-6 * max(1.0, abs(fd.item())), (i, y0.grad, fd)
        w = func.w.detach().clone()
        for idx in [(0, 0), (1, 0)]:
            func.w.data = w.clone()
            func.w.data[idx] += eps
            plus = _loss(func, y0, method)
            func.w.data[idx] -= 2 * eps
            minus = _loss(func, y0, method)
            func.w.data = w.clone()
            fd = (plus - minus) / (2 * eps)
            assert abs(func.w.grad[idx].item() - fd.item()) <= 1e-6 * max(1.0, abs(fd.item())), (idx, func.w.grad, fd)


def test_implicit_euler_gradcheck():
    w = torch.tensor([[-20.0, 1.0], [-1.0, -3.0]], dtype=torch.float64, requires_grad=True)
    y0 = torch.tensor([1.0, -0.5], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 0.3], dtype=torch.float64)

    def solve(y0, w):
        return odecore.odeint(
            lambda t, y: w @ torch.tanh(y),
            y0,
            t,
            rtol=1e-13,
            atol=1e-13,
            method="implicit_euler",
            options=dict(step_size=0.1),
        )

    assert torch.autograd.gradcheck(solve, (y0, w), atol=1e-7)


@pytest.mark.parametrize("method", ["implicit_euler", "radauIIA5", "trbdf2"])
def test_checkpointed_gradients_equal_direct_backprop(method):
    grads = []
    for options in ({}, {"checkpoint": 3}):
        func = _Func()
        y0 = torch.tensor([1.0, -0.5], dtype=torch.float64, requires_grad=True)
        _loss(func, y0, method, **options).backward()
        grads.append((y0.grad, func.w.grad))
    for a, b in zip(*grads):
        assert (a - b).abs().max().item() <= 1e-12


def test_adjoint_runs_with_an_implicit_method():
    """odeint_adjoint: the augmented dynamics carry no graph, so Newton takes a
    finite-difference Jacobian; the gradient tends to direct backprop as dt -> 0."""
    func = _Func()
    y0 = torch.tensor([1.0, -0.5], dtype=torch.float64, requires_grad=True)
    _loss(func, y0, "radauIIA5").backward()
    direct = y0.grad.clone()
    y0.grad = None
    out = odecore.odeint_adjoint(func, y0, _T, rtol=1e-12, atol=1e-12, method="radauIIA5", options=dict(step_size=0.05))
    (out * _WEIGHTS).sum().backward()
    assert (y0.grad - direct).abs().max().item() <= 1e-5 * direct.abs().max().item()
